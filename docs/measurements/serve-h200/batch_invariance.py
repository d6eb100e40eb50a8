#!/usr/bin/env python
"""Does a row's eps depend on the batch it ran in? And what does a model call cost per batch size?

Runs the served model exactly as `mobilegen serve` runs it (``TorchRunner``: float16
autocast on CUDA, float32 on CPU, the batch-invariance wrappers; on CUDA every call
padded to --rows rows, as serve does with --max-batch ROWS) on the device present.
32 fixed input rows (mixed timesteps and labels, unconditional included) are each
run alone, then the first b rows as one batch, then all 32 in another order; it
reports how many rows are not bit-identical to their lone run and the largest
difference. Then the same without the padding, and the median / p90 time of one
unpadded model call per batch size (5 warm-up calls, 20 timed).

    .venv/bin/python docs/measurements/serve-h200/batch_invariance.py --checkpoint ../shared/models/mobilegen_v2_student.pt

Not a unit test. With --variants on CUDA it also tries cuDNN's deterministic mode and
float32, unpadded.
"""

from __future__ import annotations

import argparse
import contextlib

import torch

from mobilegen.models.checkpoint import load_or_default
from mobilegen.runtime.backends import resolve_device
from mobilegen.serve.models import TorchRunner
from mobilegen.verify.timing import cuda_sync, summarize, time_calls

SIZES = (2, 3, 4, 8, 16, 32)


def inputs(rows: int = 32):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(rows, 3, 64, 64, generator=g)
    t = torch.randint(0, 1000, (rows,), generator=g).float()
    y = torch.randint(-1, 10, (rows,), generator=g).int()
    return x, t, y


def invariance(runner, x, t, y) -> list[str]:
    alone = torch.cat([runner(x[i : i + 1], t[i : i + 1], y[i : i + 1]).cpu() for i in range(len(x))])
    lines = []
    for b in SIZES:
        got = runner(x[:b], t[:b], y[:b]).cpu()
        differ = sum(not torch.equal(got[i], alone[i]) for i in range(b))
        lines.append(f"  batch {b:>2}: {differ:>2} of {b:>2} rows differ from their lone run, max |diff| "
                     f"{(got - alone[:b]).abs().max().item():.3g}")  # fmt: skip
    order = torch.arange(len(x)).roll(5).flip(0)
    got = runner(x[order], t[order], y[order]).cpu()
    differ = sum(not torch.equal(got[i], alone[j]) for i, j in enumerate(order))
    lines.append(f"  all {len(x)}, reordered: {differ:>2} of {len(x)} rows differ from their lone run")
    return lines


def timing(runner, x, t, y, device) -> list[str]:
    def call(b: int) -> None:
        runner(x[:b], t[:b], y[:b])

    lines = []
    for b in SIZES:
        times = summarize(time_calls(lambda b=b: call(b), warmup=5, repeats=20, sync=cuda_sync(device.type)))
        med, p90 = times["median_ms"], times["p90_ms"]
        lines.append(f"  batch {b:>2}: median {med:7.2f} ms, p90 {p90:7.2f} ms, {med / b:6.2f} ms per row")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="model file (default: the untrained v2)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--rows", type=int, default=32, help="rows per model call on CUDA (serve's --max-batch)")
    parser.add_argument("--variants", action="store_true", help="CUDA: also cuDNN deterministic and float32")
    args = parser.parse_args()
    device = resolve_device(args.device)
    name = torch.cuda.get_device_name(0) if device.type == "cuda" else "CPU"
    print(f"device: {device} ({name}); torch {torch.__version__}, {torch.get_num_threads()} threads")
    x, t, y = inputs()
    if device.type == "cuda":
        served = TorchRunner(load_or_default(args.checkpoint).model, device, rows=args.rows)
        print(f"served setting ({served.dtype}, every call {args.rows} rows):")
        print("\n".join(invariance(served, x, t, y)))
    runner = TorchRunner(load_or_default(args.checkpoint).model, device)
    print(f"{runner.dtype}, unpadded:")
    print("\n".join(invariance(runner, x, t, y)))
    print("model call time, unpadded:")
    print("\n".join(timing(runner, x, t, y, device)))
    if device.type != "cuda" or not args.variants:
        return
    with _cudnn_deterministic():
        print("float16 autocast, cudnn.deterministic=True, benchmark=False, unpadded:")
        print("\n".join(invariance(runner, x, t, y)))
    fp32 = TorchRunner(load_or_default(args.checkpoint).model, device, "float32")
    with _cudnn_deterministic(), _no_tf32():
        print("float32, no TF32, cudnn.deterministic=True, unpadded:")
        print("\n".join(invariance(fp32, x, t, y)))
        print("model call time, float32:")
        print("\n".join(timing(fp32, x, t, y, device)))


@contextlib.contextmanager
def _cudnn_deterministic():
    old = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = old


@contextlib.contextmanager
def _no_tf32():
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


if __name__ == "__main__":
    main()
