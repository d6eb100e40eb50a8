"""The target check (verify/targets.py) on the tiny network: it passes where the paths compute
what x86 computes, and fails on an op the GPU leaves to the CPU and on a float16 image that is
lost. Runtimes that are not set up skip with what is missing (bash scripts/install.sh)."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch
from helpers import needs_target

from mobilegen.contract import defaults
from mobilegen.contract.spec import DenoiserSpec
from mobilegen.diffusion import linear_schedule
from mobilegen.diffusion.cases import PARITY_TIMESTEPS
from mobilegen.errors import InvalidInput, MissingRuntimeError
from mobilegen.runtime.targets import TARGETS
from mobilegen.verify.targets import (
    FP16_IMAGE,
    TRAJECTORY,
    check_runtimes,
    check_targets,
    image_grid,
    parse_targets,
    target_cases,
)

SPEC = DenoiserSpec(layout="NHWC")
GPU = pytest.mark.slow  # 20-60 s each on lavapipe; the quick suite runs the runtimes in tests/runtime/test_targets.py
THREADS = 1


def test_parse_targets_expands_groups_in_a_fixed_order():
    assert parse_targets("arm64,gpu") == ("gpu-fp16", "gpu-fp32", "arm64-fp32", "arm64-fp16")
    assert parse_targets(" gpu-fp32 , gpu ") == ("gpu-fp16", "gpu-fp32")
    assert parse_targets("arm64-a53-fp32") == ("arm64-a53-fp32",)
    for bad, says in (("gpu,tpu", "unknown target 'tpu'"), ("", "no target given"), (" , ", "no target given")):
        with pytest.raises(InvalidInput, match=says) as err:
            parse_targets(bad)
        assert "gpu, arm64, gpu-fp16" in str(err.value)  # what is allowed


def test_the_cases_are_parity_cases_at_high_and_low_t_with_and_without_a_label():
    cases = target_cases(linear_schedule())
    assert set(cases.t.astype(int)) <= set(PARITY_TIMESTEPS)
    assert cases.t.max() == max(PARITY_TIMESTEPS) and cases.t.min() == min(PARITY_TIMESTEPS)
    assert (cases.y == -1).any() and (cases.y >= 0).any()
    assert cases.x.shape == (len(cases), 3, 64, 64) and np.isfinite(cases.x).all()


def test_a_missing_runtime_is_named_before_any_work(monkeypatch, tmp_path):
    monkeypatch.setenv("MOBILEGEN_ARM64_ROOT", str(tmp_path / "nowhere"))
    with pytest.raises(MissingRuntimeError, match=r"arm64-fp32.*arm64 Python 3\.11.*nowhere"):
        check_runtimes(("arm64-fp32",))


@GPU
def test_both_float_files_pass_on_the_gpu_paths(tiny, tiny_files):
    needs_target("gpu-fp16", "gpu-fp32")
    checked = check_targets(tiny, tiny_files, SPEC, linear_schedule(), ("gpu-fp16", "gpu-fp32"), THREADS)
    assert [g.subject for g in checked.gates] == [
        f"{f}@{p}" for f in tiny_files if f.endswith(".tflite") for p in ("gpu-fp16", "gpu-fp32")
    ]
    assert all(g.passed for g in checked.gates), [g.summary() for g in checked.gates]
    for name in ("denoiser_float32.tflite", "denoiser_float16.tflite"):
        fp16, fp32 = (checked.section["results"][name][p] for p in ("gpu-fp16", "gpu-fp32"))
        assert fp16["coverage"]["fully_accelerated"] and fp16["coverage"]["cpu_ops"] == 0
        # float16 arithmetic: its own gate and the image; float32: the file's x86 gate, no image
        assert fp16["step"]["gate_min_psnr_db"] == 40 and fp16["trajectory"]["min_ssim"] >= FP16_IMAGE[1]
        assert "trajectory" not in fp32 and fp32["step"]["min_psnr_db"] > fp16["step"]["min_psnr_db"] + 20
    assert checked.section["trajectory"]["steps"] == TRAJECTORY.steps
    assert "lavapipe" in checked.section["runtimes"]["gpu"] or "Vulkan" in checked.section["runtimes"]["gpu"]
    assert list(checked.images) == ["PyTorch fp32", "x86 float32", "gpu-fp16 float32", "x86 float16", "gpu-fp16 float16"]
    rows = len(checked.section["trajectory"]["classes"])
    assert image_grid(checked.images).shape == (64 * rows, 64 * 5, 3)


@GPU
def test_an_op_left_to_the_cpu_fails_the_gpu_gate(tiny, tiny_files, tmp_path, monkeypatch):
    """The fp16 file as it once was (its label table float16 too): the accelerator rejects the
    GATHER, and the gate fails naming it, although every number is right."""
    from mobilegen.export import tflite
    from mobilegen.verify import targets

    needs_target("gpu-fp16")
    monkeypatch.setattr(tflite, "FP16_WEIGHT_OPS", (*tflite.FP16_WEIGHT_OPS, "GATHER"))
    monkeypatch.setattr(targets, "TRAJECTORY", dataclasses.replace(TRAJECTORY, steps=2))  # the image is not the point
    old = tflite.to_fp16_weights(tiny_files["denoiser_float32.tflite"], tmp_path / "denoiser_float16.tflite")
    (gate,) = check_targets(tiny, {"denoiser_float16.tflite": old}, SPEC, linear_schedule(), ("gpu-fp16",), THREADS).gates
    assert not gate.passed and gate.figures["step"]["min_psnr_db"] > 40  # the numbers pass; the coverage does not
    assert len(gate.failures) == 1 and "ops run on the CPU, not the GPU: " in gate.failures[0]
    assert "GATHER x1 (Input / output dtype mismatch.)" in gate.failures[0]


@GPU
def test_a_float16_step_that_overflows_fails_the_step_and_the_image(tiny, tmp_path, monkeypatch):
    """The tiny network with its first convolution x1000, exported without the float16-safe
    GroupNorm: the GPU's float16 variance overflows, and both float16 gates fail."""
    from mobilegen.export import fp16safe
    from mobilegen.export.build import BuildOptions, build

    needs_target("gpu-fp16")
    loud = copy.deepcopy(tiny)
    with torch.no_grad():
        loud.inc.double_conv[0].weight.mul_(1000.0)
    monkeypatch.setattr(fp16safe, "LIMIT", float("inf"))
    files = {
        "denoiser_float32.tflite": build(loud, SPEC, tmp_path, BuildOptions(fp16=False), None).files["denoiser_float32.tflite"]
    }
    (gate,) = check_targets(loud, files, SPEC, linear_schedule(), ("gpu-fp16",), THREADS).gates
    assert not gate.passed
    assert any("PSNR" in f or "NaN/Inf" in f for f in gate.failures if not f.startswith("image")), gate.failures
    assert any(f.startswith("image ") for f in gate.failures), gate.failures


@pytest.mark.slow  # ARM64 under qemu: about a minute on the tiny network (emulated float16 arithmetic: ~5 s a call)
def test_the_arm64_paths_are_measured_gated_and_report_xnnpack_coverage(tiny, tiny_files, monkeypatch):
    """float32 on ARM64 computes what x86 does; FORCE_FP16 is measured and judged by the float16
    bars (on this random network its t = 999 step misses 40 dB: ARM's FP16 kernels round more
    than x86's emulation; the gate says so instead of passing it). The image here is DDIM-3, not
    the gate's DDIM-10 (the image gate itself is checked on the GPU paths above): under qemu each
    float16 call takes seconds, and what this test proves is the ARM64 path's plumbing."""
    from mobilegen.verify import targets

    monkeypatch.setattr(targets, "TRAJECTORY", dataclasses.replace(TRAJECTORY, steps=3))
    needs_target("arm64-fp32", "arm64-fp16")
    files = {"denoiser_float32.tflite": tiny_files["denoiser_float32.tflite"]}
    checked = check_targets(tiny, files, SPEC, linear_schedule(), parse_targets("arm64"), THREADS)
    fp32, fp16 = (checked.section["results"]["denoiser_float32.tflite"][p] for p in ("arm64-fp32", "arm64-fp16"))
    assert fp32["passed"] and fp32["step"]["min_psnr_db"] > 100, fp32
    assert fp32["coverage"]["machine"] == "arm64" and fp32["coverage"]["delegated"] > 0.9 * fp32["coverage"]["ops"]
    step_ok = fp16["step"]["min_psnr_db"] >= 40
    image_ok = fp16["trajectory"]["min_psnr_db"] >= FP16_IMAGE[0] and fp16["trajectory"]["min_ssim"] >= FP16_IMAGE[1]
    assert fp16["passed"] == (step_ok and image_ok) and fp16["step"]["min_psnr_db"] < fp32["step"]["min_psnr_db"] - 20
    assert "trajectory" not in fp32 and "qemu" in checked.section["runtimes"]["arm64"]


def test_target_names_match_the_runtimes():
    assert set(defaults.TARGET_NAMES) == set(TARGETS)
    assert {p for paths in defaults.TARGET_GROUPS.values() for p in paths} <= set(TARGETS)
