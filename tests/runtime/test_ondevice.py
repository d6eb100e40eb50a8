"""The on-device reference loop (runtime/ondevice.py) against the sampler."""

from __future__ import annotations

import numpy as np
import torch

from mobilegen.contract.manifest import read_manifest
from mobilegen.diffusion import SamplerConfig
from mobilegen.runtime.generate import generate
from mobilegen.runtime.ondevice import sample_on_device
from mobilegen.verify.trajectory import image_psnr


def test_on_device_reference_loop_matches_the_sampler(tiny_export):
    """mobilegen/runtime/ondevice.py (what docs/android.md translates) == the library sampler, same noise."""
    out = tiny_export[0]
    manifest = read_manifest(out)
    cfg = SamplerConfig(steps=8, guidance=3.0, seed=4)
    noise = torch.randn((1, 3, 64, 64), generator=torch.Generator().manual_seed(cfg.seed)).numpy()
    phone = sample_on_device(str(out / "denoiser_float16.tflite"), manifest, 8, noise, steps=cfg.steps)
    lib = generate(out / "denoiser_float16.tflite", "ship", 1, cfg, device="cpu").images.numpy()[0].transpose(1, 2, 0)
    assert phone.shape == (64, 64, 3) and phone.dtype == np.uint8
    assert image_psnr(lib, phone) >= 40
