"""The phone runtimes (issue 23): LiteRT's GPU accelerator on lavapipe and ARM64 LiteRT under
qemu, each compared with x86 LiteRT on a tiny network, and the op coverage they report.

The network is helpers.tiny_model (qemu runs it in seconds). Tests of a runtime that is not set
up skip with what is missing.
"""

from __future__ import annotations

import io
import shutil

import numpy as np
import pytest
import torch
from helpers import needs_target

from mobilegen.contract.spec import DenoiserSpec
from mobilegen.errors import InvalidInput, MissingRuntimeError, TargetError
from mobilegen.runtime import litert_worker
from mobilegen.runtime.backends import TFLiteBackend
from mobilegen.runtime.coverage import delegated_ops, gpu_coverage, parse_gpu_log, xnnpack_coverage
from mobilegen.runtime.targets import TARGETS, open_target

SPEC = DenoiserSpec(layout="NHWC")
# Error relative to max |eps| of the x86 float32 result. Measured on this network: 6e-7 for every
# float32 path; 7.5e-3 on the GPU in float16, 6.1e-3 with ARM64 FORCE_FP16.
FP32_TOLERANCE = 1e-5
FP16_TOLERANCE = 3e-2
THREADS = 1


@pytest.fixture(scope="module")
def case():
    rng = np.random.default_rng(0)
    return rng.standard_normal((1, 3, 64, 64)).astype(np.float32), np.array([640.0], np.float32), np.array([3], np.int32)


QEMU = pytest.mark.slow  # ARM64 under qemu: 5-15 s a case; the quick suite keeps the phone's default, gpu-fp16


@pytest.mark.parametrize("name", [n if n == "gpu-fp16" else pytest.param(n, marks=QEMU) for n in TARGETS])
def test_each_target_computes_what_x86_computes(tiny_files, case, name):
    needs_target(name)
    path = tiny_files["denoiser_float32.tflite"]
    ref = TFLiteBackend(path, SPEC, THREADS)(*case)
    backend = open_target(path, SPEC, name, THREADS)
    first = backend(*case)
    error = np.abs(first - ref).max() / np.abs(ref).max()
    assert first.shape == ref.shape and first.dtype == np.float32
    assert error <= (FP32_TOLERANCE if TARGETS[name].precision == "fp32" else FP16_TOLERANCE), error
    if TARGETS[name].runtime == "gpu":  # a second call reuses the worker (under qemu it costs 5 s)
        np.testing.assert_array_equal(backend(*case), first)
    if TARGETS[name].precision == "fp16":
        assert error > FP32_TOLERANCE, "a float16 path computing float32 results: the option did not reach LiteRT"


def test_gpu_coverage_every_shipped_float_file_runs_whole_on_the_gpu(tiny_files):
    needs_target("gpu-fp16")
    for name in ("denoiser_float32.tflite", "denoiser_float16.tflite"):
        cov = gpu_coverage(tiny_files[name], "fp16", THREADS)
        assert cov.fully_accelerated and cov.cpu_ops == 0 and cov.gpu_ops == cov.ops > 100 and not cov.rejected, name


def test_gpu_coverage_names_what_a_float16_label_table_costs(tiny_files, tmp_path, monkeypatch):
    """The fp16 file as it was (the label table stored as float16 too): the accelerator rejects
    its GATHER, and the DEQUANTIZE ops around it go to the CPU with it."""
    import mobilegen.export.tflite as tflite

    needs_target("gpu-fp16")
    monkeypatch.setattr(tflite, "FP16_WEIGHT_OPS", (*tflite.FP16_WEIGHT_OPS, "GATHER"))
    old = tflite.to_fp16_weights(tiny_files["denoiser_float32.tflite"], tmp_path / "old_fp16.tflite")
    cov = gpu_coverage(old, "fp16", THREADS)
    assert not cov.fully_accelerated and cov.gpu_ops + cov.cpu_ops == cov.ops and cov.cpu_ops > 0
    assert cov.rejected == {"DEQUANTIZE": "", "GATHER": "Input / output dtype mismatch."}
    assert cov.rejected_in_file["GATHER"] == 1 and cov.rejected_in_file["DEQUANTIZE"] > 10


def loud_tiny_file(out, monkeypatch, scaled: bool):
    """The tiny network with its first convolution x1000: its first GroupNorm sees |x| ~ 10^3,
    whose square overflows float16. Built with the float16-safe GroupNorm or without it."""
    from mobilegen.compress.structured import prune_channels
    from mobilegen.export import fp16safe
    from mobilegen.export.build import BuildOptions, build
    from mobilegen.models.checkpoint import seeded_model

    model = prune_channels(seeded_model("student_v2").model, 0.9, 0.75)
    with torch.no_grad():
        model.inc.double_conv[0].weight.mul_(1000.0)
    if not scaled:
        monkeypatch.setattr(fp16safe, "LIMIT", float("inf"))
    out.mkdir()
    return build(model, SPEC, out, BuildOptions(fp16=False), None).files["denoiser_float32.tflite"]


@pytest.mark.slow  # two exports and two GPU compilations
def test_a_group_norm_input_past_float16s_range_keeps_its_step_on_the_gpu(case, tmp_path, monkeypatch):
    """GroupNorm squares its input: without the export's scale the GPU's float16 step is lost
    (inf variance); with it the step matches x86 to the float16 tolerance."""
    needs_target("gpu-fp16")
    errors = {}
    for scaled in (True, False):
        path = loud_tiny_file(tmp_path / str(scaled), monkeypatch, scaled)
        ref = TFLiteBackend(path, SPEC, THREADS)(*case)
        got = open_target(path, SPEC, "gpu-fp16", THREADS)(*case)
        errors[scaled] = float(np.nan_to_num(np.abs(got - ref), nan=np.inf).max() / np.abs(ref).max())
    assert errors[True] <= FP16_TOLERANCE < 10 * FP16_TOLERANCE < errors[False], errors


@pytest.mark.parametrize("machine", ["x86_64", pytest.param("arm64", marks=QEMU)])
def test_xnnpack_coverage(tiny_files, machine):
    if machine == "arm64":
        needs_target("arm64-fp32")
    got = xnnpack_coverage(tiny_files["denoiser_float32.tflite"], machine, THREADS)
    assert got.delegated + sum(got.not_delegated.values()) == got.ops
    assert got.delegated > 0.9 * got.ops and got.partitions >= 1
    # The label embedding's lookup and its y = -1 mask stay on LiteRT's builtin kernels.
    assert {"GATHER", "SELECT"} <= set(got.not_delegated)


def test_parse_gpu_log_reads_litert_lines():
    log = ("INFO: Created a WebGPU environment.\nERROR: Following operations are not supported by GPU delegate:\n"
           "DEQUANTIZE: \nGATHER: Input / output dtype mismatch.\n"
           "682 operations will run on the GPU, and the remaining 154 operations will run on the CPU.\nINFO: done\n")  # fmt: skip
    assert parse_gpu_log(log) == ({"DEQUANTIZE": "", "GATHER": "Input / output dtype mismatch."}, (682, 154))
    assert parse_gpu_log("INFO: Initializing WebGPU-based API from graph.\n") == ({}, None)


def test_delegated_ops_walks_each_partition_back_to_its_inputs():
    # 0: a -> b (delegated), 1: b -> c (not: GATHER), 2: c -> d, 3: d -> e (delegated together)
    nodes = [{"op": "CONV_2D", "inputs": [0, 10], "outputs": [1]}, {"op": "GATHER", "inputs": [1, 11], "outputs": [2]},
             {"op": "ADD", "inputs": [2, 12], "outputs": [3]}, {"op": "MUL", "inputs": [3, -1], "outputs": [4]},
             {"op": "DELEGATE", "inputs": [0, 10], "outputs": [1]}, {"op": "DELEGATE", "inputs": [2, 12], "outputs": [4]}]  # fmt: skip
    assert delegated_ops(nodes) == ({0, 2, 3}, 2)


def test_protocol_round_trip():
    stream = io.BytesIO()
    arrays = {"x": np.arange(6, dtype=np.float32).reshape(2, 3), "y": np.array([-1, 3], np.int32)}
    litert_worker.write_message(stream, {"op": "run"}, arrays)
    stream.seek(0)
    header, got = litert_worker.read_message(stream)
    assert header == {"op": "run"} and list(got) == ["x", "y"]
    for k, want in arrays.items():
        np.testing.assert_array_equal(got[k], want)
        assert got[k].dtype == want.dtype
    with pytest.raises(EOFError):
        litert_worker.read_message(stream)


def test_a_missing_runtime_is_one_line_naming_the_install_command(tiny_files, tmp_path, monkeypatch):
    monkeypatch.setenv("MOBILEGEN_ARM64_ROOT", str(tmp_path / "nothing"))
    path = shutil.copy(tiny_files["denoiser_float32.tflite"], tmp_path)  # not a file the worker pool holds
    with pytest.raises(MissingRuntimeError, match="bash scripts/install.sh") as info:
        open_target(path, SPEC, "arm64-fp16", THREADS)
    assert "\n" not in str(info.value)
    with pytest.raises(InvalidInput, match="gpu-fp16, gpu-fp32"):
        open_target(tiny_files["denoiser_float32.tflite"], SPEC, "npu", THREADS)


def test_a_file_the_runtime_cannot_load_is_a_target_error(tmp_path):
    needs_target("gpu-fp32")
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"not a flatbuffer" * 8)
    with pytest.raises(TargetError, match="gpu-fp32:bad.tflite"):
        open_target(bad, SPEC, "gpu-fp32", THREADS)
