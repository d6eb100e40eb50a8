"""The image a phone app draws with LiteRT's GPU accelerator at its default (float16) precision.

For each class: guided DDIM from one seed, on PyTorch fp32 (the checkpoint: the reference),
on x86 LiteRT and on each phone target for each file, the same initial and per-step noise.
Prints final-image PSNR and SSIM against PyTorch fp32 and writes the images side by side
(one row per class: PyTorch, then each file x path) to --png. Times under lavapipe or qemu
say nothing about a phone and are not printed.

    .venv/bin/python docs/measurements/targets-v2-fp16safe/gpu_trajectory.py DIR CHECKPOINT
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image

from mobilegen.diffusion import SamplerConfig
from mobilegen.runtime.generate import generate
from mobilegen.verify.trajectory import image_psnr, image_ssim


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("directory", type=Path, help="an export folder")
    ap.add_argument("checkpoint", type=Path, help="the checkpoint it was exported from (the reference)")
    ap.add_argument("--classes", default="cat,ship")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--guidance", type=float, default=3.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--targets", default="x86,gpu-fp16", help="x86 is LiteRT on this CPU")
    ap.add_argument("--files", default="denoiser_float16.tflite,denoiser_float32.tflite")
    ap.add_argument("--png", type=Path, default=Path("images.png"))
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    cfg = SamplerConfig(sampler="ddim", steps=args.steps, guidance=args.guidance, seed=args.seed)
    print(f"guided DDIM {args.steps} steps, guidance {args.guidance:g}, seed {args.seed}; reference: PyTorch fp32 {args.checkpoint.name}")
    rows, grid = [], []
    for label in args.classes.split(","):
        ref = generate(args.checkpoint, label, 1, cfg, device="cpu").images.numpy()[0]
        line = [ref]
        for name in args.files.split(","):
            for target in args.targets.split(","):
                got = generate(args.directory / name, label, 1, cfg, target=None if target == "x86" else target).images.numpy()[0]
                p, s = image_psnr(ref, got), image_ssim(ref, got)
                rows.append({"class": label, "file": name, "path": target, "psnr_db": round(p, 1), "ssim": round(s, 5)})
                print(f"{label:<10} {name:<26} {target:<10} final image PSNR {p:6.1f} dB  SSIM {s:.5f}", flush=True)
                line.append(got)
        grid.append(np.concatenate([im.transpose(1, 2, 0) for im in line], axis=1))
    Image.fromarray(np.concatenate(grid, axis=0)).save(args.png)
    if args.json:
        args.json.write_text(json.dumps({"steps": args.steps, "guidance": args.guidance, "seed": args.seed, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
