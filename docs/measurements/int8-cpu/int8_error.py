"""What kind of error do the int8 files of an export folder make?

For every int8 file in DIR (a published or a .failed export), against the PyTorch
fp32 model the manifest names:
  - on the 77 parity cases: RMS of the eps error, and the mean error per image and
    channel (a bias would show here; quantization noise averages out);
  - DDIM-50 trajectories (cat, ship; same noise), with guidance 3 and without:
    final-image PSNR, worst class.

    .venv/bin/python docs/measurements/int8-cpu/int8_error.py /tmp/i8.failed [--threads 2]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from mobilegen.contract import manifest as mf
from mobilegen.contract.spec import TFLITE_INT8
from mobilegen.diffusion import SamplerConfig
from mobilegen.diffusion.cases import forward_process_cases
from mobilegen.diffusion.schedule import schedule_from_alphas_cumprod
from mobilegen.runtime.backends import TorchBackend, open_artifact
from mobilegen.verify.folder import reference_model
from mobilegen.verify.trajectory import compare_runs, record

LABELS, NAMES = [3, 8], ["cat", "ship"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("directory", type=Path)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    manifest = mf.read_manifest(args.directory)
    spec = mf.spec_from_manifest(manifest)
    schedule = schedule_from_alphas_cumprod(manifest["schedule"]["alphas_cumprod"])
    reference = TorchBackend(reference_model(manifest, None).model, "cpu")
    cases = forward_process_cases(schedule)
    ref = reference(cases.x, cases.t, cases.y).astype(np.float64)
    ref_runs = {g: record(reference.torch_denoise, LABELS, schedule, SamplerConfig(guidance=g)) for g in (3.0, 0.0)}
    for name in [n for n in TFLITE_INT8.values() if n in manifest["files"]]:
        backend = open_artifact(args.directory / name, spec, args.threads)
        err = backend(cases.x, cases.t, cases.y) - ref
        rms = float(np.sqrt((err**2).mean()))
        bias = float(np.abs(err.mean(axis=(2, 3))).mean())
        line = f"{name}: eps error RMS {rms:.4f}, mean |per-channel mean error| {bias:.4f} ({bias / rms:.0%} of RMS)"
        for g, ref_run in ref_runs.items():
            run = record(backend.torch_denoise, LABELS, schedule, SamplerConfig(guidance=g))
            worst = min(c["psnr"] for c in compare_runs(name, ref_run, run, NAMES, (0.0, None)).per_class.values())
            line += f"; trajectory guidance {g:g}: final image {worst:.1f} dB"
        print(line, flush=True)


if __name__ == "__main__":
    main()
