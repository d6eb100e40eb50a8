#!/bin/bash
# Device check 3: the CUDA paths the CPU tests cannot reach: fp16 mixed-precision training,
# resume, distillation with QAT, CUDA sampling; then the training benchmark.
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
PY=${PY:-python3}
mg() { $PY .gpu/mg.py "$@"; }
set -x
mg demo-data /tmp/d --per-class 16 || exit 1
mg train --data /tmp/d -o /tmp/t --arch teacher --epochs 40 --max-steps 30 --batch-size 32 --device cuda --ema-start 1 --checkpoint-every 10 --sample-every 30 2>/dev/null || exit 1
mg train --data /tmp/d -o /tmp/t --arch teacher --epochs 40 --max-steps 40 --batch-size 32 --device cuda --ema-start 1 --checkpoint-every 10 --resume 2>/dev/null || exit 1
mg distill --teacher /tmp/t/ema.pt --arch student_v2 --data /tmp/d -o /tmp/s --epochs 40 --max-steps 30 --batch-size 32 --device cuda --qat-every 10 --ema-start 1 2>/dev/null || exit 1
mg sample /tmp/s/ema.pt --label ship --n 4 --steps 20 --device cuda -o $OUT/ship.png || exit 1
mg sample .gpu/v2.pt --label ship --n 4 --steps 50 --device cuda -o $OUT/v2_ship_cuda.png || exit 1
ls /tmp/t/samples
timeout 120 $PY .gpu/mg.py bench-train --device cuda --batch-size 64 --repeats 10
