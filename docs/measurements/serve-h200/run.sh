#!/bin/bash
# Device check 2: CUDA calls padded to max-batch rows; invariance, server tests, load benchmark.
# (The recorded run, pytest_serve.txt, ran this file when it was tests/test_serve.py.)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nproc; python3 -c "import torch, fastapi, uvicorn, pydantic; print(torch.__version__, torch.version.cuda, fastapi.__version__, uvicorn.__version__, pydantic.__version__)"; } 2>&1 | tee $OUT/env.txt
timeout 60 python3 docs/measurements/serve-h200/batch_invariance.py --checkpoint .gpu/v2.pt --rows 32 2>&1 | tee $OUT/invariance.txt
timeout 90 python3 -m pytest -q -p no:cacheprovider tests/serve/test_app.py 2>&1 | tee $OUT/pytest_serve.txt
timeout 150 mobilegen bench-serve .gpu/v2.pt --clients 8 --duration 10 --steps 50 --modes on,off,on,off --json $OUT/bench8.json 2>&1 | tee $OUT/bench8.txt
timeout 80 mobilegen bench-serve .gpu/v2.pt --clients 16 --duration 10 --steps 50 --modes on,off --json $OUT/bench16.json 2>&1 | tee $OUT/bench16.txt
