"""Training throughput per architecture (`mobilegen bench-train`): the time of one optimizer
step (forward + backward + AdamW + EMA), float32 on the CPU or float16 autocast on CUDA.

Warm-up steps first, then timed steps, one architecture after another. Synthetic batches:
data loading is not measured.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch

from mobilegen.models import ARCHS
from mobilegen.runtime.backends import resolve_device
from mobilegen.train.loop import TrainConfig, Trainer, step_generator
from mobilegen.verify.timing import cuda_sync, machine, summarize, time_calls


def bench_train(
    archs: Sequence[str] = tuple(ARCHS), batch_size: int = 8, warmup: int = 2, repeats: int = 5, device: str = "auto"
) -> dict:
    """Median and p90 seconds per step and images/s of each architecture, with the machine."""
    dev = resolve_device(device)
    x0 = torch.rand(batch_size, 3, 64, 64) * 2 - 1
    y = torch.arange(batch_size) % 10
    rows = {}
    with tempfile.TemporaryDirectory(prefix="mobilegen-bench-train-") as tmp:
        for arch in archs:
            cfg = TrainConfig(data=Path(tmp), out=Path(tmp), arch=arch, batch_size=batch_size, device=dev.type)
            trainer = Trainer(cfg, total_steps=warmup + repeats + 1, device=dev)

            def step(trainer=trainer):
                trainer.train_step(x0, y, step_generator(0, trainer.step))

            s = summarize(time_calls(step, warmup, repeats, sync=cuda_sync(dev.type)))
            median, p90 = s["median_ms"] / 1000, s["p90_ms"] / 1000
            rows[arch] = {"median_s": median, "p90_s": p90, "images_per_s": batch_size / median}
    return {
        "machine": machine(),
        "device": dev.type,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "batch": batch_size,
        "warmup": warmup,
        "repeats": repeats,
        "archs": rows,
    }


def render_bench_train(result: dict) -> str:
    """The lines `bench-train` prints: the machine, then one row per architecture."""
    m = result["machine"]
    lines = [
        f"{m['cpu']}, {m['cores']} cores, device {result['device']}, torch {result['torch']}, "
        f"{result['threads']} threads, batch {result['batch']}",
        f"{'arch':<12} {'median s/step':>14} {'p90 s/step':>11} {'images/s':>9}",
    ]
    for arch, r in result["archs"].items():
        lines.append(f"{arch:<12} {r['median_s']:>14.3f} {r['p90_s']:>11.3f} {r['images_per_s']:>9.2f}")
    return "\n".join(lines) + "\n"
