"""The ONNX stage on the real v2: static-shape ops only, the contract's names and shapes, the
unconditional label."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import run

from mobilegen.contract.spec import DenoiserSpec
from mobilegen.export.onnx import DYNAMIC_OPS, onnx_op_types
from mobilegen.runtime.backends import OnnxBackend

# What a v2 export contains: all ops with static output shapes.
EXPECTED_V2_OPS = [  # opset 20: GELU is one op; q/k/v are column slices (no Split, no Squeeze)
    "Add", "Cast", "Clip", "Concat", "Constant", "Conv", "Cos", "Gather", "Gelu", "Gemm", "GreaterOrEqual",
    "InstanceNormalization", "LayerNormalization", "MatMul", "MaxPool", "Mul", "Reshape", "Resize",
    "Sigmoid", "Sin", "Slice", "Softmax", "Transpose", "Unsqueeze",
]  # fmt: skip


@pytest.fixture(scope="module")
def real_v2_onnx(tmp_path_factory, real_v2):
    out = tmp_path_factory.mktemp("onnx") / "v2"
    res = run("onnx", real_v2, "-o", out)
    assert res.exit_code == 0, res.output + res.stderr
    return out, res


@pytest.mark.slow
def test_real_v2_exports_and_passes_onnxruntime_check(real_v2_onnx):
    out, res = real_v2_onnx
    assert "PASS denoiser.onnx: 77 cases" in res.output and "verified and wrote" in res.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "passed" and manifest["model"]["arch"] == "student_v2"
    assert manifest["parity"]["denoiser.onnx"]["min_psnr_db"] >= 80


@pytest.mark.slow
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


@pytest.mark.slow
def test_unconditional_label_works_in_onnx(real_v2_onnx, real_v2):
    from mobilegen.models.checkpoint import load_checkpoint

    out, _ = real_v2_onnx
    model = load_checkpoint(real_v2).model
    x = np.random.default_rng(0).standard_normal((1, 3, 64, 64)).astype(np.float32)
    t, y = np.array([400.0], np.float32), np.array([-1], np.int32)
    got = OnnxBackend(out / "denoiser.onnx", DenoiserSpec())(x, t, y)
    with torch.no_grad():
        ref = model(torch.from_numpy(x), torch.from_numpy(t), None).numpy()
    assert np.abs(got - ref).max() < 1e-4
