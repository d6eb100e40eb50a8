"""The `onnx` command and stage: static-shape ops only, the contract's names and shapes, the
unconditional label. On the tiny network (the v2 UNet, a tenth of its channels: the same
operators in seconds); the real v2's ONNX file is built and gated by every real-weights
`tflite` export (tests/conftest.py real_v2_export)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import run

from mobilegen.contract.spec import DenoiserSpec
from mobilegen.export.onnx import DYNAMIC_OPS, onnx_op_types
from mobilegen.runtime.backends import OnnxBackend

pytestmark = pytest.mark.slow  # an export (15 s): the full suite's, not the quick one's

# What a v2 export contains: all ops with static output shapes.
EXPECTED_V2_OPS = [  # opset 20: GELU is one op; q/k/v are column slices (no Split, no Squeeze)
    "Add", "Cast", "Clip", "Concat", "Constant", "Conv", "Cos", "Gather", "Gelu", "Gemm", "GreaterOrEqual",
    "InstanceNormalization", "LayerNormalization", "MatMul", "MaxPool", "Mul", "Reshape", "Resize",
    "Sigmoid", "Sin", "Slice", "Softmax", "Transpose", "Unsqueeze",
]  # fmt: skip


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    from helpers import tiny_checkpoint

    root = tmp_path_factory.mktemp("onnx")
    res = run("onnx", tiny_checkpoint(root / "tiny.pt"), "-o", root / "v2")
    assert res.exit_code == 0, res.output + res.stderr
    return root / "v2", res


def test_onnx_command_exports_and_passes_the_onnxruntime_check(tiny_onnx):
    out, res = tiny_onnx
    assert "PASS denoiser.onnx: 77 cases" in res.output and "verified and wrote" in res.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "passed" and manifest["model"]["arch"] == "student_v2"
    assert manifest["parity"]["denoiser.onnx"]["min_psnr_db"] >= 80
    assert list(manifest["files"]) == ["denoiser.onnx", "labels.txt"] and manifest["io"]["layout"] == "NCHW"


def test_onnx_has_only_static_shape_ops(tiny_onnx):
    import onnx

    out, _ = tiny_onnx
    ops = onnx_op_types(out / "denoiser.onnx")
    assert ops == EXPECTED_V2_OPS
    assert not set(ops) & DYNAMIC_OPS
    model = onnx.load(str(out / "denoiser.onnx"))
    assert [i.name for i in model.graph.input] == ["x", "t", "y"] and [o.name for o in model.graph.output] == ["eps"]
    shapes = {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input}
    assert shapes == {"x": [1, 3, 64, 64], "t": [1], "y": [1]}


def test_unconditional_label_works_in_onnx(tiny_onnx):
    from mobilegen.models.checkpoint import load_checkpoint

    out, _ = tiny_onnx
    model = load_checkpoint(out.parent / "tiny.pt").model
    x = np.random.default_rng(0).standard_normal((1, 3, 64, 64)).astype(np.float32)
    t, y = np.array([400.0], np.float32), np.array([-1], np.int32)
    got = OnnxBackend(out / "denoiser.onnx", DenoiserSpec())(x, t, y)
    with torch.no_grad():
        ref = model(torch.from_numpy(x), torch.from_numpy(t), None).numpy()
    assert np.abs(got - ref).max() < 1e-4
