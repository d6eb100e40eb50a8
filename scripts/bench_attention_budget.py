"""Step time and memory of the fp32 TFLite file at several --max-tensor-mb budgets, in one run.

    .venv/bin/python scripts/bench_attention_budget.py CKPT --budgets inf,64,16,8,4,3 \
        --foreign ../shared/models/original_v2_int8_dynamic.tflite --rounds 10 --threads 2

Every file is exported from CKPT (bounded attention, depth-first operator order), then all
files (and the foreign one, with its own input names) take turns for `rounds` rounds of
`repeats` calls (verify/compare.py's latency harness over verify/timing.py). Memory:
each file in a fresh process (verify/memory.py).
"""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path

from mobilegen.contract.spec import TFLITE_FP32
from mobilegen.export.build import ExportOptions, build_artifacts
from mobilegen.models.checkpoint import load_checkpoint
from mobilegen.runtime.backends import TorchBackend, open_artifact
from mobilegen.verify.compare import PYTORCH_SDPA, SPEC, latency, step_feeds
from mobilegen.verify.foreign import ForeignTFLite, parse_inputs
from mobilegen.verify.memory import measure_file
from mobilegen.verify.timing import machine


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--budgets", default="inf,64,16,8,4,3")
    ap.add_argument("--foreign", type=Path)
    ap.add_argument("--foreign-inputs", default="x=input,t=onnx__Unsqueeze_1,y=onnx__Cast_2")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    loaded = load_checkpoint(args.checkpoint)
    with tempfile.TemporaryDirectory(prefix="mobilegen-budgets-") as tmp:
        files = {}
        for text in args.budgets.split(","):
            budget = float(text)
            folder = Path(tmp) / text
            folder.mkdir()
            opts = ExportOptions(out_dir=folder, fp16=False, max_tensor_mb=budget)
            files[f"fp32, max tensor {text} MB"] = build_artifacts(loaded.model, SPEC, folder, opts, source_sha256=loaded.sha256)[TFLITE_FP32]
        backends = {name: open_artifact(path, SPEC, args.threads) for name, path in files.items()}
        if args.foreign:
            files[f"foreign: {args.foreign.name}"] = args.foreign
            backends[f"foreign: {args.foreign.name}"] = ForeignTFLite(args.foreign, parse_inputs(args.foreign_inputs), args.threads)
        memory = {name: measure_file(path, step_feeds(backends[name]), args.threads) for name, path in files.items()}
        timing = latency(backends, TorchBackend(loaded.model, "cpu"), args.rounds, args.repeats)
    base = timing[next(iter(files))]["median_ms"]
    foreign = timing[f"foreign: {args.foreign.name}"]["median_ms"] if args.foreign else math.nan
    m = machine()
    print(f"{m['cpu']}, {args.threads} threads, batch 1, {args.rounds} rounds x {args.repeats} calls, alternating")
    print("| file | median ms | p90 ms | vs first | vs foreign | peak RSS MB | largest tensor MB | alive at once MB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name in files:
        t, g = timing[name], memory[name].get("graph", {})
        print(f"| {name} | {t['median_ms']:.1f} | {t['p90_ms']:.1f} | {base / t['median_ms']:.3f}x | {foreign / t['median_ms']:.3f}x "
              f"| {memory[name]['peak_rss_mb']:.1f} | {g.get('largest_tensor_mb', math.nan):.2f} | {g.get('peak_live_mb', math.nan):.1f} |")
    print(f"{PYTORCH_SDPA}: {timing[PYTORCH_SDPA]['median_ms']:.1f} ms")


if __name__ == "__main__":
    main()
