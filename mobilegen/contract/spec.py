"""The exported denoiser's contract, defined once.

It feeds the ONNX export (names, shapes, opset), the TFLite signature, the parity
inputs, the runtime backends and the manifest.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np

from mobilegen.contract.defaults import BATCH, LABELS_FILE, LAYOUT
from mobilegen.errors import InvalidInput

# The three original networks (models/unet.py builds them).
ARCHS: tuple[str, ...] = ("teacher", "student_v1", "student_v2")
Layout = Literal["NCHW", "NHWC"]
LAYOUTS = ("NCHW", "NHWC")
# Opset 20: LayerNormalization is a single op and GELU is one (Gelu-20), which onnx2tf lowers
# to the builtin GELU. At opset 17 the GELU after each GroupNorm was an Erf pattern that
# onnx2tf lowered to a polynomial with SIGN, which XNNPACK cannot run: each one split the
# graph into another delegate partition, and the partitions' boundary tensors cost memory.
OPSET = 20
# Timestep indices 0..T-1 of the original schedule; every manifest's schedule has T values.
TIMESTEPS = 1000

# The files of an export folder and the precision each slot holds: a manifest may list
# only these names (plain names, inside the folder).
ONNX_FILE = "denoiser.onnx"
TFLITE_FP32 = "denoiser_float32.tflite"
TFLITE_FP16 = "denoiser_float16.tflite"
TFLITE_INT8 = {"dynamic": "denoiser_int8_dynamic.tflite", "full": "denoiser_int8_full.tflite"}
PRECISION = {ONNX_FILE: "onnx", TFLITE_FP32: "float32", TFLITE_FP16: "float16"} | {
    name: f"int8_{mode}" for mode, name in TFLITE_INT8.items()
}
SLOTS = PRECISION | {LABELS_FILE: "text"}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str
    shape: tuple[int, ...]
    description: str


@dataclass(frozen=True)
class Tolerance:
    """PSNR = 20 log10(max|ref| / RMSE). max_abs_rel bounds max|out-ref| / max|ref|.

    float64_multiple (the float32 gates): errors are measured against a float64 run of
    the same model instead, and a case also passes when its error is at most this many
    times the PyTorch float32 reference's own error against float64 (parity.py), with
    PSNR never below float64_min_psnr.
    """

    min_psnr: float
    max_abs_rel: float | None = None
    float64_multiple: float | None = None
    float64_min_psnr: float | None = None  # the floor the multiple never goes below


# A float32 artifact computes in a different order than PyTorch (onnxruntime, XNNPACK),
# so its rounding error is of the same size as PyTorch's own, not smaller: 4x leaves
# room for that, while a wrong weight or op lands orders of magnitude above (tested).
FLOAT64_MULTIPLE = 4.0
# ...but a float32 file is never allowed more error than a float16 one: however large
# the reference's own error (the teacher's probe weights: 43 dB), PSNR against float64
# stays >= the fp16 gate.
FLOAT64_MIN_PSNR = 40.0

# Per artifact precision: the gates the issues set.
TOLERANCES: dict[str, Tolerance] = {
    "onnx": Tolerance(80.0, 1e-4, FLOAT64_MULTIPLE, FLOAT64_MIN_PSNR),
    "float32": Tolerance(80.0, 1e-4, FLOAT64_MULTIPLE, FLOAT64_MIN_PSNR),
    "float16": Tolerance(min_psnr=40.0),
    "int8_dynamic": Tolerance(min_psnr=30.0),
    # The int8 number, for both int8 kinds (on the real v2 weights int8 full
    # misses it: docs/int8.md).
    "int8_full": Tolerance(min_psnr=30.0),
}


@dataclass(frozen=True)
class DenoiserSpec:
    batch: int = BATCH
    layout: Layout = LAYOUT["onnx"]  # the model's own; the tflite command exports NHWC
    image_size: int = 64
    channels: int = 3
    num_classes: int = 10
    opset: int = OPSET
    tolerances: dict[str, Tolerance] = field(default_factory=lambda: dict(TOLERANCES))

    def __post_init__(self) -> None:
        if self.batch < 1:
            raise InvalidInput(f"batch must be >= 1, got {self.batch}")
        if self.layout not in LAYOUTS:
            raise InvalidInput(f"layout must be one of {', '.join(LAYOUTS)}, got {self.layout!r}")

    @property
    def image_shape(self) -> tuple[int, int, int, int]:
        n, c, s = self.batch, self.channels, self.image_size
        return (n, c, s, s) if self.layout == "NCHW" else (n, s, s, c)

    @property
    def inputs(self) -> list[TensorSpec]:
        return [
            TensorSpec("x", "float32", self.image_shape, f"noisy image x_t in {self.layout}, values ~N(0,1)-scaled"),
            TensorSpec("t", "float32", (self.batch,), "timestep index 0..T-1 as float"),
            TensorSpec("y", "int32", (self.batch,), f"class index 0..{self.num_classes - 1}, -1 = unconditional"),
        ]

    @property
    def outputs(self) -> list[TensorSpec]:
        return [TensorSpec("eps", "float32", self.image_shape, f"predicted noise, {self.layout}")]

    def to_layout(self, x_nchw: np.ndarray) -> np.ndarray:
        return x_nchw if self.layout == "NCHW" else np.ascontiguousarray(x_nchw.transpose(0, 2, 3, 1))

    def from_layout(self, x: np.ndarray) -> np.ndarray:
        return x if self.layout == "NCHW" else np.ascontiguousarray(x.transpose(0, 3, 1, 2))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["inputs"] = [asdict(s) for s in self.inputs]
        d["outputs"] = [asdict(s) for s in self.outputs]
        return d
