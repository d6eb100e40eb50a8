"""The export pipeline, one small stage after another:

load -> prune -> ONNX -> TFLite fp32 (+ fp16, int8) -> parity of every artifact -> latency
-> manifest + report -> publish.

Everything is built in a hidden staging folder beside the output and moved into
place only when every gate passed, so an earlier good export is never replaced by a
bad or half-written one. A failed export lands in ``<out>.failed/`` with
``"status": "failed"`` in its manifest, for inspection.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mobilegen.backends import TorchBackend, open_artifact
from mobilegen.calibration import calibration_cases, forward_process_cases
from mobilegen.checkpoint import LoadedModel
from mobilegen.diffusion import linear_schedule
from mobilegen.errors import ExportError
from mobilegen.exporter import manifest as mf
from mobilegen.exporter.onnx_export import export_onnx, onnx_op_types
from mobilegen.exporter.parity import ParityResult, check_parity, psnr
from mobilegen.exporter.prune import prune_l1, sparsity
from mobilegen.exporter.quantize import quantize_tflite
from mobilegen.exporter.report import write_report
from mobilegen.exporter.spec import DenoiserSpec, Layout
from mobilegen.exporter.tflite_export import check_builtin_only, convert_onnx_to_tflite, to_fp16_weights
from mobilegen.exporter.tflite_memory import schedule_depth_first
from mobilegen.labels import CIFAR10_LABELS

log = logging.getLogger(__name__)

ONNX_FILE = "denoiser.onnx"
TFLITE_FP32 = "denoiser_float32.tflite"
TFLITE_FP16 = "denoiser_float16.tflite"
TFLITE_INT8 = {"dynamic": "denoiser_int8_dynamic.tflite", "full": "denoiser_int8_full.tflite"}
# 4 MB per image: the sa6 scores in chunks of 64 query rows; measured on the real v2
# the fastest budget that meets the memory targets (README "Memory").
DEFAULT_TENSOR_MB = 4.0
PRECISION = {ONNX_FILE: "onnx", TFLITE_FP32: "float32", TFLITE_FP16: "float16"} | {
    name: f"int8_{mode}" for mode, name in TFLITE_INT8.items()
}


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
    max_memory_mb: float | None = None  # None: memory.MAX_MEMORY_MB per precision and batch
    memory: bool = True  # measure every file's memory and gate on it


@dataclass(frozen=True)
class ExportResult:
    out_dir: Path
    manifest: dict
    parity: dict[str, ParityResult]
    memory_failures: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        return self.manifest["status"] == "passed"


def check_output_dir(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not overwrite:
        raise ExportError(f"output folder {out_dir} already exists; pass --overwrite to replace it (it is kept if the new export fails)")
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportError(f"output path {out_dir} exists and is not a folder")


def tensor_budget(opts: ExportOptions) -> float | None:
    """The --max-tensor-mb in effect: None when attention is unbounded."""
    if opts.max_tensor_mb is None:
        return DEFAULT_TENSOR_MB * opts.batch
    return None if math.isinf(opts.max_tensor_mb) else opts.max_tensor_mb


def build_artifacts(model, spec: DenoiserSpec, stage: Path, opts: ExportOptions, quant: dict | None = None) -> dict[str, Path]:
    """Write every file into stage; quant (if given) receives each int8 file's details."""
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
    for path in files.values():
        if path.suffix == ".tflite":
            schedule_depth_first(path)  # chunk after chunk, so the chunks' memory is reused
    return files


def op_types(path: Path) -> list[str]:
    return onnx_op_types(path) if path.suffix == ".onnx" else check_builtin_only(path)


def compression_info(loaded: LoadedModel, pruned, spec: DenoiserSpec, opts: ExportOptions, cases, ref, quant: dict) -> dict:
    info: dict = {"prune": {"method": "l1_unstructured", "amount": opts.prune}, "fp16": opts.fp16 and opts.tflite,
                  "int8": quant}  # fmt: skip
    if opts.prune == 0:
        return info
    unpruned = TorchBackend(loaded.model, "cpu")(cases.x, cases.t, cases.y)
    per_case = [psnr(unpruned[i], ref[i]) for i in range(len(cases))]
    info["prune"].update(sparsity(pruned))
    info["prune"]["pruned_vs_unpruned_psnr_db"] = {"min": round(min(per_case), 2), "mean": round(float(np.mean(per_case)), 2)}
    with tempfile.TemporaryDirectory(prefix="mobilegen-unpruned-") as tmp:
        plain = build_artifacts(loaded.model, spec, Path(tmp), dataclasses.replace(opts, int8=()))
        info["prune"]["unpruned_gzip_bytes"] = {name: mf.gzip_size(p) for name, p in plain.items()}
    return info


def run_parity(files: dict[str, Path], spec: DenoiserSpec, cases, ref: np.ndarray, threads: int | None) -> dict[str, ParityResult]:
    results = {}
    for name, path in files.items():
        out = open_artifact(path, spec, threads)(cases.x, cases.t, cases.y)
        results[name] = check_parity(name, ref, out, cases, spec.tolerances[PRECISION[name]])
        log.info(results[name].summary())
    return results


def export_artifacts(loaded: LoadedModel, opts: ExportOptions) -> ExportResult:
    check_output_dir(opts.out_dir, opts.overwrite)
    spec = DenoiserSpec(batch=opts.batch, layout=opts.layout)
    schedule = linear_schedule()
    check_tensor_budget(loaded.model, opts)  # before anything is written
    opts.out_dir.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{opts.out_dir.name}.staging-", dir=opts.out_dir.parent))
    try:
        model = prune_l1(loaded.model, opts.prune)
        quant: dict = {}
        files = build_artifacts(model, spec, stage, opts, quant)
        cases = forward_process_cases(schedule)
        ref = TorchBackend(model, "cpu")(cases.x, cases.t, cases.y)  # the (pruned) fp32 reference
        parity = run_parity(files, spec, cases, ref, opts.threads)
        entries = {name: mf.file_entry(path, PRECISION[name], op_types(path)) for name, path in files.items()}
        memory_failures = gate_memory(files, entries, spec, opts) if opts.memory else []
        passed = all(r.passed for r in parity.values()) and not memory_failures
        status = "passed" if passed else "failed"
        (stage / mf.LABELS).write_text("\n".join(CIFAR10_LABELS) + "\n")
        entries[mf.LABELS] = mf.file_entry(stage / mf.LABELS, "text", [])
        manifest = mf.build_manifest(
            loaded, spec, schedule, entries,
            compression_info(loaded, model, spec, opts, cases, ref, quant),
            {name: r.to_dict() for name, r in parity.items()}, status,
        )  # fmt: skip
        if opts.bench and status == "passed":
            from mobilegen.exporter.benchmark import bench_directory_files

            manifest["latency"] = bench_directory_files(model, files, spec, opts.threads)
        mf.write_json(stage / mf.MANIFEST, manifest)
        write_report(stage, manifest)
        target = opts.out_dir if status == "passed" else opts.out_dir.with_name(opts.out_dir.name + ".failed")
        publish(stage, target, overwrite=opts.overwrite or status != "passed")
        return ExportResult(target, manifest, parity, tuple(memory_failures))
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def check_tensor_budget(model, opts: ExportOptions) -> None:
    from mobilegen.models.budget import plan_attention

    if (budget := tensor_budget(opts)) is not None:
        plan_attention(model, opts.batch, budget)  # ValueError naming the smallest feasible budget


def gate_memory(files: dict[str, Path], entries: dict[str, dict], spec: DenoiserSpec, opts: ExportOptions) -> list[str]:
    """Measure every file in a fresh process (exporter/memory.py) into its manifest entry; the failures."""
    from mobilegen.backends import default_threads
    from mobilegen.exporter.memory import check_memory, contract_feeds, measure_file, memory_limit

    failures, budget = [], tensor_budget(opts)
    for name, path in files.items():
        measured = measure_file(path, contract_feeds(spec), opts.threads or default_threads())
        limit = memory_limit(PRECISION[name], spec.batch, opts.max_memory_mb)
        problems = check_memory(name, measured, limit)
        graph = measured.get("graph")
        if graph and budget is not None and graph["largest_tensor_bytes"] > budget * 2**20:
            problems.append(f"{name}: tensor {graph['largest_tensor']!r} {graph['largest_tensor_shape']} is "
                            f"{graph['largest_tensor_mb']:.2f} MB, over --max-tensor-mb {budget:g}")  # fmt: skip
        entries[name]["memory"] = measured | {"limit_mb": limit, "max_tensor_mb": budget, "passed": not problems}
        failures += problems
        log.info("%s: peak RSS %.1f MB (limit %g)", name, measured["peak_rss_mb"], limit)
    return failures


def publish(stage: Path, target: Path, overwrite: bool) -> None:
    """Move the staging folder into place; an existing folder is swapped out only now."""
    from mobilegen.checkpoint import _umask

    os.chmod(stage, 0o777 & ~_umask())  # mkdtemp makes 0700
    for path in stage.iterdir():
        os.chmod(path, 0o666 & ~_umask())
    if target.exists():
        check_output_dir(target, overwrite)
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.rename(target, old)
        os.rename(stage, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(stage, target)
