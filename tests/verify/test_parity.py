"""The parity gate: float32 files are judged against a float64 run of the same model, with
the PyTorch float32 reference's own error as the floor; a real conversion bug still lands
far above that floor."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from probe import probe_state_dict

from mobilegen.contract.spec import TOLERANCES, DenoiserSpec
from mobilegen.diffusion import linear_schedule
from mobilegen.diffusion.cases import forward_process_cases
from mobilegen.export.onnx import export_onnx
from mobilegen.models import build_unet
from mobilegen.runtime.backends import OnnxBackend, TorchBackend
from mobilegen.verify.parity import check_parity, float64_outputs

FP32 = TOLERANCES["float32"]


def synthetic(reference_error: float, artifact_error: float, n: int = 6):
    """truth ~ N(0,1); ref and out off by exactly the given amount (signs random) everywhere."""
    rng = np.random.default_rng(0)
    truth = rng.standard_normal((n, 3, 8, 8))
    sign = lambda: rng.choice([-1.0, 1.0], size=truth.shape)  # noqa: E731
    ref = (truth + reference_error * sign()).astype(np.float32)
    out = (truth + artifact_error * sign()).astype(np.float32)
    cases = forward_process_cases(linear_schedule(), timesteps=(10, 500, 999), labels=(3, -1))
    return ref, out, cases, truth


@pytest.mark.parametrize("factor, passes", [(0.5, True), (3.0, True), (6.0, False)])
def test_float32_gate_allows_a_multiple_of_the_references_own_error(factor, passes):
    """The reference is 1e-3 from the truth, over the absolute gate (1e-4 x max|eps| ~ 3e-4)."""
    ref, out, cases, truth = synthetic(1e-3, factor * 1e-3)
    result = check_parity("f.tflite", ref, out, cases, FP32, truth)
    assert result.passed is passes, result.failures
    f64 = result.to_dict()["float64"]
    assert f64["reference_max_abs_error"] == pytest.approx(1e-3, rel=1e-3)
    assert f64["artifact_max_abs_error"] == pytest.approx(factor * 1e-3, rel=1e-3)
    assert "pytorch fp32 vs float64: 1.00e-03" in result.summary()


def test_float32_gate_still_passes_what_the_absolute_gate_allows():
    """A reference that is nearly exact does not make the gate stricter than 1e-4 x max|eps|."""
    ref, out, cases, truth = synthetic(1e-9, 5e-5)
    assert check_parity("f.onnx", ref, out, cases, TOLERANCES["onnx"], truth).passed


def test_fp16_gate_stays_relative_to_the_fp32_reference():
    ref, out, cases, truth = synthetic(1e-2, 1e-2)
    result = check_parity("h.tflite", ref, out, cases, TOLERANCES["float16"])
    assert "float64" not in result.to_dict() and result.max_abs == pytest.approx(2e-2, rel=1e-3)
    with pytest.raises(ValueError, match="float64"):
        check_parity("f.tflite", ref, out, cases, FP32)


def break_onnx(path, kind: str):
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    if kind == "flipped weight":  # one element, the largest of the output conv's kernel
        init = next(i for i in model.graph.initializer if tuple(numpy_helper.to_array(i).shape) == (3, 64, 1, 1))
        w = numpy_helper.to_array(init).copy()
        w.flat[np.abs(w).argmax()] *= -1
        init.CopyFrom(numpy_helper.from_array(w, init.name))
    else:  # exact GELU lowered as its tanh approximation: a plausible lowering bug
        for node in model.graph.node:
            if node.op_type == "Gelu":
                kept = [a for a in node.attribute if a.name != "approximate"]
                del node.attribute[:]
                node.attribute.extend([*kept, onnx.helper.make_attribute("approximate", "tanh")])
        assert any(node.op_type == "Gelu" for node in model.graph.node)
    bad = path.with_name(kind.replace(" ", "_") + ".onnx")
    onnx.save(model, str(bad))
    return bad


@pytest.mark.slow
def test_a_flipped_weight_or_broken_op_fails_far_above_the_floor(tmp_path):
    """On the probe weights, where the float32 floor is largest, a single flipped weight and
    a wrong activation are each caught with errors far above the reference's own error (100x, 20x)."""
    model = build_unet("student_v2")
    model.load_state_dict(probe_state_dict("student_v2"))
    model.eval()
    spec = DenoiserSpec()
    path = export_onnx(model, spec, tmp_path / "denoiser.onnx")
    cases = forward_process_cases(linear_schedule(), timesteps=(10, 250, 999), labels=(3, -1))  # 6 cases: margins as on 33
    ref = TorchBackend(model, "cpu")(cases.x, cases.t, cases.y)
    truth = float64_outputs(model, cases)
    good = check_parity("denoiser.onnx", ref, OnnxBackend(path, spec, 2)(cases.x, cases.t, cases.y), cases, FP32, truth)
    assert good.passed, good.failures
    floor = good.float64.floor_max_abs
    for kind in ("flipped weight", "broken op"):
        out = OnnxBackend(break_onnx(path, kind), spec, 2)(cases.x, cases.t, cases.y)
        bad = check_parity(kind, ref, out, cases, FP32, truth)
        print(f"{kind}: max abs vs float64 {bad.to_dict()['float64']['artifact_max_abs_error']:.2e}, floor {floor:.2e}")
        assert not bad.passed
        # The tanh approximation is a subtle bug (it moves GELU by at most ~1e-3): caught at ~44x.
        assert bad.to_dict()["float64"]["artifact_max_abs_error"] > {"flipped weight": 100, "broken op": 20}[kind] * floor


def test_float64_run_is_a_copy(v2_model):
    before = {k: v.clone() for k, v in v2_model.state_dict().items()}
    cases = forward_process_cases(linear_schedule(), timesteps=(500,), labels=(1,))
    out = float64_outputs(v2_model, cases)
    assert out.dtype == np.float64 and out.shape == (1, 3, 64, 64)
    assert all(v.dtype == torch.float32 and torch.equal(v, before[k]) for k, v in v2_model.state_dict().items())


def test_float32_gate_is_never_looser_than_the_fp16_gate():
    """A reference 0.3 off (PSNR ~22 dB vs float64) does not license a float32 file under 40 dB."""
    ref, out, cases, truth = synthetic(0.3, 0.3)
    result = check_parity("f.tflite", ref, out, cases, FP32, truth)
    assert not result.passed and "< 40.0 dB" in result.failures[0]


@pytest.mark.slow  # seconds: the quick suite stays under 3 minutes; CI runs it
def test_references_are_computed_once_per_network_and_never_stale(v2_model, monkeypatch):
    """The float64/float32 references are cached by a digest of the weights and the attention
    lowering: the same network is run once; a changed weight or lowering is run again."""
    from mobilegen.verify import parity

    calls = []
    real = parity.run_float64
    monkeypatch.setattr(parity, "run_float64", lambda m, c: calls.append(1) or real(m, c))
    monkeypatch.setattr(parity, "REFERENCE_CACHE", type(parity.REFERENCE_CACHE)())
    model = copy.deepcopy(v2_model)
    cases = forward_process_cases(linear_schedule(), timesteps=(500,), labels=(1,))
    first = float64_outputs(model, cases)
    first[:] = 0  # a caller's change does not reach the cache
    again = float64_outputs(model, cases)
    assert len(calls) == 1 and np.abs(again).max() > 0
    with torch.no_grad():
        model.outc.weight[0, 0, 0, 0] += 1.0
    changed = float64_outputs(model, cases)
    model.sa6.query_chunk = 1024
    float64_outputs(model, cases)
    assert len(calls) == 3 and not np.array_equal(changed, again)
