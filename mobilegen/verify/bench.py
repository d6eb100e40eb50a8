"""Latency of one denoising step on every backend, side by side, same thread count.

PyTorch is measured twice: with attention computed as the original network did
(nn.MultiheadAttention, which also averages the attention weights it returns) and
with fused scaled_dot_product_attention. Ratios are against both.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mobilegen.contract.spec import DenoiserSpec
from mobilegen.models import UNet
from mobilegen.runtime.backends import TorchBackend, default_threads, open_artifact
from mobilegen.verify.timing import Timing, machine, measure, peak_rss_mb, table

ORIGINAL = "pytorch fp32 (original attention)"
FUSED = "pytorch fp32 (fused sdpa)"


def _device_type() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _torch_step(model: UNet, attention: str, x: np.ndarray, t: np.ndarray, y: np.ndarray):
    """Load: the model on its device; returns one synchronised denoising step."""
    backend = TorchBackend(model, "auto", attention)
    xt, tt, yt = (torch.from_numpy(a).to(backend.device) for a in (x, t, y))

    def step():
        backend.torch_denoise(xt, tt, yt)
        if backend.device.type == "cuda":
            torch.cuda.synchronize()

    return step


def bench_directory_files(model: UNet, files: dict[str, Path], spec: DenoiserSpec, threads: int | None,
                          warmup: int = 3, repeats: int = 20) -> dict:  # fmt: skip
    threads = threads or default_threads()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((spec.batch, 3, 64, 64)).astype(np.float32)
    t = np.full((spec.batch,), 500.0, np.float32)
    y = np.zeros((spec.batch,), np.int32)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    timings: list[Timing] = []
    try:
        for name, attention in ((ORIGINAL, "original"), (FUSED, "sdpa")):
            timings.append(measure(name, lambda a=attention: _torch_step(model, a, x, t, y), (), _device_type(), warmup, repeats))
        for fname, path in files.items():
            # The raw fixed-batch call in the artifact's own layout: what an app pays per step.
            load = lambda path=path: open_artifact(path, spec, threads)._run  # noqa: E731
            timings.append(measure(fname, load, (spec.to_layout(x), t, y), "cpu", warmup, repeats))
    finally:
        torch.set_num_threads(previous)
    by_name = {tm.name: tm.median_ms for tm in timings}
    ratios = {
        fname: {"speedup_vs_original_attention": round(by_name[ORIGINAL] / by_name[fname], 3),
                "speedup_vs_fused_sdpa": round(by_name[FUSED] / by_name[fname], 3)}
        for fname in files
    }  # fmt: skip
    return {
        "machine": machine(),
        "threads": threads,
        "batch": spec.batch,
        "warmup": warmup,
        "repeats": repeats,
        "timings": [tm.to_dict() for tm in timings],
        "ratios": ratios,
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "table": table(timings, reference=ORIGINAL),
    }
