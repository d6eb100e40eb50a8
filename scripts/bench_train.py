"""Training throughput per architecture on this machine: images/s of one optimizer step
(forward + backward + AdamW + EMA), float32 on CPU or float16 autocast on CUDA.

    .venv/bin/python scripts/bench_train.py --batch-size 8 --repeats 5

Warm-up steps first, then timed steps; prints median and p90 per step and images/s,
with the machine named. Synthetic batches: data loading is not measured.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from mobilegen.models import ARCHS
from mobilegen.runtime.backends import resolve_device
from mobilegen.train.loop import TrainConfig, Trainer, step_generator
from mobilegen.verify.timing import cuda_sync, machine, summarize, time_calls


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    device = resolve_device(args.device)
    info = machine()
    print(f"{info['cpu']}, {info['cores']} cores, device {device.type}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, batch {args.batch_size}")  # fmt: skip
    print(f"{'arch':<12} {'median s/step':>14} {'p90 s/step':>11} {'images/s':>9}")
    x0 = torch.rand(args.batch_size, 3, 64, 64) * 2 - 1
    y = torch.arange(args.batch_size) % 10
    with tempfile.TemporaryDirectory() as tmp:
        for arch in ARCHS:
            cfg = TrainConfig(data=Path(tmp), out=Path(tmp), arch=arch, batch_size=args.batch_size, device=device.type)
            trainer = Trainer(cfg, total_steps=args.warmup + args.repeats + 1, device=device)

            def step():
                trainer.train_step(x0, y, step_generator(0, trainer.step))

            s = summarize(time_calls(step, args.warmup, args.repeats, sync=cuda_sync(device.type)))
            median, p90 = s["median_ms"] / 1000, s["p90_ms"] / 1000
            print(f"{arch:<12} {median:>14.3f} {p90:>11.3f} {args.batch_size / median:>9.2f}")


if __name__ == "__main__":
    main()
