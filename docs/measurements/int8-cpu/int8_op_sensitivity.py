"""Which weight ops does int8 hurt most? Quantize ONE op at a time, everything else float.

For every CONV_2D / FULLY_CONNECTED with constant weights in the float32 file of an
export folder: an int8 file with only that op quantized (dynamic, or full with
activation ranges calibrated once on calibration_cases), and its min per-step PSNR
against the float32 file on the parity cases at t = 1 and 999 plus every 7th case.
Prints the ops sorted, worst first. This is where compress/quantize.py's
kept-float roles come from.

    .venv/bin/python docs/measurements/int8-cpu/int8_op_sensitivity.py /tmp/i8.failed --mode dynamic
    .venv/bin/python docs/measurements/int8-cpu/int8_op_sensitivity.py /tmp/i8.failed --mode full
"""

from __future__ import annotations

import argparse
import re
import tempfile
from pathlib import Path

import numpy as np

from mobilegen.compress.quantize import (
    WEIGHT_OPS,
    bias_overflow_ops,
    float_ops,  # fmt: skip
    read_weight_graph,
    recipe_rules,
    signature_inputs,
    weight_ops,
    wrapped_biases,
)
from mobilegen.contract import manifest as mf
from mobilegen.contract.spec import TFLITE_FP32
from mobilegen.diffusion.cases import calibration_cases, forward_process_cases
from mobilegen.diffusion.schedule import schedule_from_alphas_cumprod
from mobilegen.runtime.backends import TorchBackend, open_artifact
from mobilegen.verify.parity import psnr
from mobilegen.verify.folder import reference_model


def file_weight_ops(path: Path) -> list[tuple[str, str]]:
    """(kind, output name) of every CONV_2D / FULLY_CONNECTED with constant weights."""
    g = read_weight_graph(path)
    return [(g.kind[id(op)], name) for op, name, _, _ in weight_ops(g)]


def main() -> None:
    from ai_edge_quantizer import quantizer

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("directory", type=Path)
    ap.add_argument("--mode", choices=["dynamic", "full"], default="dynamic")
    ap.add_argument("--calibration-samples", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    manifest = mf.read_manifest(args.directory)
    spec = mf.spec_from_manifest(manifest)
    src = args.directory / TFLITE_FP32
    schedule = schedule_from_alphas_cumprod(manifest["schedule"]["alphas_cumprod"])
    cases = forward_process_cases(schedule)
    pick = np.array([i for i in range(len(cases)) if int(cases.t[i]) in (1, 999) or i % 7 == 0])
    ref = open_artifact(src, spec, args.threads)(cases.x[pick], cases.t[pick], cases.y[pick])
    base = recipe_rules(args.mode, [])  # every weight op quantized, float IO
    stats = None
    if args.mode == "full":
        denoise = TorchBackend(reference_model(manifest).model, "cpu").torch_denoise
        calibration = calibration_cases(denoise, schedule, args.calibration_samples)
        everything = quantizer.Quantizer(str(src))
        everything.load_quantization_recipe(base)
        stats = everything.calibrate(signature_inputs(calibration, spec), num_threads=args.threads)
    overflow = {name: "bias_overflow" for name in bias_overflow_ops(src, stats)} if stats else {}
    roles = overflow | float_ops(src)  # a graph role names an op first
    results = []
    with tempfile.TemporaryDirectory(prefix="mobilegen-sens-") as tmp:
        for kind, name in file_weight_ops(src):
            only = [dict(base[0], regex=f"^{re.escape(name)};$", operation=kind)] + base[len(WEIGHT_OPS):]
            qt = quantizer.Quantizer(str(src))
            qt.load_quantization_recipe(only)
            path = Path(tmp) / "one.tflite"
            qt.quantize(stats).export_model(str(path), overwrite=True)
            out = open_artifact(path, spec, args.threads)(cases.x[pick], cases.t[pick], cases.y[pick])
            wrapped = "; the library wrapped its bias to -2^31" if wrapped_biases(path) else ""
            results.append((min(psnr(ref[i], out[i]) for i in range(len(pick))), kind, name, wrapped))
    print(f"{args.mode}: min per-step PSNR with only this op int8 ({len(pick)} cases), worst first")
    for value, kind, name, wrapped in sorted(results):
        print(f"{value:7.1f} dB  {kind:<16} {name}  {roles.get(name, '')}{wrapped}")


if __name__ == "__main__":
    main()
