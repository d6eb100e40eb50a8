"""Step time and memory of the fp32 TFLite file at several attention budgets
(`--max-tensor-mb`), measured in one run (`mobilegen-export compare-budgets`).

Every file is built from one model (bounded attention, depth-first operator order, no
gates); then all files, and a foreign one if given (with its own input names), take turns
for `rounds` rounds of `repeats` calls, with PyTorch fp32 (fused SDPA) in the same rounds
(compare.py's latency harness over timing.py). Memory: each file in a fresh process
(memory.py), with its largest tensor and the bytes alive at once read from the file.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch

from mobilegen.contract.spec import TFLITE_FP32
from mobilegen.errors import InvalidInput
from mobilegen.export.build import BuildOptions, build, tensor_budget
from mobilegen.models.checkpoint import LoadedModel
from mobilegen.runtime.backends import TorchBackend, default_threads, open_artifact
from mobilegen.jobs.compare import PYTORCH_SDPA, SPEC, latency, step_feeds
from mobilegen.verify.foreign import ForeignTFLite
from mobilegen.verify.memory import measure_file
from mobilegen.verify.timing import machine


def budget_name(budget: float) -> str:
    return f"fp32, max tensor {budget:g} MB"


def compare_budgets(
    loaded: LoadedModel,
    budgets: Sequence[float],
    threads: int | None = None,
    rounds: int = 10,
    repeats: int = 10,
    foreign: tuple[Path, dict[str, str]] | None = None,
) -> dict:
    """Build the fp32 file at every budget (MB per tensor; inf: unbounded) and measure them all.
    Returns the machine, the settings, and per file its latency and memory (the first budget is
    the reference of `speedup_vs_first`)."""
    if not budgets:
        raise InvalidInput("give at least one budget, e.g. inf,16,4")
    if len(set(budgets)) != len(budgets):
        raise InvalidInput(f"each budget once: {', '.join(f'{b:g}' for b in budgets)}")
    threads = threads or default_threads()
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with tempfile.TemporaryDirectory(prefix="mobilegen-budgets-") as tmp:
            files = {}
            for budget in budgets:
                folder = Path(tmp) / f"{budget:g}"
                folder.mkdir()
                options = BuildOptions(fp16=False, tensor_mb=tensor_budget(budget, SPEC.batch))
                built = build(loaded.model, SPEC, folder, options, loaded.sha256)
                files[budget_name(budget)] = built.files[TFLITE_FP32]
            backends = {name: open_artifact(path, SPEC, threads) for name, path in files.items()}
            if foreign is not None:
                name = f"foreign: {foreign[0].name}"
                files[name], backends[name] = foreign[0], ForeignTFLite(foreign[0], foreign[1], threads)
            memory = {name: measure_file(path, step_feeds(backends[name]), threads) for name, path in files.items()}
            timing = latency(backends, TorchBackend(loaded.model, "cpu"), rounds, repeats)
    finally:
        torch.set_num_threads(previous)
    first = timing[next(iter(files))]["median_ms"]
    foreign_ms = timing[f"foreign: {foreign[0].name}"]["median_ms"] if foreign else None
    rows = {}
    for name in files:
        t, m = timing[name], memory[name]
        rows[name] = {
            "median_ms": t["median_ms"],
            "p90_ms": t["p90_ms"],
            "speedup_vs_first": round(first / t["median_ms"], 3),
            "speedup_vs_foreign": round(foreign_ms / t["median_ms"], 3) if foreign_ms else None,
            "memory": m,
        }
    m = machine()
    return {
        "machine": m,
        "commit": m["commit"],
        "source": str(loaded.source),
        "threads": threads,
        "batch": 1,
        "rounds": rounds,
        "repeats_per_round": repeats,
        "budgets_mb": [b if math.isfinite(b) else "inf" for b in budgets],
        "files": rows,
        "pytorch_sdpa_latency": timing[PYTORCH_SDPA],
    }


def render_budgets(result: dict) -> str:
    """The table `compare-budgets` prints: one row per file, then the PyTorch row."""
    lines = [
        f"{result['machine']['cpu']}, {result['threads']} threads, batch {result['batch']}, {result['rounds']} rounds "
        f"x {result['repeats_per_round']} calls, alternating (commit {result['commit']})",
        "| file | median ms | p90 ms | vs first | vs foreign | peak RSS MB | largest tensor MB | alive at once MB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in result["files"].items():
        g = r["memory"].get("graph", {})
        vs_foreign = "-" if r["speedup_vs_foreign"] is None else f"{r['speedup_vs_foreign']:.3f}x"
        lines.append(
            f"| {name} | {r['median_ms']:.1f} | {r['p90_ms']:.1f} | {r['speedup_vs_first']:.3f}x | {vs_foreign} "
            f"| {r['memory']['peak_rss_mb']:.1f} | {g.get('largest_tensor_mb', math.nan):.2f} "
            f"| {g.get('peak_live_mb', math.nan):.1f} |"
        )
    lines.append(f"{PYTORCH_SDPA}: {result['pytorch_sdpa_latency']['median_ms']:.1f} ms")
    return "\n".join(lines) + "\n"
