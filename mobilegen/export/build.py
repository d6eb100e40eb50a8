"""Building the files of an export into a folder: ONNX -> TFLite float32 (+ fp16, int8),
then each TFLite file's operator order and metadata. No gate runs here (verify/ does
that, and jobs/export.py decides what is published)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from mobilegen.compress.quantize import quantize_tflite
from mobilegen.contract import defaults
from mobilegen.contract.labels import CIFAR10_LABELS
from mobilegen.contract.spec import ONNX_FILE, PRECISION, TFLITE_FP16, TFLITE_FP32, TFLITE_INT8, DenoiserSpec
from mobilegen.diffusion import linear_schedule
from mobilegen.diffusion.cases import calibration_cases
from mobilegen.export.metadata import About, add_metadata
from mobilegen.export.onnx import export_onnx, onnx_op_types
from mobilegen.export.schedule import schedule_depth_first
from mobilegen.export.tflite import convert_onnx_to_tflite, to_fp16_weights
from mobilegen.runtime.backends import TorchBackend
from mobilegen.runtime.tflite_file import check_builtin_only


@dataclass(frozen=True)
class BuildOptions:
    """What the build stage needs, and nothing else (no folders, no gate settings)."""

    tflite: bool = True
    fp16: bool = defaults.FP16
    int8: tuple[str, ...] = ()  # "dynamic", "full"
    calibration_size: int = defaults.CALIBRATION_SAMPLES
    tensor_mb: float | None = defaults.TENSOR_MB  # the attention's tensor budget; None: unbounded
    attention_split: str = defaults.ATTENTION_SPLIT  # how a bounded block is split (models/budget.py)


@dataclass(frozen=True)
class Artifacts:
    """The files of an export, built in one folder, with what the build learnt about them."""

    files: dict[str, Path]  # slot name -> path
    int8: dict[str, dict]  # mode -> the quantizer's details
    op_types: dict[str, list[str]]  # slot name -> operator types


def tensor_budget(max_tensor_mb: float | None, batch: int) -> float | None:
    """The --max-tensor-mb in effect: None when attention is unbounded (inf)."""
    if max_tensor_mb is None:
        return defaults.TENSOR_MB * batch
    return None if math.isinf(max_tensor_mb) else max_tensor_mb


def build(model, spec: DenoiserSpec, stage: Path, options: BuildOptions, source_sha256: str | None) -> Artifacts:
    """Write every file into stage. Every .tflite file gets its metadata (with source_sha256,
    the checkpoint's) before anything measures or hashes it."""
    files = {ONNX_FILE: export_onnx(model, spec, stage / ONNX_FILE, options.tensor_mb, options.attention_split)}
    int8: dict[str, dict] = {}
    if options.tflite:
        files[TFLITE_FP32] = convert_onnx_to_tflite(files[ONNX_FILE], spec, stage)
        if options.fp16:
            files[TFLITE_FP16] = to_fp16_weights(files[TFLITE_FP32], stage / TFLITE_FP16)
        calibration = None
        if "full" in options.int8:
            denoise = TorchBackend(model, "cpu").torch_denoise
            calibration = calibration_cases(denoise, linear_schedule(), options.calibration_size)
        for mode in options.int8:
            path = stage / TFLITE_INT8[mode]
            int8[mode] = quantize_tflite(files[TFLITE_FP32], path, mode, spec, calibration)
            files[path.name] = path
    for name, path in files.items():
        if path.suffix == ".tflite":
            schedule_depth_first(path)  # chunk after chunk, so the chunks' memory is reused
            about = About(model.arch, PRECISION[name], source_sha256, linear_schedule().T, CIFAR10_LABELS)
            add_metadata(path, spec, about)
    return Artifacts(files, int8, {name: op_types(path) for name, path in files.items()})


def op_types(path: Path) -> list[str]:
    return onnx_op_types(path) if path.suffix == ".onnx" else check_builtin_only(path)
