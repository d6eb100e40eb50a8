"""ONNX -> TFLite with onnx2tf's flatbuffer_direct backend, plus an fp16-weights pass.

Route (docs/export.md explains the choice): onnx2tf 2.6 lowers ONNX straight to a TFLite
flatbuffer without TensorFlow, in seconds, with builtin ops only; its own float16
file uses float16 activations and IO, which stock LiteRT cannot run, so the fp16
artifact is made here from the float32 file by storing each constant weight as
float16 behind a DEQUANTIZE op (the layout TensorFlow's converter produces for
float16 quantization): inputs, outputs and arithmetic stay float32. The int8 files
are made from the float32 one as well (compress/quantize.py).
"""

from __future__ import annotations

import contextlib
import io
import logging
import shutil
import tempfile
from pathlib import Path

import numpy as np

from mobilegen.contract.spec import DenoiserSpec
from mobilegen.errors import ExportError, MissingDependencyError
from mobilegen.runtime.tflite_file import schema, tensor_name

log = logging.getLogger(__name__)

# Constants smaller than this (scalars, epsilons, small shapes) stay float32: they
# cost nothing in size and would only add rounding error.
FP16_MIN_ELEMENTS = 16
# Only weights proper go to float16: tensors whose every consumer is one of these
# ops. Everything else stays float32 -- in particular the timestep embedding's
# frequencies (a MUL before SIN/COS): rounded to float16 they move sin(t * f) by up
# to ~0.25 rad at t = 999, the largest fp16 error of the whole network.
# Not GATHER: the label-embedding table stays float32. Stored as float16 behind a DEQUANTIZE,
# LiteRT's GPU accelerator rejects the GATHER ("Input / output dtype mismatch") and with it
# the partition around it: 154 ops of the real v2 fell back to the CPU. Without it every op
# of the fp16 file runs on the GPU (835 of 835, docs/measurements/targets-v2-coverage/).
FP16_WEIGHT_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "TRANSPOSE_CONV", "FULLY_CONNECTED", "BATCH_MATMUL")


def check_converter() -> None:
    """Before any work: onnx2tf is importable (MissingDependencyError names the install command)."""
    try:
        import onnx2tf  # noqa: F401
    except ImportError:
        raise MissingDependencyError("onnx2tf", "TFLite conversion") from None


def convert_onnx_to_tflite(onnx_path: Path, spec: DenoiserSpec, out_dir: Path) -> Path:
    """Convert with onnx2tf (flatbuffer_direct) to out_dir/denoiser_float32.tflite."""
    try:
        import onnx2tf
    except ImportError:
        raise MissingDependencyError("onnx2tf", "TFLite conversion") from None
    keep = {"keep_nwc_or_nhwc_or_ndhwc_input_names" if spec.layout == "NHWC" else "keep_ncw_or_nchw_or_ncdhw_input_names": ["x"]}
    with tempfile.TemporaryDirectory(prefix="mobilegen-onnx2tf-") as tmp:
        log_buffer = io.StringIO()
        try:
            with contextlib.redirect_stdout(log_buffer), contextlib.redirect_stderr(log_buffer):
                onnx2tf.convert(
                    input_onnx_file_path=str(onnx_path),
                    output_folder_path=str(Path(tmp) / "out"),
                    tflite_backend="flatbuffer_direct",
                    copy_onnx_input_output_names_to_tflite=True,
                    non_verbose=True,
                    **keep,
                )
        except Exception as exc:  # onnx2tf raises bare Exceptions
            tail = log_buffer.getvalue()[-2000:]
            raise ExportError(f"onnx2tf failed to convert {onnx_path.name}: {exc}\n{tail}") from None
        produced = sorted((Path(tmp) / "out").glob("*_float32.tflite"))
        if not produced:
            raise ExportError(f"onnx2tf produced no float32 TFLite file; its log ends with:\n{log_buffer.getvalue()[-2000:]}")
        return Path(shutil.move(str(produced[0]), out_dir / "denoiser_float32.tflite"))


def to_fp16_weights(src: Path, dst: Path) -> Path:
    """Store every float32 weight of >= FP16_MIN_ELEMENTS values as float16 + DEQUANTIZE."""
    flatbuffers, tfl = schema()
    model = tfl.ModelT.InitFromPackedBuf(bytearray(src.read_bytes()), 0)
    deq = _opcode_index(model, tfl, tfl.BuiltinOperator.DEQUANTIZE)
    empty = _empty_buffer(model, tfl)
    weight_codes = {getattr(tfl.BuiltinOperator, name) for name in FP16_WEIGHT_OPS}
    for graph in model.subgraphs:
        consumers: dict[int, set[int]] = {}
        for op in graph.operators:
            code = model.operatorCodes[op.opcodeIndex]
            for i in op.inputs if op.inputs is not None else []:
                consumers.setdefault(int(i), set()).add(max(code.builtinCode, code.deprecatedBuiltinCode))
        dequantize_ops = []
        for index in range(len(graph.tensors)):
            tensor = graph.tensors[index]
            data = model.buffers[tensor.buffer].data if tensor.buffer else None
            if tensor.type != tfl.TensorType.FLOAT32 or data is None or len(data) < 4 * FP16_MIN_ELEMENTS:
                continue
            if not consumers.get(index) or not consumers[index] <= weight_codes:
                continue
            values = np.frombuffer(bytes(bytearray(data)), dtype=np.float32)
            if np.abs(values).max(initial=0) > np.finfo(np.float16).max:
                continue  # would overflow: keep float32
            half = tfl.BufferT()
            half.data = np.frombuffer(values.astype(np.float16).tobytes(), dtype=np.uint8)
            model.buffers.append(half)
            t16 = tfl.TensorT()
            t16.shape, t16.type, t16.name = tensor.shape, tfl.TensorType.FLOAT16, f"{tensor_name(tensor)}/fp16"
            t16.buffer = len(model.buffers) - 1
            graph.tensors.append(t16)
            model.buffers[tensor.buffer].data = None
            tensor.buffer = empty
            op = tfl.OperatorT()
            op.opcodeIndex, op.inputs, op.outputs = deq, [len(graph.tensors) - 1], [index]
            dequantize_ops.append(op)
        graph.operators = dequantize_ops + list(graph.operators)
    builder = flatbuffers.Builder(src.stat().st_size)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    dst.write_bytes(builder.Output())
    return dst


def _opcode_index(model, tfl, builtin: int) -> int:
    for i, code in enumerate(model.operatorCodes):
        if max(code.builtinCode, code.deprecatedBuiltinCode) == builtin:
            return i
    code = tfl.OperatorCodeT()
    code.builtinCode, code.deprecatedBuiltinCode, code.version = builtin, min(builtin, 127), 1
    model.operatorCodes.append(code)
    return len(model.operatorCodes) - 1


def _empty_buffer(model, tfl) -> int:
    """Index of the empty sentinel buffer (0 by convention)."""
    if model.buffers and not (model.buffers[0].data is not None and len(model.buffers[0].data)):
        return 0
    model.buffers.append(tfl.BufferT())
    return len(model.buffers) - 1
