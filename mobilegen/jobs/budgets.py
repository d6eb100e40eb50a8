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

from mobilegen.contract.defaults import ATTENTION_SPLIT, ATTENTION_SPLITS
from mobilegen.contract.spec import TFLITE_FP32
from mobilegen.errors import InvalidInput
from mobilegen.export.build import BuildOptions, build, tensor_budget
from mobilegen.jobs.compare import PYTORCH_SDPA, SPEC, latency, step_feeds
from mobilegen.models.checkpoint import LoadedModel
from mobilegen.runtime.backends import TorchBackend, default_threads, open_artifact
from mobilegen.verify.foreign import ForeignTFLite
from mobilegen.verify.memory import measure_file
from mobilegen.verify.timing import machine


def budget_name(budget: float, split: str | None = None) -> str:
    return f"fp32, max tensor {budget:g} MB" + (f", {split}" if split and math.isfinite(budget) else "")


def variants(budgets: Sequence[float], splits: Sequence[str]) -> list[tuple[float, str]]:
    """(budget, split) of every file: each budget once per split (an unbounded file is never split)."""
    out = []
    for budget in budgets:
        for split in splits if math.isfinite(budget) else splits[:1]:
            out.append((budget, split))
    return out


def build_files(loaded: LoadedModel, budgets: Sequence[float], splits: Sequence[str], work: Path) -> dict[str, Path]:
    """The fp32 file of every (budget, split), built in its own folder under work, by name."""
    files = {}
    for budget, split in variants(budgets, splits):
        folder = work / f"{budget:g}-{split}"
        folder.mkdir()
        options = BuildOptions(fp16=False, tensor_mb=tensor_budget(budget, SPEC.batch), attention_split=split)
        built = build(loaded.model, SPEC, folder, options, loaded.sha256)
        files[budget_name(budget, split if len(splits) > 1 else None)] = built.files[TFLITE_FP32]
    return files


def compare_budgets(
    loaded: LoadedModel,
    budgets: Sequence[float],
    threads: int | None = None,
    rounds: int = 10,
    repeats: int = 10,
    foreign: tuple[Path, dict[str, str]] | None = None,
    splits: Sequence[str] = (ATTENTION_SPLIT,),
) -> dict:
    """Build the fp32 file at every budget (MB per tensor; inf: unbounded), once per attention split,
    and measure them all. Returns the machine, the settings, and per file its latency and memory
    (the first file is the reference of `speedup_vs_first`)."""
    if not budgets:
        raise InvalidInput("give at least one budget, e.g. inf,16,4")
    if len(set(budgets)) != len(budgets):
        raise InvalidInput(f"each budget once: {', '.join(f'{b:g}' for b in budgets)}")
    if not splits or len(set(splits)) != len(splits) or not set(splits) <= set(ATTENTION_SPLITS):
        raise InvalidInput(f"--splits: each of {', '.join(ATTENTION_SPLITS)} at most once; got {', '.join(splits)}")
    threads = threads or default_threads()
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with tempfile.TemporaryDirectory(prefix="mobilegen-budgets-") as tmp:
            files = build_files(loaded, budgets, splits, Path(tmp))
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
        "attention_splits": list(splits),
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
