"""`mobilegen-export onnx`: a verified, static-shape ONNX, or nothing."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from mobilegen.backends import OnnxBackend
from mobilegen.cli import export_cli
from mobilegen.exporter import spec as spec_module
from mobilegen.exporter.onnx_export import DYNAMIC_OPS, onnx_op_types
from mobilegen.exporter.spec import DenoiserSpec, Tolerance

# What a v2 export contains: all ops with static output shapes.
EXPECTED_V2_OPS = [
    "Add", "Cast", "Clip", "Concat", "Constant", "Conv", "Cos", "Div", "Erf", "Gather", "Gemm", "GreaterOrEqual",
    "InstanceNormalization", "LayerNormalization", "MatMul", "MaxPool", "Mul", "Reshape", "Resize",
    "Sigmoid", "Sin", "Slice", "Softmax", "Split", "Squeeze", "Transpose", "Unsqueeze",
]  # fmt: skip


def run(*args):
    return CliRunner().invoke(export_cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def real_v2_onnx(tmp_path_factory, real_v2):
    out = tmp_path_factory.mktemp("onnx") / "v2"
    res = run("onnx", real_v2, "-o", out)
    assert res.exit_code == 0, res.output + res.stderr
    return out, res


def test_real_v2_exports_and_passes_onnxruntime_check(real_v2_onnx):
    out, res = real_v2_onnx
    assert "PASS denoiser.onnx: 77 cases" in res.output and "verified and wrote" in res.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "passed" and manifest["model"]["arch"] == "student_v2"
    assert manifest["parity"]["denoiser.onnx"]["min_psnr_db"] >= 80


def test_onnx_has_only_static_shape_ops(real_v2_onnx):
    import onnx

    out, _ = real_v2_onnx
    ops = onnx_op_types(out / "denoiser.onnx")
    assert ops == EXPECTED_V2_OPS
    assert not set(ops) & DYNAMIC_OPS
    model = onnx.load(str(out / "denoiser.onnx"))
    assert [i.name for i in model.graph.input] == ["x", "t", "y"] and [o.name for o in model.graph.output] == ["eps"]
    shapes = {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input}
    assert shapes == {"x": [1, 3, 64, 64], "t": [1], "y": [1]}


def test_unconditional_label_works_in_onnx(real_v2_onnx, real_v2):
    from mobilegen.checkpoint import load_checkpoint

    out, _ = real_v2_onnx
    model = load_checkpoint(real_v2).model
    x = np.random.default_rng(0).standard_normal((1, 3, 64, 64)).astype(np.float32)
    t, y = np.array([400.0], np.float32), np.array([-1], np.int32)
    got = OnnxBackend(out / "denoiser.onnx", DenoiserSpec())(x, t, y)
    with torch.no_grad():
        ref = model(torch.from_numpy(x), torch.from_numpy(t), None).numpy()
    assert np.abs(got - ref).max() < 1e-4


@pytest.mark.parametrize("layout, batch", [("NHWC", 1), ("NCHW", 2)])
def test_layout_and_batch_options(tmp_path, v2_checkpoint, layout, batch):
    out = tmp_path / "out"
    res = run("onnx", v2_checkpoint, "-o", out, "--layout", layout, "--batch", batch)
    assert res.exit_code == 0, res.output + res.stderr
    io = json.loads((out / "manifest.json").read_text())["io"]
    assert io["layout"] == layout and io["inputs"][0]["shape"] == list(DenoiserSpec(batch, layout).image_shape)


def test_existing_output_is_refused_and_kept(tmp_path, v2_checkpoint):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("good")
    res = run("onnx", v2_checkpoint, "-o", out)
    assert res.exit_code == 2 and "--overwrite" in res.stderr
    assert (out / "keep.txt").read_text() == "good"


def test_failed_gate_exits_1_and_publishes_nothing(tmp_path, v2_checkpoint, monkeypatch):
    """A deliberately impossible tolerance: the gate must fail hard, naming the worst case."""
    monkeypatch.setitem(spec_module.TOLERANCES, "onnx", Tolerance(min_psnr=500.0, max_abs_rel=0.0))
    out = tmp_path / "v2"
    out.mkdir()
    (out / "manifest.json").write_text('{"status": "passed", "earlier": true}')
    res = run("onnx", v2_checkpoint, "-o", out, "--overwrite")
    assert res.exit_code == 1
    assert "FAIL denoiser.onnx" in res.output and "worst t=" in res.output
    assert json.loads((out / "manifest.json").read_text())["earlier"], "the earlier good export is intact"
    failed = json.loads((tmp_path / "v2.failed" / "manifest.json").read_text())
    assert failed["status"] == "failed" and failed["parity"]["denoiser.onnx"]["failures"]
    assert not list(tmp_path.glob(".v2.staging-*"))


def test_interrupted_export_leaves_nothing_behind(tmp_path, v2_checkpoint, monkeypatch):
    from mobilegen.exporter import pipeline

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "run_parity", interrupted)
    res = CliRunner().invoke(export_cli, ["onnx", str(v2_checkpoint), "-o", str(tmp_path / "v2")])
    assert res.exit_code != 0 and "Aborted" in res.output + res.stderr
    assert list(tmp_path.iterdir()) == [v2_checkpoint], "no output folder and no staging leftovers"
