"""One image, every backend: the checkpoint, ONNX and both TFLite files draw the same picture
(runtime/generate.py), and a guided step is one call at batch 2."""

from __future__ import annotations

import pytest
from helpers import needs_target, run_main

from mobilegen.diffusion import SamplerConfig
from mobilegen.runtime.backends import TFLiteBackend
from mobilegen.runtime.generate import generate
from mobilegen.verify.trajectory import image_psnr, image_ssim

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


def test_same_image_on_every_backend(tiny_export):
    """An export sampled (guided DDIM, 8 steps, 2 images) from the checkpoint and every file."""
    out, _ = tiny_export
    cfg = SamplerConfig(steps=8, guidance=3.0, seed=0)  # backends agree or not from the first steps; 8 keep it quick
    ref = images(out.parent / "tiny.pt", "cat", cfg, n=2)
    for name, gate in GATES.items():
        assert_same_image(ref, images(out / name, "cat", cfg, n=2), gate)


@pytest.mark.slow
def test_guidance_batch_2_is_one_call_batch_1_is_two(tiny_export, tiny_b2, monkeypatch):
    calls = []
    original = TFLiteBackend.raw_call

    def counting(self, x, t, y):
        calls.append((self.spec.batch, y.tolist()))
        return original(self, x, t, y)

    monkeypatch.setattr(TFLiteBackend, "raw_call", counting)
    cfg = SamplerConfig(steps=10, guidance=3.0, seed=3)
    one = images(tiny_export[0] / "denoiser_float32.tflite", "truck", cfg)
    assert len(calls) == 20 and calls[:2] == [(1, [9]), (1, [-1])]
    calls.clear()
    two = images(tiny_b2 / "denoiser_float32.tflite", "truck", cfg)
    assert len(calls) == 10 and calls[0] == (2, [9, -1])
    assert image_psnr(one[0], two[0]) >= 40


@pytest.mark.slow
def test_a_phone_path_draws_the_x86_image(tiny_export, tmp_path):
    """`sample FILE --target gpu-fp32`: the GPU accelerator (enforce_f32) draws what x86 LiteRT draws."""
    needs_target("gpu-fp32")
    path = tiny_export[0] / "denoiser_float32.tflite"
    cfg = SamplerConfig(steps=2, guidance=0.0, seed=0)
    ref = generate(path, "cat", 1, cfg).images.numpy()
    gpu = generate(path, "cat", 1, cfg, target="gpu-fp32").images.numpy()
    assert image_psnr(ref[0], gpu[0]) >= 40
    res = run_main("sample", path, "--target", "gpu-fp32", "--steps", 1, "--guidance", 0, "-o", tmp_path / "gpu.png")
    assert res.exit_code == 0 and "not a phone's speed" in res.output


def test_a_target_needs_a_tflite_file(tmp_path):
    res = run_main("sample", "--target", "gpu-fp16", "-o", tmp_path / "x.png")
    assert res.exit_code == 2 and "--target runs an exported .tflite file" in res.stderr
    assert not (tmp_path / "x.png").exists()
