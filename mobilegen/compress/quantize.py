"""int8 TFLite files made from the float32 one with Google's ai-edge-quantizer.

Two modes, both with float32 inputs and outputs:

- dynamic: int8 weights (per output channel); each CONV_2D / FULLY_CONNECTED
  quantizes its input activations on the fly, per call.
- full: int8 weights AND int8 activations for CONV_2D / FULLY_CONNECTED, with fixed
  activation ranges calibrated on inputs that sampling produces
  (diffusion/cases.py calibration_cases). Everything else runs in float32: the norms,
  softmax and the attention matmuls (activation x activation), GELU, the residual
  adds and the timestep embedding.

Some weight ops stay float in either mode; `float_ops` finds them in the graph by
their role, and the manifest lists them with the reason. The reasons are
measurements on the real v2 weights (quantizing that op ALONE, min per-step PSNR;
docs/measurements/int8-cpu/int8_op_sensitivity.py, docs/int8.md):

- the image-input conv: it reads the raw noisy image x_t, and rounding that to 8
  bits costs the most of any op (alone: 29.9 dB dynamic, 17.8 dB full);
- full only, the timestep/label embedding layers: one input row whose range swings
  with t, so one calibrated range fits no timestep well (alone: down to 24.6 dB);
- full only, the attention output projections: they read softmax-weighted sums,
  heavy-tailed (alone: down to 34.4 dB);
- full only, a layer with an all-zero output channel and a bias (the real v2 weights
  have two): that channel's weight scale is 0, so its int32 bias, whose scale is
  input scale x weight scale, has no valid value (the library casts NaN);
- full only, found after calibration: a layer whose bias does not fit int32 at that
  scale. In the real v2 weights sa2's second feed-forward layer reads an input of
  range 1.6e-4 with weights below 1e-4, so 240 of its 256 biases (66 calibration
  samples) land beyond 2^31;
  the library clips them to 2^31 - 1 in float32, which rounds to 2^31, and the cast
  wraps them to -2^31 (positive biases turned into the most negative value).
They are a small share of the work: the embedding rows are [1, 256], the first
conv has 3 input channels. Every int8 file is then checked for a wrapped bias.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mobilegen.contract.spec import DenoiserSpec
from mobilegen.diffusion.cases import Cases
from mobilegen.errors import ExportError, InvalidInput, MissingDependencyError
from mobilegen.runtime.backends import default_threads
from mobilegen.runtime.tflite_file import tensor_name

log = logging.getLogger(__name__)

INT8_MODES: tuple[str, ...] = ("dynamic", "full")
FLOAT_REASONS = {
    "image_input_conv": "reads the raw noisy image x_t; 8-bit rounding of it is the largest single error",
    "embedding": "timestep/label embedding: one row whose range swings with t (tiny: [1, 256])",
    "attention_output": "attention output projection: reads heavy-tailed softmax-weighted sums",
    "zero_channel": "an all-zero output channel gets weight scale 0, so its int32 bias (scale = input x weight scale) "
    "cannot be represented",
    "bias_overflow": "its calibrated input range x weight scale is so small that its bias does not fit int32 at that scale",
}
KEEP_FLOAT = {"dynamic": ("image_input_conv",), "full": ("image_input_conv", "embedding", "attention_output", "zero_channel")}
INT32_LIMIT = 2**31 - 256  # float32 rounds anything above this to 2^31, which the int32 cast wraps
WEIGHT_OPS = ("CONV_2D", "FULLY_CONNECTED")
LAYOUT_OPS = ("RESHAPE", "TRANSPOSE", "CONCATENATION", "SQUEEZE", "EXPAND_DIMS")


def _library():
    try:
        from ai_edge_quantizer import quantizer, recipe
    except ImportError:
        raise MissingDependencyError("ai-edge-quantizer", "int8 TFLite files") from None
    return quantizer, recipe


@dataclass
class WeightGraph:
    """A TFLite file's first graph, the schema module, each op's kind (by op id) and the raw bytes."""

    model: object
    graph: object
    tfl: object
    kind: dict
    raw: bytes

    def data(self, index: int, dtype) -> np.ndarray | None:
        """A constant tensor's values if it has the schema type of ``dtype``, else None. The
        bytes sit in the buffer, or past the flatbuffer at the buffer's offset (the
        quantizer writes large files that way)."""
        tensor = self.graph.tensors[index] if index >= 0 else None
        buffer = self.model.buffers[tensor.buffer] if tensor is not None and tensor.buffer else None
        wanted = {np.float32: self.tfl.TensorType.FLOAT32, np.int32: self.tfl.TensorType.INT32}[dtype]
        if buffer is None or tensor.type != wanted:
            return None
        if buffer.data is not None:
            return np.frombuffer(bytes(bytearray(buffer.data)), dtype=dtype)
        if getattr(buffer, "offset", 0) > 1:
            return np.frombuffer(self.raw[buffer.offset : buffer.offset + buffer.size], dtype=dtype)
        return None


def read_weight_graph(path: Path) -> WeightGraph:
    from mobilegen.runtime.tflite_file import op_kinds, schema

    _, tfl = schema()
    raw = path.read_bytes()
    model = tfl.ModelT.InitFromPackedBuf(bytearray(raw), 0)
    graph = model.subgraphs[0]
    return WeightGraph(model, graph, tfl, {id(op): k for op, k in zip(graph.operators, op_kinds(model, tfl))}, raw)


def weight_ops(g: WeightGraph):
    """(op, output name, weights [out, -1], bias or None) for every float CONV_2D / FULLY_CONNECTED."""
    for op in g.graph.operators:
        if g.kind[id(op)] not in WEIGHT_OPS:
            continue
        weights = g.data(int(op.inputs[1]), np.float32)
        if weights is None:
            continue
        bias = g.data(int(op.inputs[2]), np.float32) if len(op.inputs) > 2 else None
        rows = int(g.graph.tensors[op.inputs[1]].shape[0])
        yield op, tensor_name(g.graph.tensors[op.outputs[0]]), weights.reshape(rows, -1), bias


def float_ops(path: Path) -> dict[str, str]:
    """Output tensor name -> role, for the weight ops that stay float by their place in the graph (any mode)."""
    g = read_weight_graph(path)
    kind = g.kind
    producer = {int(o): op for op in g.graph.operators for o in op.outputs}
    graph_inputs = {int(i) for i in g.graph.inputs}

    def first_compute(op) -> str | None:
        """The kind of the first op upstream of op's first input that computes (layout ops skipped:
        bounded attention concatenates its chunks' results before the output projection)."""
        tensor = int(op.inputs[0])
        while tensor in producer:
            kind_ = kind[id(producer[tensor])]
            if kind_ not in LAYOUT_OPS:
                return kind_
            tensor = int(producer[tensor].inputs[0])
        return None

    def upstream(op, hops: int) -> tuple[list[str], bool]:
        """Kinds of the ops feeding op's first input (up to hops), and whether it starts at a graph input."""
        kinds, tensor = [], int(op.inputs[0])
        for _ in range(hops):
            if tensor in graph_inputs:
                return kinds, True
            if tensor not in producer:
                break
            kinds.append(kind[id(producer[tensor])])
            tensor = int(producer[tensor].inputs[0])
        return kinds, tensor in graph_inputs

    roles = {}
    for op, out, weights, bias in weight_ops(g):
        kinds, from_input = upstream(op, 3)
        if bias is not None and (np.abs(weights).max(axis=1) == 0).any():  # an all-zero output channel
            roles[out] = "zero_channel"
        elif kind[id(op)] == "CONV_2D" and from_input:
            roles[out] = "image_input_conv"
        elif kind[id(op)] == "FULLY_CONNECTED" and "SIN" in upstream(op, 4)[0]:
            roles[out] = "embedding"
        elif kind[id(op)] == "FULLY_CONNECTED" and first_compute(op) == "BATCH_MATMUL":
            roles[out] = "attention_output"
    return roles


def bias_overflow_ops(path: Path, stats: dict) -> list[str]:
    """Weight ops whose int32 bias would not fit at scale input x weight scale, given the
    calibrated ranges (``stats``: tensor name -> {"min", "max"}). The scales are the
    library's: int8 activations asymmetric over [min(lo, 0), max(hi, 0)], weights
    symmetric per output channel, each range at least 1e-9."""
    g = read_weight_graph(path)
    found = []
    for op, out, weights, bias in weight_ops(g):
        qsv = stats.get(tensor_name(g.graph.tensors[op.inputs[0]]))
        if bias is None or qsv is None:
            continue
        lo, hi = min(float(np.min(qsv["min"])), 0.0), max(float(np.max(qsv["max"])), 0.0)
        input_scale = max(hi - lo, 1e-9) / 255
        weight_scale = np.maximum(np.abs(weights).max(axis=1), 1e-9) / 127
        if (np.abs(bias.astype(np.float64)) / (input_scale * weight_scale) > INT32_LIMIT).any():
            found.append(out)
    return found


def wrapped_biases(path: Path) -> list[str]:
    """int32 constant tensors of an int8 file that hold -2^31: a bias the library wrapped."""
    g = read_weight_graph(path)
    found = []
    for index, tensor in enumerate(g.graph.tensors):
        values = g.data(index, np.int32)
        if values is not None and (values == np.iinfo(np.int32).min).any():
            found.append(tensor_name(tensor))
    return found


def recipe_rules(mode: str, keep: list[str]) -> list[dict]:
    _, recipe = _library()
    base = (recipe.dynamic_wi8_afp32() if mode == "dynamic" else recipe.static_wi8_ai8())[0]
    rules = [dict(base, operation=op) for op in WEIGHT_OPS]
    # Float32 model inputs and outputs (full mode would otherwise make them int8).
    rules += [{"regex": ".*", "operation": op, "algorithm_key": "no_quantize"} for op in ("INPUT", "OUTPUT")]
    # A scope is an op's output tensor names joined by ';' plus a trailing ';'.
    rules += [{"regex": f"^{re.escape(name)};$", "operation": "*", "algorithm_key": "no_quantize"} for name in keep]
    return rules


def quantize_tflite(src: Path, dst: Path, mode: str, spec: DenoiserSpec, calibration: Cases | None = None) -> dict:
    """Write the int8 file; returns what stayed float and why (for the manifest)."""
    if mode not in INT8_MODES:
        raise InvalidInput(f"unknown int8 mode {mode!r}; expected one of {', '.join(INT8_MODES)}")
    if mode == "full" and calibration is None:
        raise InvalidInput("int8 full needs calibration inputs")
    quantizer, _ = _library()
    roles = {name: role for name, role in float_ops(src).items() if role in KEEP_FLOAT[mode]}
    qt = quantizer.Quantizer(str(src))
    qt.load_quantization_recipe(recipe_rules(mode, sorted(roles)))
    log_buffer = io.StringIO()
    try:
        with contextlib.redirect_stdout(log_buffer), contextlib.redirect_stderr(log_buffer):
            stats = qt.calibrate(signature_inputs(calibration, spec), num_threads=default_threads()) if mode == "full" else None
            overflow = {name: "bias_overflow" for name in bias_overflow_ops(src, stats) if name not in roles} if stats else {}
            if overflow:  # the ranges cover every tensor of the first recipe, so no second calibration
                roles |= overflow
                qt.load_quantization_recipe(recipe_rules(mode, sorted(roles)))
            qt.quantize(stats).export_model(str(dst), overwrite=True)
    except Exception as exc:  # the library raises plain exceptions
        raise ExportError(f"ai-edge-quantizer failed ({mode}): {exc}\n{log_buffer.getvalue()[-2000:]}") from None
    if wrapped := wrapped_biases(dst):
        dst.unlink()
        raise ExportError(
            f"int8 {mode}: the quantizer wrapped an int32 bias to -2^31 in {', '.join(wrapped)}; "
            "that file would compute with wrong biases, so it was not written"
        )
    info: dict = {
        "mode": mode,
        "tool": "ai-edge-quantizer",
        "weights": "int8 per output channel, symmetric",
        "activations": "int8 per call (dynamic)" if mode == "dynamic" else "int8, calibrated ranges",
        "kept_float": [{"op": name, "role": role, "why": FLOAT_REASONS[role]} for name, role in sorted(roles.items())],
    }
    if calibration is not None:
        info["calibration_samples"] = len(calibration)
    return info


def signature_inputs(cases: Cases, spec: DenoiserSpec) -> dict[str, list[dict[str, np.ndarray]]]:
    """One call per spec.batch cases, in the artifact's layout."""
    rows = []
    for start in range(0, len(cases), spec.batch):
        idx = np.arange(start, start + spec.batch).clip(max=len(cases) - 1)
        rows.append({"x": spec.to_layout(cases.x[idx]), "t": cases.t[idx], "y": cases.y[idx]})
    return {"serving_default": rows}
