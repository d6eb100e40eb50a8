"""int8 TFLite files made from the float32 one with Google's ai-edge-quantizer.

Two modes, both with float32 inputs and outputs:

- dynamic: int8 weights (per output channel); each CONV_2D / FULLY_CONNECTED
  quantizes its input activations on the fly, per call.
- full: int8 weights AND int8 activations for CONV_2D / FULLY_CONNECTED, with fixed
  activation ranges calibrated on inputs that sampling produces
  (calibration.calibration_cases). Everything else runs in float32: the norms,
  softmax and the attention matmuls (activation x activation), GELU, the residual
  adds and the timestep embedding.

Some weight ops stay float in either mode; `float_ops` finds them in the graph by
their role, and the manifest lists them with the reason. The reasons are
measurements on the real v2 weights (quantizing that op ALONE, min per-step PSNR;
scripts/int8_op_sensitivity.py, README "int8"):

- the image-input conv: it reads the raw noisy image x_t, and rounding that to 8
  bits costs the most of any op (alone: 29.9 dB dynamic, 17.8 dB full);
- full only, the timestep/label embedding layers: one input row whose range swings
  with t, so one calibrated range fits no timestep well (alone: down to 24.6 dB);
- full only, the attention output projections: they read softmax-weighted sums,
  heavy-tailed (alone: down to 34.4 dB);
- full only, a layer with an all-zero output channel and a bias (the real v2 weights
  have two): that channel's weight scale is 0, so its int32 bias, whose scale is
  input scale x weight scale, has no valid value (the library casts NaN).
They are a small share of the work: the embedding rows are [1, 256], the first
conv has 3 input channels.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
from pathlib import Path

import numpy as np

from mobilegen.backends import default_threads
from mobilegen.calibration import Cases
from mobilegen.errors import ExportError, MissingDependencyError
from mobilegen.exporter.spec import DenoiserSpec

log = logging.getLogger(__name__)

INT8_MODES: tuple[str, ...] = ("dynamic", "full")
FLOAT_REASONS = {
    "image_input_conv": "reads the raw noisy image x_t; 8-bit rounding of it is the largest single error",
    "embedding": "timestep/label embedding: one row whose range swings with t (tiny: [1, 256])",
    "attention_output": "attention output projection: reads heavy-tailed softmax-weighted sums",
    "zero_channel": "an all-zero output channel gets weight scale 0, so its int32 bias (scale = input x weight scale) "
    "cannot be represented",
}
KEEP_FLOAT = {"dynamic": ("image_input_conv",), "full": ("image_input_conv", "embedding", "attention_output", "zero_channel")}
WEIGHT_OPS = ("CONV_2D", "FULLY_CONNECTED")


def _library():
    try:
        from ai_edge_quantizer import quantizer, recipe
    except ImportError:
        raise MissingDependencyError("ai-edge-quantizer", "int8 TFLite files") from None
    return quantizer, recipe


def float_ops(path: Path) -> dict[str, str]:
    """Output tensor name -> role, for the weight ops that stay float (any mode)."""
    from mobilegen.exporter.tflite_export import _name, _schema, op_kinds

    _, tfl = _schema()
    model = tfl.ModelT.InitFromPackedBuf(bytearray(path.read_bytes()), 0)
    graph = model.subgraphs[0]
    kind = {id(op): k for op, k in zip(graph.operators, op_kinds(model, tfl))}
    producer = {int(o): op for op in graph.operators for o in op.outputs}
    graph_inputs = {int(i) for i in graph.inputs}

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

    def zero_channel_with_bias(op) -> bool:
        """An output channel whose weights are all zero, and a bias to quantize with it."""
        if len(op.inputs) < 3 or op.inputs[2] < 0:
            return False
        weight = graph.tensors[op.inputs[1]]
        data = model.buffers[weight.buffer].data if weight.buffer else None
        if data is None or weight.type != tfl.TensorType.FLOAT32:
            return False
        values = np.frombuffer(bytes(bytearray(data)), dtype=np.float32).reshape(int(weight.shape[0]), -1)
        return bool((np.abs(values).max(axis=1) == 0).any())

    roles = {}
    for op in graph.operators:
        if kind[id(op)] not in WEIGHT_OPS:
            continue
        kinds, from_input = upstream(op, 3)
        out = _name(graph.tensors[op.outputs[0]])
        if zero_channel_with_bias(op):
            roles[out] = "zero_channel"
        elif kind[id(op)] == "CONV_2D" and from_input:
            roles[out] = "image_input_conv"
        elif kind[id(op)] == "FULLY_CONNECTED" and "SIN" in upstream(op, 4)[0]:
            roles[out] = "embedding"
        elif kind[id(op)] == "FULLY_CONNECTED" and "BATCH_MATMUL" in kinds:
            roles[out] = "attention_output"
    return roles


def _recipe(mode: str, keep: list[str]) -> list[dict]:
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
        raise ValueError(f"unknown int8 mode {mode!r}; expected one of {', '.join(INT8_MODES)}")
    if mode == "full" and calibration is None:
        raise ValueError("int8 full needs calibration inputs")
    quantizer, _ = _library()
    roles = {name: role for name, role in float_ops(src).items() if role in KEEP_FLOAT[mode]}
    qt = quantizer.Quantizer(str(src))
    qt.load_quantization_recipe(_recipe(mode, sorted(roles)))
    log_buffer = io.StringIO()
    try:
        with contextlib.redirect_stdout(log_buffer), contextlib.redirect_stderr(log_buffer):
            stats = qt.calibrate(_signature_inputs(calibration, spec), num_threads=default_threads()) if mode == "full" else None
            qt.quantize(stats).export_model(str(dst), overwrite=True)
    except Exception as exc:  # the library raises plain exceptions
        raise ExportError(f"ai-edge-quantizer failed ({mode}): {exc}\n{log_buffer.getvalue()[-2000:]}") from None
    info: dict = {"mode": mode, "tool": "ai-edge-quantizer", "weights": "int8 per output channel, symmetric",
                  "activations": "int8 per call (dynamic)" if mode == "dynamic" else "int8, calibrated ranges",
                  "kept_float": [{"op": name, "role": role, "why": FLOAT_REASONS[role]} for name, role in sorted(roles.items())]}  # fmt: skip
    if calibration is not None:
        info["calibration_samples"] = len(calibration)
    return info


def _signature_inputs(cases: Cases, spec: DenoiserSpec) -> dict[str, list[dict[str, np.ndarray]]]:
    """One call per spec.batch cases, in the artifact's layout."""
    rows = []
    for start in range(0, len(cases), spec.batch):
        idx = np.arange(start, start + spec.batch).clip(max=len(cases) - 1)
        rows.append({"x": spec.to_layout(cases.x[idx]), "t": cases.t[idx], "y": cases.y[idx]})
    return {"serving_default": rows}
