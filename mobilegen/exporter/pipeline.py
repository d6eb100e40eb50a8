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
from mobilegen.exporter.metadata import About, add_metadata
from mobilegen.exporter.onnx_export import export_onnx, onnx_op_types
from mobilegen.exporter.parity import ParityResult, check_parity, float64_outputs, psnr
from mobilegen.exporter.prune import prune_l1, sparsity
from mobilegen.exporter.quantize import quantize_tflite
from mobilegen.exporter.report import write_report
from mobilegen.exporter.spec import ONNX_FILE, PRECISION, TFLITE_FP16, TFLITE_FP32, TFLITE_INT8, DenoiserSpec, Layout
from mobilegen.exporter.tflite_export import check_builtin_only, convert_onnx_to_tflite, to_fp16_weights
from mobilegen.labels import CIFAR10_LABELS

log = logging.getLogger(__name__)



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


@dataclass(frozen=True)
class ExportResult:
    out_dir: Path
    manifest: dict
    parity: dict[str, ParityResult]

    @property
    def passed(self) -> bool:
        return self.manifest["status"] == "passed"


def check_output_dir(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not overwrite:
        raise ExportError(f"output folder {out_dir} already exists; pass --overwrite to replace it (it is kept if the new export fails)")
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportError(f"output path {out_dir} exists and is not a folder")


def build_artifacts(model, spec: DenoiserSpec, stage: Path, opts: ExportOptions, quant: dict | None = None, *,
                    source_sha256: str | None) -> dict[str, Path]:
    """Write every file into stage; quant (if given) receives each int8 file's details. Every
    .tflite file gets its metadata (with source_sha256, the checkpoint's) before anything
    measures or hashes it."""
    files = {ONNX_FILE: export_onnx(model, spec, stage / ONNX_FILE)}
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
            about = About(model.arch, PRECISION[name], source_sha256, linear_schedule().T, CIFAR10_LABELS)
            add_metadata(path, spec, about)
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
        plain = build_artifacts(loaded.model, spec, Path(tmp), dataclasses.replace(opts, int8=()),
                                source_sha256=loaded.sha256)
        info["prune"]["unpruned_gzip_bytes"] = {name: mf.gzip_size(p) for name, p in plain.items()}
    return info


def run_parity(files: dict[str, Path], spec: DenoiserSpec, cases, ref: np.ndarray, threads: int | None,
               truth: np.ndarray | None = None) -> dict[str, ParityResult]:  # fmt: skip
    """Every file against the fp32 reference ref (and, for the float32 gates, the float64 truth)."""
    results = {}
    for name, path in files.items():
        out = open_artifact(path, spec, threads)(cases.x, cases.t, cases.y)
        results[name] = check_parity(name, ref, out, cases, spec.tolerances[PRECISION[name]], truth)
        log.info(results[name].summary())
    return results


def export_artifacts(loaded: LoadedModel, opts: ExportOptions) -> ExportResult:
    check_output_dir(opts.out_dir, opts.overwrite)
    spec = DenoiserSpec(batch=opts.batch, layout=opts.layout)
    schedule = linear_schedule()
    opts.out_dir.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{opts.out_dir.name}.staging-", dir=opts.out_dir.parent))
    try:
        model = prune_l1(loaded.model, opts.prune)
        quant: dict = {}
        files = build_artifacts(model, spec, stage, opts, quant, source_sha256=loaded.sha256)
        cases = forward_process_cases(schedule)
        ref = TorchBackend(model, "cpu")(cases.x, cases.t, cases.y)  # the (pruned) fp32 reference
        parity = run_parity(files, spec, cases, ref, opts.threads, float64_outputs(model, cases))
        status = "passed" if all(r.passed for r in parity.values()) else "failed"
        entries = {name: mf.file_entry(path, PRECISION[name], op_types(path)) for name, path in files.items()}
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
        return ExportResult(target, manifest, parity)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


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
