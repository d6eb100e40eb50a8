"""Building the files of an export into a folder: ONNX -> TFLite float32 (+ fp16, int8),
then each TFLite file's operator order and metadata. No gate runs here (verify/ does
that, and pipeline.py decides what is published)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from mobilegen.compress.quantize import quantize_tflite
from mobilegen.contract.labels import CIFAR10_LABELS
from mobilegen.contract.spec import ONNX_FILE, PRECISION, TFLITE_FP16, TFLITE_FP32, TFLITE_INT8, DenoiserSpec, Layout
from mobilegen.diffusion import linear_schedule
from mobilegen.diffusion.cases import calibration_cases
from mobilegen.export.metadata import About, add_metadata
from mobilegen.export.onnx import export_onnx, onnx_op_types
from mobilegen.export.schedule import schedule_depth_first
from mobilegen.export.tflite import convert_onnx_to_tflite, to_fp16_weights
from mobilegen.runtime.backends import TorchBackend
from mobilegen.runtime.tflite_file import check_builtin_only

# 4 MB per image: the sa6 scores in chunks of 64 query rows; measured on the real v2
# the fastest budget that meets the memory targets (docs/performance.md "Memory").
DEFAULT_TENSOR_MB = 4.0


@dataclass(frozen=True)
class ExportOptions:
    out_dir: Path
    tflite: bool = True
    fp16: bool = True
    prune: float = 0.0
    batch: int = 1
    layout: Layout = "NHWC"
    overwrite: bool = False
    bench: bool = True
    threads: int | None = None
    int8: tuple[str, ...] = ()  # "dynamic", "full"
    calibration_size: int = 320
    max_tensor_mb: float | None = None  # None: DEFAULT_TENSOR_MB x batch; inf: attention unbounded
    max_memory_mb: float | None = None  # None: memory.memory_limit (student_v2 only)
    memory: bool = True  # measure every file's memory and gate on it


def tensor_budget(opts: ExportOptions) -> float | None:
    """The --max-tensor-mb in effect: None when attention is unbounded."""
    if opts.max_tensor_mb is None:
        return DEFAULT_TENSOR_MB * opts.batch
    return None if math.isinf(opts.max_tensor_mb) else opts.max_tensor_mb


def build_artifacts(model, spec: DenoiserSpec, stage: Path, opts: ExportOptions, quant: dict | None = None, *,
                    source_sha256: str | None) -> dict[str, Path]:
    """Write every file into stage; quant (if given) receives each int8 file's details. Every
    .tflite file gets its metadata (with source_sha256, the checkpoint's) before anything
    measures or hashes it."""
    files = {ONNX_FILE: export_onnx(model, spec, stage / ONNX_FILE, tensor_budget(opts))}
    if opts.tflite:
        files[TFLITE_FP32] = convert_onnx_to_tflite(files[ONNX_FILE], spec, stage)
        if opts.fp16:
            files[TFLITE_FP16] = to_fp16_weights(files[TFLITE_FP32], stage / TFLITE_FP16)
        calibration = None
        if "full" in opts.int8:
            denoise = TorchBackend(model, "cpu").torch_denoise
            calibration = calibration_cases(denoise, linear_schedule(), opts.calibration_size)
        for mode in opts.int8:
            path = stage / TFLITE_INT8[mode]
            info = quantize_tflite(files[TFLITE_FP32], path, mode, spec, calibration)
            files[path.name] = path
            if quant is not None:
                quant[mode] = info
    for name, path in files.items():
        if path.suffix == ".tflite":
            schedule_depth_first(path)  # chunk after chunk, so the chunks' memory is reused
            about = About(model.arch, PRECISION[name], source_sha256, linear_schedule().T, CIFAR10_LABELS)
            add_metadata(path, spec, about)
    return files


def op_types(path: Path) -> list[str]:
    return onnx_op_types(path) if path.suffix == ".onnx" else check_builtin_only(path)
