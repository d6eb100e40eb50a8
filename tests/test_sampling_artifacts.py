"""The artifacts run the way the phone does: same noise -> same image on every backend."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import run_export

from mobilegen.contract.manifest import read_manifest
from mobilegen.diffusion import SamplerConfig
from mobilegen.runtime.backends import TFLiteBackend
from mobilegen.runtime.generate import generate
from mobilegen.runtime.ondevice import sample_on_device
from mobilegen.verify.trajectory import image_psnr, image_ssim

CHROMIUM = Path("/usr/bin/chromium")
DDIM_G3 = SamplerConfig(sampler="ddim", steps=50, guidance=3.0, seed=7)  # the command: --steps 50 --guidance 3 --seed 7
GATES = {"denoiser.onnx": (40, None), "denoiser_float32.tflite": (40, None), "denoiser_float16.tflite": (30, 0.95)}


def images(model_path, label="ship", config=DDIM_G3, n=1):
    return generate(model_path, label, n, config, device="cpu").images.numpy()


def assert_same_image(ref, out, gate):
    for i in range(len(ref)):
        p, s = image_psnr(ref[i], out[i]), image_ssim(ref[i], out[i])
        assert p >= gate[0], f"PSNR {p:.1f} dB"
        assert gate[1] is None or s >= gate[1], f"SSIM {s:.4f}"


@pytest.mark.slow
def test_real_v2_same_image_from_checkpoint_onnx_and_both_tflite(real_v2_export, real_v2):
    ref = images(real_v2)
    for name, gate in GATES.items():
        assert_same_image(ref, images(real_v2_export / name), gate)


def test_default_model_same_image_on_every_backend(default_export):
    """The README's export, sampled (guided DDIM, 20 steps, 2 images) from the checkpoint and every file."""
    out, _ = default_export
    cfg = SamplerConfig(steps=20, guidance=3.0, seed=0)
    ref = images(None, "cat", cfg, n=2)
    for name, gate in GATES.items():
        assert_same_image(ref, images(out / name, "cat", cfg, n=2), gate)


@pytest.mark.slow
def test_guidance_batch_2_is_one_call_batch_1_is_two(default_export, default_b2, monkeypatch):
    calls = []
    original = TFLiteBackend.raw_call

    def counting(self, x, t, y):
        calls.append((self.spec.batch, y.tolist()))
        return original(self, x, t, y)

    monkeypatch.setattr(TFLiteBackend, "raw_call", counting)
    cfg = SamplerConfig(steps=10, guidance=3.0, seed=3)
    one = images(default_export[0] / "denoiser_float32.tflite", "truck", cfg)
    assert len(calls) == 20 and calls[:2] == [(1, [9]), (1, [-1])]
    calls.clear()
    two = images(default_b2 / "denoiser_float32.tflite", "truck", cfg)
    assert len(calls) == 10 and calls[0] == (2, [9, -1])
    assert image_psnr(one[0], two[0]) >= 40


def test_on_device_reference_loop_matches_the_sampler(default_export):
    """mobilegen/runtime/ondevice.py (what docs/android.md translates) == the library sampler, same noise."""
    out = default_export[0]
    manifest = read_manifest(out)
    cfg = SamplerConfig(steps=20, guidance=3.0, seed=4)
    noise = torch.randn((1, 3, 64, 64), generator=torch.Generator().manual_seed(cfg.seed)).numpy()
    phone = sample_on_device(str(out / "denoiser_float16.tflite"), manifest, 8, noise, steps=20)
    lib = images(out / "denoiser_float16.tflite", "ship", cfg)[0].transpose(1, 2, 0)
    assert phone.shape == (64, 64, 3) and phone.dtype == np.uint8
    assert image_psnr(lib, phone) >= 40


@pytest.mark.slow
def test_report_renders_in_headless_chromium(default_export, tmp_path):
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    from playwright.sync_api import sync_playwright

    out = tmp_path / "v"
    shutil.copytree(default_export[0], out)
    res = run_export("report", out, "--classes", "cat,ship", "--steps", "10")
    assert "wrote" in res.output
    errors = []
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"],
        )  # fmt: skip
        page = browser.new_page()
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("request", lambda r: errors.append(f"network request {r.url}") if not r.url.startswith(("file:", "data:")) else None)
        page.goto((out / "report.html").as_uri())
        loaded = page.eval_on_selector_all("img", "imgs => imgs.map(i => i.complete && i.naturalWidth > 0)")
        text = page.inner_text("body")
        browser.close()
    # 4 backend grids + error curves + latency + sizes
    assert len(loaded) == 7 and all(loaded)
    assert errors == []
    for needle in ("pytorch fp32", "denoiser_float16.tflite", "Trajectory parity", "images per second"):
        assert needle.lower() in text.lower()
