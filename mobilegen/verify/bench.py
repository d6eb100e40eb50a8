"""Latency of one denoising step on every backend, side by side, same thread count.

The CPU rows: PyTorch on the CPU, measured twice (attention computed as the original
network did, nn.MultiheadAttention, which also averages the attention weights it returns;
and fused scaled_dot_product_attention), then every file. Ratios are between CPU rows only.
On a machine with CUDA, PyTorch on CUDA is timed as well, synchronised after every call,
in float32 and under float16 autocast (what `serve` runs): the labelled reference the
product promises, shown beside the CPU rows and never part of a CPU ratio.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mobilegen.contract.spec import ONNX_FILE, DenoiserSpec
from mobilegen.models import UNet
from mobilegen.runtime.backends import TorchBackend, default_threads, open_artifact
from mobilegen.verify.timing import Timing, machine, machine_line, measure, peak_rss_mb, sgemm_peak_gflops, table

ORIGINAL = "pytorch fp32 (original attention)"
FUSED = "pytorch fp32 (fused sdpa)"


def torch_step(model: UNet, device: str, attention: str, x: np.ndarray, t: np.ndarray, y: np.ndarray, autocast: bool = False):
    """Load: the model on its device; returns one denoising step (the harness synchronises CUDA)."""
    backend = TorchBackend(model, device, attention)
    xt, tt, yt = (torch.from_numpy(a).to(backend.device) for a in (x, t, y))

    def step():
        with torch.autocast("cuda", dtype=torch.float16, enabled=autocast):
            backend.torch_denoise(xt, tt, yt)

    return step


def cuda_reference(model: UNet, x, t, y, warmup: int, repeats: int) -> list[Timing]:
    """PyTorch on CUDA (fused SDPA), float32 and float16 autocast; empty without CUDA."""
    if not torch.cuda.is_available():
        return []
    rows = []
    for dtype, autocast in (("float32", False), ("float16", True)):
        load = lambda a=autocast: torch_step(model, "cuda", "sdpa", x, t, y, a)  # noqa: E731
        rows.append(
            measure(
                f"pytorch on CUDA, fused sdpa ({'autocast' if autocast else 'fp32'})", load, (), "cuda", warmup, repeats, dtype
            )
        )
    model.to("cpu")
    return rows


def foreign_name(path: Path) -> str:
    return f"foreign: {path.name}"


def foreign_step(foreign: tuple[Path, dict[str, str]], threads: int, x: np.ndarray, t: np.ndarray, y: np.ndarray):
    """Load: another project's .tflite denoiser (verify/foreign.py); returns its raw call on prepared feeds."""
    from mobilegen.verify.foreign import ForeignTFLite

    backend = ForeignTFLite(foreign[0], foreign[1], threads)
    feeds = backend.feeds(x, t, y)
    return lambda: backend.run_feeds(feeds)


def compute_floor(model: UNet, batch: int, threads: int) -> dict:
    """A call's MACs over the machine's SGEMM peak, measured now: what no runtime can beat."""
    from mobilegen.compress import count_macs

    gmacs = count_macs(model) * batch / 1e9
    gflops = sgemm_peak_gflops(threads)
    return {"gmacs": round(gmacs, 3), "sgemm_gflops": round(gflops, 1), "floor_ms": round(2 * gmacs / gflops * 1e3, 2)}


def speed_ratios(by_name: dict[str, float], files: list[str], foreign: str | None, floor: dict) -> dict[str, dict]:
    """Each file's speed-ups over both PyTorch rows, onnxruntime on our ONNX and a foreign file, and its time
    over the compute floor."""
    ratios = {}
    for fname in files:
        r = {
            "speedup_vs_original_attention": round(by_name[ORIGINAL] / by_name[fname], 3),
            "speedup_vs_fused_sdpa": round(by_name[FUSED] / by_name[fname], 3),
        }
        if ONNX_FILE in by_name:
            r["speedup_vs_onnxruntime"] = round(by_name[ONNX_FILE] / by_name[fname], 3)
        if foreign is not None:
            r["speedup_vs_foreign"] = round(by_name[foreign] / by_name[fname], 3)
        ratios[fname] = r | {"vs_floor": round(by_name[fname] / floor["floor_ms"], 2)}
    return ratios


def ratio_lines(ratios: dict[str, dict], floor: dict, m: dict) -> str:
    isa = m["cpu_class"]
    text = (
        f"\ncompute floor: {floor['gmacs']:.2f} GMAC per call at the SGEMM peak {floor['sgemm_gflops']:.1f} GFLOP/s "
        f"(torch.mm 2048^3, same threads) = {floor['floor_ms']:.1f} ms; "
        + ", ".join(f"{n} {r['vs_floor']:.2f}x" for n, r in ratios.items())
        + f"; CPU family {isa.get('family', '?')} model {isa.get('model', '?')}, widest vector ISA {isa.get('vector_isa', '?')}"
    )
    for label, key in (("onnxruntime on our ONNX", "speedup_vs_onnxruntime"), ("the foreign file", "speedup_vs_foreign")):
        if any(key in r for r in ratios.values()):
            text += f"\nspeed vs {label}: " + ", ".join(f"{n} {r[key]:.2f}x" for n, r in ratios.items() if key in r)
    return text


def bench_directory_files(
    model: UNet,
    files: dict[str, Path],
    spec: DenoiserSpec,
    threads: int | None,
    warmup: int = 3,
    repeats: int = 20,
    foreign: tuple[Path, dict[str, str]] | None = None,
) -> dict:
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
            timings.append(measure(name, lambda a=attention: torch_step(model, "cpu", a, x, t, y), (), "cpu", warmup, repeats))
        for fname, path in files.items():
            # The raw fixed-batch call in the artifact's own layout: what an app pays per step.
            load = lambda path=path: open_artifact(path, spec, threads).raw_call  # noqa: E731
            timings.append(measure(fname, load, (spec.to_layout(x), t, y), "cpu", warmup, repeats))
        if foreign is not None:
            timings.append(
                measure(foreign_name(foreign[0]), lambda: foreign_step(foreign, threads, x, t, y), (), "cpu", warmup, repeats)
            )
        cuda = cuda_reference(model, x, t, y, warmup, repeats)
    finally:
        torch.set_num_threads(previous)
    by_name = {tm.name: tm.median_ms for tm in timings}
    m, floor = machine(), compute_floor(model, spec.batch, threads)
    ratios = speed_ratios(by_name, list(files), foreign_name(foreign[0]) if foreign else None, floor)
    text = f"{machine_line(m)}; {threads} threads, batch {spec.batch}, warm-up {warmup}, {repeats} calls\n"
    text += table(timings, reference=ORIGINAL) + ratio_lines(ratios, floor, m)
    if cuda:
        text += "\nCUDA reference (synchronised after every call; not part of the CPU ratios):\n" + table(cuda)
    return {
        "machine": m,
        "commit": m["commit"],
        "threads": threads,
        "batch": spec.batch,
        "warmup": warmup,
        "repeats": repeats,
        "timings": [tm.to_dict() for tm in timings],
        "cuda_reference": [tm.to_dict() for tm in cuda],
        "ratios": ratios,
        "floor": floor,
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "table": text,
    }
