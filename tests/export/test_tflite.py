"""The TFLite stage: builtin ops and the stock LiteRT signature, float16 weights behind
DEQUANTIZE, the unconditional label, and a custom op refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import manifest_of

from mobilegen.contract.manifest import spec_from_manifest
from mobilegen.errors import ExportError
from mobilegen.models.checkpoint import load_checkpoint
from mobilegen.runtime.backends import TFLiteBackend
from mobilegen.runtime.tflite_file import check_builtin_only, tflite_op_types, tflite_tensor_types

TFLITE = ("denoiser_float32.tflite", "denoiser_float16.tflite")


@pytest.mark.parametrize("name", TFLITE)
def test_builtin_ops_only_and_stock_litert_signature(tiny_export, name):
    out, _ = tiny_export
    from ai_edge_litert.interpreter import Interpreter

    path = out / name
    ops = check_builtin_only(path)
    assert "CONV_2D" in ops and "GELU" in ops and not any(op.startswith("CUSTOM") for op in ops)
    interp = Interpreter(model_path=str(path))
    sig = interp.get_signature_list()["serving_default"]
    assert sorted(sig["inputs"]) == ["t", "x", "y"] and sig["outputs"] == ["eps"]
    runner = interp.get_signature_runner()
    details = runner.get_input_details()
    assert {k: v["dtype"] for k, v in details.items()} == {"x": np.float32, "t": np.float32, "y": np.int32}
    assert list(details["x"]["shape"]) == [1, 64, 64, 3]
    assert runner.get_output_details()["eps"]["dtype"] == np.float32


def test_fp16_file_stores_half_weights_behind_dequantize(tiny_export):
    out, _ = tiny_export
    f32, f16 = (out / n for n in TFLITE)
    assert f16.stat().st_size <= 0.8 * f32.stat().st_size  # the tiny network's graph weighs more than its weights
    assert "DEQUANTIZE" in tflite_op_types(f16) and "DEQUANTIZE" not in tflite_op_types(f32)
    assert tflite_tensor_types(f16).get("FLOAT16", 0) > 30 and "FLOAT16" not in tflite_tensor_types(f32)


@pytest.mark.slow
@pytest.mark.parametrize("name", TFLITE)
def test_unconditional_label_works_in_tflite(real_v2_export, real_v2, name):
    from mobilegen.compress.unstructured import prune_l1

    spec = spec_from_manifest(manifest_of(real_v2_export))
    model = prune_l1(load_checkpoint(real_v2).model, 0.3)
    x = np.random.default_rng(1).standard_normal((1, 3, 64, 64)).astype(np.float32)
    t, y = np.array([60.0], np.float32), np.array([-1], np.int32)
    got = TFLiteBackend(real_v2_export / name, spec)(x, t, y)
    with torch.no_grad():
        ref = model(torch.from_numpy(x), torch.from_numpy(t), None).numpy()
    rmse = np.sqrt(np.mean((got - ref) ** 2))
    assert 20 * np.log10(np.abs(ref).max() / rmse) > 40


def test_non_builtin_op_is_refused(tiny_export, tmp_path):
    """Rewrite one opcode as the FlexErf custom op the original file had: the check must fail."""
    out, _ = tiny_export
    import flatbuffers
    from onnx2tf.tflite_builder.schema import schema_generated as tfl

    model = tfl.ModelT.InitFromPackedBuf(bytearray((out / TFLITE[0]).read_bytes()), 0)
    code = model.operatorCodes[0]
    code.builtinCode, code.deprecatedBuiltinCode, code.customCode = tfl.BuiltinOperator.CUSTOM, 32, "FlexErf"
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    bad = tmp_path / "flex.tflite"
    bad.write_bytes(builder.Output())
    with pytest.raises(ExportError, match="CUSTOM:FlexErf"):
        check_builtin_only(bad)
