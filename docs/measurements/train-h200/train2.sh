#!/bin/bash
# Device check 4: no scheduler-order warning after the GradScaler fix; training benchmark on CUDA.
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
python3 .gpu/mg.py demo-data /tmp/d --per-class 16 || exit 1
python3 .gpu/mg.py train --data /tmp/d -o /tmp/t --arch student_v2 --epochs 40 --max-steps 20 --batch-size 32 --device cuda --ema-start 1 2>&1 | grep -v "it/s\|step/s\|s/step" | tail -5
timeout 100 python3 .gpu/mg.py bench-train --device cuda --batch-size 64 --repeats 10
