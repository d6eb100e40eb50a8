"""int8 TFLite files (ai-edge-quantizer): real quantization, run in the stock LiteRT interpreter."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import manifest_of
from tflite_metadata_reader import check_metadata

from mobilegen.cli import export_cli
from mobilegen.compress.quantize import float_ops, wrapped_biases
from mobilegen.contract.manifest import spec_from_manifest
from mobilegen.diffusion import linear_schedule
from mobilegen.diffusion.cases import calibration_cases
from mobilegen.runtime.backends import TFLiteBackend, TorchBackend
from mobilegen.runtime.tflite_file import check_builtin_only, tensor_name, tflite_tensor_types

INT8 = ("denoiser_int8_dynamic.tflite", "denoiser_int8_full.tflite")


@pytest.mark.slow
@pytest.mark.parametrize("name", INT8)
def test_int8_files_carry_metadata(real_v2_export, name):
    check_metadata(real_v2_export / name, manifest_of(real_v2_export))


@pytest.mark.slow
def test_dynamic_passes_full_is_gated_both_builtin_with_float_io(real_v2_export):
    m = manifest_of(real_v2_export)
    assert m["status"] == "failed"
    dynamic, full = (m["parity"][name] for name in INT8)
    assert dynamic["passed"] and dynamic["min_psnr_db"] >= 30
    assert not full["passed"] and full["min_psnr_db"] < 30 and full["failures"] and full["gate"]["min_psnr"] == 30
    assert all(m["parity"][name]["passed"] for name in ("denoiser.onnx", "denoiser_float32.tflite"))
    fp32 = m["files"]["denoiser_float32.tflite"]["bytes"]
    for name, share in zip(INT8, (0.3, 0.4)):  # full keeps a few more layers float
        assert m["files"][name]["bytes"] < share * fp32
        assert check_builtin_only(real_v2_export / name) == m["files"][name]["op_types"]
        backend = TFLiteBackend(real_v2_export / name, spec_from_manifest(m))
        assert [d["dtype"] for d in backend.interpreter.get_input_details()] == [np.float32, np.float32, np.int32]
        assert backend.interpreter.get_output_details()[0]["dtype"] == np.float32


@pytest.mark.slow
def test_full_int8_quantizes_activations_and_says_what_stays_float(real_v2_export):
    q = manifest_of(real_v2_export)["compression"]["int8"]
    assert q["full"]["calibration_samples"] == 66 and "calibrated" in q["full"]["activations"]
    roles = sorted(k["role"] for k in q["full"]["kept_float"])
    # sa2's qkv and first feed-forward layer hold all-zero output rows in these weights; its
    # second feed-forward layer reads a near-zero input with near-zero weights, so its biases
    # would not fit int32 (the library would wrap them to -2^31).
    assert roles == ["attention_output"] * 4 + ["bias_overflow"] + ["embedding"] * 4 + ["image_input_conv"] + ["zero_channel"] * 2
    assert wrapped_biases(real_v2_export / INT8[1]) == [] and wrapped_biases(real_v2_export / INT8[0]) == []
    assert [k["role"] for k in q["dynamic"]["kept_float"]] == ["image_input_conv"]
    report = (real_v2_export / "report.md").read_text()
    assert "int8 full" in report and "image_input_conv" in report
    # Full int8 carries int8 activations between ops; dynamic keeps float activations.
    assert tflite_tensor_types(real_v2_export / INT8[1])["INT8"] > 2 * tflite_tensor_types(real_v2_export / INT8[0])["INT8"]


@pytest.mark.slow
def test_int8_trajectories_dynamic_holds_full_diverges(real_v2_export):
    """verify's trajectory check (the guided sampling loop, 20 DDIM steps, "ship", on every file
    against PyTorch; the parity recheck around it is tested on the tiny export): dynamic holds
    its trajectory gate; full, with ~4x the per-step error, drifts away (docs/int8.md). At 10
    steps dynamic drifts too (measured), so the step count is the point."""
    from mobilegen.diffusion import SamplerConfig
    from mobilegen.verify.folder import reference_model, run_trajectories

    manifest = manifest_of(real_v2_export)
    model = reference_model(manifest, None, real_v2_export).model
    ship = manifest["labels"].index("ship")
    traj = run_trajectories(real_v2_export, manifest, model, [ship], SamplerConfig(steps=20))
    assert traj.results["denoiser_int8_dynamic.tflite"].passed, traj.results["denoiser_int8_dynamic.tflite"].per_class
    assert not traj.results["denoiser_int8_full.tflite"].passed
    assert traj.results["denoiser_float32.tflite"].passed and traj.results["denoiser.onnx"].passed


@pytest.mark.slow  # the untrained v2's graph is the point
def test_float_ops_are_found_by_role_not_by_weights(default_export):
    """The kept-float ops come from the graph's structure, not from tensor names or values.
    (On the untrained model most attention projections have zero bias and become
    BATCH_MATMULs, which stay float anyway; only sa6's output projection is an FC.)"""
    directory, _ = default_export
    roles = float_ops(directory / "denoiser_float32.tflite")
    assert sorted(roles.values()) == ["attention_output", "embedding", "embedding", "embedding", "embedding", "image_input_conv"]
    assert any("/inc/" in name for name, role in roles.items() if role == "image_input_conv")
    assert all("emb_layer" in name for name, role in roles.items() if role == "embedding")


def test_bias_overflow_is_found_from_the_calibrated_ranges(tiny_export):
    """A weight op whose calibrated input range is so narrow that bias / (input scale x
    weight scale) passes 2^31 is flagged; with ordinary ranges nothing is."""
    from mobilegen.compress.quantize import bias_overflow_ops, read_weight_graph, weight_ops

    path = tiny_export[0] / "denoiser_float32.tflite"
    g = read_weight_graph(path)
    ops = [(out, tensor_name(g.graph.tensors[op.inputs[0]]), bias) for op, out, _, bias in weight_ops(g) if bias is not None]
    ordinary = {inp: {"min": np.array(-3.0), "max": np.array(3.0)} for _, inp, _ in ops}
    assert bias_overflow_ops(path, ordinary) == []
    out, inp, _ = next(o for o in ops if np.abs(o[2]).max() > 1e-3)
    narrow = dict(ordinary, **{inp: {"min": np.array(-1e-12), "max": np.array(1e-12)}})
    assert out in bias_overflow_ops(path, narrow)


@pytest.mark.slow  # 15 s of sampling
def test_calibration_set_is_seeded_and_covers_sampling(tiny):
    """Seeds and coverage are the sampler's, not the weights': the tiny network shows them in seconds."""
    denoise = TorchBackend(tiny, "cpu").torch_denoise
    a = calibration_cases(denoise, linear_schedule(), size=60)
    b = calibration_cases(denoise, linear_schedule(), size=60)
    assert len(a) == 60 and np.array_equal(a.x, b.x) and np.array_equal(a.y, b.y)
    assert set(a.y.tolist()) >= {-1} and len(set(a.y.tolist())) >= 8
    assert a.t.min() <= 100 and a.t.max() >= 900
    with pytest.raises(ValueError, match="at least 22"):
        calibration_cases(denoise, linear_schedule(), size=5)


def test_bad_int8_mode_is_refused(tmp_path):
    res = CliRunner().invoke(export_cli, ["tflite", "--int8", "half", "-o", str(tmp_path / "x")])
    assert res.exit_code == 2 and "dynamic" in res.output and "full" in res.output and not (tmp_path / "x").exists()
