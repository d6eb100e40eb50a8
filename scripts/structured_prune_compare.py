"""Structured pruning, measured: unpruned vs channel-pruned student, side by side.

Both models go through the normal export pipeline (ONNX -> fp32 TFLite, parity
gates, builtin-ops check, manifest), then:
  - parameters (those the forward pass uses) and MACs per denoiser step;
  - per-step latency of the two fp32 TFLite files, measured in alternating rounds
    in one process (same machine state for both), batch 1, --threads threads;
  - how far the pruned model's DDIM sampling trajectories are from the unpruned
    model's (same initial and per-step noise): final-image PSNR/SSIM per class
    and the worst intermediate state, PyTorch fp32 for both.

    .venv/bin/python scripts/structured_prune_compare.py --pruned runs/v2-pruned/ema.pt -o artifacts/prune-compare
    .venv/bin/python scripts/structured_prune_compare.py --ratio 0.25 --head-ratio 0.5 -o artifacts/prune-try  # no fine-tune
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

from mobilegen.backends import TorchBackend, open_artifact
from mobilegen.checkpoint import load_checkpoint
from mobilegen.compress import count_macs, count_params, prune_channels
from mobilegen.diffusion import SamplerConfig, linear_schedule
from mobilegen.exporter.pipeline import TFLITE_FP32, ExportOptions, export_artifacts
from mobilegen.exporter.spec import DenoiserSpec
from mobilegen.exporter.timing import machine, time_calls
from mobilegen.labels import CIFAR10_LABELS, parse_label
from mobilegen.trajectory import compare_runs, record

REAL_V2 = Path(__file__).resolve().parents[2] / "shared" / "models" / "mobilegen_v2_student.pt"


def export(loaded, out: Path, threads: int) -> Path:
    result = export_artifacts(loaded, ExportOptions(out_dir=out, fp16=False, bench=False, overwrite=True, threads=threads))
    if not result.passed:
        sys.exit(f"export of {loaded.source} failed its gates (see {result.out_dir})")
    return result.out_dir / TFLITE_FP32


def latency(files: dict[str, Path], threads: int, rounds: int, repeats: int) -> dict[str, dict]:
    """Alternate the files for `rounds` rounds of `repeats` calls; median and p90 over all calls."""
    spec = DenoiserSpec(layout="NHWC")  # the TFLite files are NHWC
    x = spec.to_layout(np.random.default_rng(0).standard_normal((1, 3, 64, 64)).astype(np.float32))
    t, y = np.full((1,), 500.0, np.float32), np.zeros((1,), np.int32)
    runners = {name: open_artifact(path, spec, threads)._run for name, path in files.items()}
    samples: dict[str, list[float]] = {name: [] for name in files}
    for name, run in runners.items():
        time_calls(lambda: run(x, t, y), warmup=5, repeats=0)
    for _ in range(rounds):
        for name, run in runners.items():
            samples[name] += time_calls(lambda: run(x, t, y), warmup=1, repeats=repeats)
    out = {}
    for name, s in samples.items():
        s = sorted(s)
        out[name] = {"median_ms": round(statistics.median(s), 2), "p90_ms": round(s[int(0.9 * (len(s) - 1))], 2), "calls": len(s)}
    return out


def trajectories(reference, pruned, labels: list[int], config: SamplerConfig) -> dict:
    schedule = linear_schedule()
    names = [CIFAR10_LABELS[y] for y in labels]
    runs = [record(TorchBackend(m, "cpu").torch_denoise, labels, schedule, config) for m in (reference, pruned)]
    result = compare_runs("pruned", runs[0], runs[1], names, (0.0, None))
    worst = result.worst_step()
    return {"per_class": result.per_class, "worst_state": {"t": worst["t"], "psnr_db": worst["psnr"]},
            "final_state_psnr_db": result.per_step[-1]["psnr"]}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, default=REAL_V2, help="unpruned checkpoint [the real v2 weights]")
    group = ap.add_mutually_exclusive_group(required=True)
    group.add_argument("--pruned", type=Path, help="a pruned (fine-tuned) checkpoint, e.g. runs/v2-pruned/ema.pt")
    group.add_argument("--ratio", type=float, help="prune the checkpoint now by this channel ratio (no fine-tune)")
    ap.add_argument("--head-ratio", type=float, default=0.0, help="with --ratio: fraction of attention heads removed")
    ap.add_argument("-o", "--out", type=Path, default=Path("artifacts/prune-compare"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--classes", default="cat,ship,truck,automobile")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--guidance", type=float, default=3.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    unpruned = load_checkpoint(args.checkpoint)
    if args.pruned:
        pruned = load_checkpoint(args.pruned)
    else:
        pruned = load_checkpoint(args.checkpoint)
        pruned.model = prune_channels(pruned.model, args.ratio, args.head_ratio)
    files = {"unpruned": export(unpruned, args.out / "unpruned", args.threads),
             "pruned": export(pruned, args.out / "pruned", args.threads)}  # fmt: skip
    models = {"unpruned": unpruned.model, "pruned": pruned.model}
    timing = latency(files, args.threads, args.rounds, args.repeats)
    config = SamplerConfig(sampler="ddim", steps=args.steps, guidance=args.guidance, seed=args.seed)
    labels = [parse_label(c) for c in args.classes.split(",")]
    report = {
        "machine": machine(),
        "threads": args.threads,
        "sources": {"unpruned": unpruned.source, "pruned": pruned.source},
        "params": {k: count_params(m) for k, m in models.items()},
        "macs_per_step": {k: count_macs(m) for k, m in models.items()},
        "tflite_fp32_bytes": {k: p.stat().st_size for k, p in files.items()},
        "latency_fp32_tflite": timing,
        "trajectory": trajectories(unpruned.model, pruned.model, labels, config),
        "sampler": {"sampler": "ddim", "steps": args.steps, "guidance": args.guidance, "seed": args.seed},
    }
    report["macs_ratio"] = round(report["macs_per_step"]["unpruned"] / report["macs_per_step"]["pruned"], 3)
    report["params_ratio"] = round(report["params"]["unpruned"] / report["params"]["pruned"], 3)
    report["speedup"] = round(timing["unpruned"]["median_ms"] / timing["pruned"]["median_ms"], 3)
    (args.out / "compare.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "machine"}, indent=2))


if __name__ == "__main__":
    main()
