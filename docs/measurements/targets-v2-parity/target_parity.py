"""One denoiser step of an export's TFLite files on the phone's paths, against float64 (issue 23):

    .venv/bin/python scripts/target_parity.py DIR CKPT [--cases 640:3,640:-1] [--targets gpu-fp16,arm64-fp32]

Each case (t:y, y = -1 unconditional) is a forward-process input of the parity cases' kind
(mobilegen.diffusion.cases); the reference is CKPT in float64. For each file and path (x86 LiteRT
first): max abs error, max |ref| and PSNR, and the seconds of the first call (one call per case;
under qemu and on lavapipe these say nothing about a phone's speed).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from mobilegen.contract.manifest import read_manifest, spec_from_manifest
from mobilegen.diffusion import linear_schedule
from mobilegen.diffusion.cases import Cases, forward_process_cases
from mobilegen.models.checkpoint import load_checkpoint
from mobilegen.runtime.backends import TFLiteBackend
from mobilegen.runtime.targets import TARGETS, open_target
from mobilegen.verify.parity import psnr, run_float64


def parse_cases(text: str) -> Cases:
    pairs = [tuple(int(v) for v in item.split(":")) for item in text.split(",")]
    parts = [forward_process_cases(linear_schedule(), timesteps=(t,), labels=(y,)) for t, y in pairs]
    return Cases(*(np.concatenate([getattr(p, k) for p in parts]) for k in ("x", "t", "y")))


def measure(backend, cases: Cases, ref: np.ndarray) -> list[dict]:
    rows = []
    for i in range(len(cases)):
        start = time.perf_counter()
        out = backend(cases.x[i : i + 1], cases.t[i : i + 1], cases.y[i : i + 1])[0]
        seconds = time.perf_counter() - start
        err = float(np.abs(out.astype(np.float64) - ref[i]).max())
        rows.append({"case": cases.describe(i), "max_abs": err, "max_ref": float(np.abs(ref[i]).max()),
                     "psnr_db": round(psnr(ref[i], out), 1), "seconds": round(seconds, 1)})  # fmt: skip
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("directory", type=Path, help="an export folder (manifest.json and its .tflite files)")
    ap.add_argument("checkpoint", type=Path, help="the checkpoint it was exported from (the float64 reference)")
    ap.add_argument("--cases", default="640:3,640:-1", help="t:y pairs, comma-separated (default: 640:3,640:-1)")
    ap.add_argument("--targets", default=",".join(TARGETS), help=f"comma-separated (default: all: {','.join(TARGETS)})")
    ap.add_argument("--files", default="denoiser_float32.tflite", help="comma-separated file names in DIR")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, help="also write the rows here")
    args = ap.parse_args()
    spec = spec_from_manifest(read_manifest(args.directory))
    cases = parse_cases(args.cases)
    ref = run_float64(load_checkpoint(args.checkpoint).model, cases)
    result = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "rows": []}
    for name in args.files.split(","):
        path = args.directory / name
        for target in ["x86", *args.targets.split(",")]:
            start = time.perf_counter()
            if target == "x86":
                backend = TFLiteBackend(path, spec, args.threads)
            else:
                backend = open_target(path, spec, target, args.threads)
            opened = time.perf_counter() - start
            for row in measure(backend, cases, ref):
                row = {"file": name, "target": target, "open_seconds": round(opened, 1), **row}
                result["rows"].append(row)
                print(f"{name} {target:15s} {row['case']:12s} PSNR {row['psnr_db']:6.1f} dB  max abs {row['max_abs']:.3g} "
                      f"(max|ref| {row['max_ref']:.3g})  open {row['open_seconds']} s, call {row['seconds']} s", flush=True)  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
