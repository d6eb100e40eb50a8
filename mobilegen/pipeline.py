"""The export pipeline, one small stage after another:

load -> prune -> ONNX -> TFLite fp32 (+ fp16, int8) -> parity of every artifact -> latency
-> manifest + report -> publish.

Everything is built in a hidden staging folder beside the output and moved into
place only when every gate passed, so an earlier good export is never replaced by a
bad or half-written one. A failed export lands in ``<out>.failed/`` with
``"status": "failed"`` in its manifest, for inspection.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mobilegen.compress.unstructured import prune_l1, sparsity, weights_gzip_size
from mobilegen.contract import manifest as mf
from mobilegen.contract.labels import CIFAR10_LABELS
from mobilegen.contract.spec import PRECISION, DenoiserSpec
from mobilegen.diffusion import linear_schedule
from mobilegen.diffusion.cases import forward_process_cases
from mobilegen.export.build import ExportOptions, build_artifacts, op_types, tensor_budget
from mobilegen.export.tflite import check_converter
from mobilegen.files import check_output_folder, loads_strict, make_staging, publish_folder
from mobilegen.models.checkpoint import LoadedModel
from mobilegen.verify.parity import PSNR_IDENTICAL, ParityResult, float32_reference, float64_outputs, psnr, run_parity
from mobilegen.verify.report import REPORT_HTML, REPORT_MD, write_report

log = logging.getLogger(__name__)

OWN_FILES = frozenset({*PRECISION, mf.LABELS, mf.MANIFEST, REPORT_MD, REPORT_HTML})
TEMP_FILE = re.compile(r"^\.(?P<name>.+)\.[a-z0-9_]+\.tmp$")  # atomic_write's, if a writer was killed
EXPORT = "a MobileGen export"


@dataclass(frozen=True)
class ExportResult:
    out_dir: Path
    manifest: dict
    parity: dict[str, ParityResult]
    memory_failures: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        return self.manifest["status"] == "passed"


def failed_dir(out_dir: Path) -> Path:
    out_dir = Path(os.path.abspath(out_dir))  # "-o ." has no name to add ".failed" to
    return out_dir.with_name(out_dir.name + ".failed")


def export_folder_problem(folder: Path) -> str | None:
    """None when folder is an export of ours (or its .failed twin): a manifest.json with our
    schema_version, beside nothing but files an export writes; else what is wrong."""
    try:
        manifest = loads_strict((folder / mf.MANIFEST).read_text())
    except FileNotFoundError:
        return f"no {mf.MANIFEST}"
    except (OSError, ValueError, RecursionError):
        return f"its {mf.MANIFEST} is not readable JSON with unique keys"
    if not isinstance(manifest, dict) or manifest.get("schema_version") != mf.SCHEMA_VERSION:
        return f"its {mf.MANIFEST} has no schema_version {mf.SCHEMA_VERSION}"

    def own(p: Path) -> bool:
        temp = TEMP_FILE.match(p.name)
        return p.is_file() and not p.is_symlink() and (p.name in OWN_FILES or bool(temp and temp["name"] in OWN_FILES))

    foreign = sorted(p.name for p in folder.iterdir() if not own(p))
    if foreign:
        more = f" (+{len(foreign) - 5} more)" if len(foreign) > 5 else ""
        return f"it also holds {', '.join(foreign[:5])}{more}, which no export writes"
    return None


def check_output_dir(out_dir: Path, overwrite: bool, checkpoint: Path | None = None) -> None:
    """Before any work: out_dir may be replaced only with overwrite and only if it is an export;
    <out>.failed, replaced by a failed export, must be one too; neither may hold the checkpoint."""
    check_output_folder(out_dir, overwrite, [checkpoint], EXPORT, export_folder_problem)
    check_output_folder(failed_dir(out_dir), True, [checkpoint], EXPORT, export_folder_problem)


def compression_info(loaded: LoadedModel, pruned, spec: DenoiserSpec, opts: ExportOptions, cases, ref, quant: dict) -> dict:
    info: dict = {"prune": {"method": "l1_unstructured", "amount": opts.prune}, "fp16": opts.fp16 and opts.tflite,
                  "int8": quant}  # fmt: skip
    if opts.prune == 0:
        return info
    unpruned = float32_reference(loaded.model, cases)
    per_case = [min(psnr(unpruned[i], ref[i]), PSNR_IDENTICAL) for i in range(len(cases))]
    info["prune"].update(sparsity(pruned))
    info["prune"]["pruned_vs_unpruned_psnr_db"] = {"min": round(min(per_case), 2), "mean": round(float(np.mean(per_case)), 2)}
    # What pruning buys is compressed size: the weights' gzip size, pruned against unpruned,
    # in each precision a file stores them (read from the networks; no second export).
    info["prune"]["weights_gzip_bytes"] = {
        dtype: {"pruned": weights_gzip_size(pruned, dtype), "unpruned": weights_gzip_size(loaded.model, dtype)}
        for dtype in (("float32", "float16") if opts.fp16 and opts.tflite else ("float32",))
    }
    return info


def export_artifacts(loaded: LoadedModel, opts: ExportOptions) -> ExportResult:
    check_output_dir(opts.out_dir, opts.overwrite, loaded.path)
    if opts.tflite:
        check_converter()
    spec = DenoiserSpec(batch=opts.batch, layout=opts.layout)
    schedule = linear_schedule()
    check_tensor_budget(loaded.model, opts)  # before anything is written
    stage = make_staging(opts.out_dir)  # also removes what killed exports left beside it
    try:
        model = prune_l1(loaded.model, opts.prune)
        quant: dict = {}
        files = build_artifacts(model, spec, stage, opts, quant, source_sha256=loaded.sha256)
        cases = forward_process_cases(schedule)
        ref = float32_reference(model, cases)  # the (pruned) fp32 reference
        parity = run_parity(files, spec, cases, ref, opts.threads, float64_outputs(model, cases))
        entries = {name: mf.file_entry(path, PRECISION[name], op_types(path)) for name, path in files.items()}
        memory_failures = gate_memory(files, entries, spec, opts, model.arch) if opts.memory else []
        passed = all(r.passed for r in parity.values()) and not memory_failures
        status = "passed" if passed else "failed"
        (stage / mf.LABELS).write_text("\n".join(CIFAR10_LABELS) + "\n")
        entries[mf.LABELS] = mf.file_entry(stage / mf.LABELS, "text", [])
        manifest = mf.build_manifest(
            {"arch": loaded.arch, "config": loaded.model.config.to_dict()},
            {"checkpoint": loaded.source, "sha256": loaded.sha256, "weights": loaded.detail}, spec, schedule, entries,
            compression_info(loaded, model, spec, opts, cases, ref, quant),
            {name: r.to_dict() for name, r in parity.items()}, status,
        )  # fmt: skip
        if opts.bench and status == "passed":
            from mobilegen.verify.bench import bench_directory_files

            manifest["latency"] = bench_directory_files(model, files, spec, opts.threads)
        mf.write_json(stage / mf.MANIFEST, manifest)
        write_report(stage, manifest)
        target = opts.out_dir if status == "passed" else failed_dir(opts.out_dir)
        # Checked again under the target's lock: another run may have published there meanwhile.
        replace = opts.overwrite or status != "passed"
        publish_folder(stage, target, lambda: check_output_folder(target, replace, [loaded.path], EXPORT, export_folder_problem))
        return ExportResult(target, manifest, parity, tuple(memory_failures))
    finally:
        shutil.rmtree(stage, ignore_errors=True)

def check_tensor_budget(model, opts: ExportOptions) -> None:
    from mobilegen.models.budget import plan_attention

    if (budget := tensor_budget(opts)) is not None:
        plan_attention(model, opts.batch, budget)  # ValueError naming the smallest feasible budget


def gate_memory(files: dict[str, Path], entries: dict[str, dict], spec: DenoiserSpec, opts: ExportOptions, arch: str) -> list[str]:
    """Measure every file in a fresh process (verify/memory.py) into its manifest entry; the failures."""
    from mobilegen.runtime.backends import default_threads
    from mobilegen.verify.memory import check_memory, contract_feeds, limit_text, measure_file, memory_limit

    failures, budget = [], tensor_budget(opts)
    for name, path in files.items():
        measured = measure_file(path, contract_feeds(spec), opts.threads or default_threads())
        limit = memory_limit(arch, PRECISION[name], spec.batch, opts.max_memory_mb)
        problems = check_memory(name, measured, limit)
        graph = measured.get("graph")
        if graph and budget is not None and graph["largest_tensor_bytes"] > budget * 2**20:
            problems.append(f"{name}: tensor {graph['largest_tensor']!r} {graph['largest_tensor_shape']} is "
                            f"{graph['largest_tensor_mb']:.2f} MB, over --max-tensor-mb {budget:g}")  # fmt: skip
        entries[name]["memory"] = measured | {"limit_mb": limit, "max_tensor_mb": budget, "passed": not problems}
        failures += problems
        log.info("%s: peak RSS %.1f MB (%s)", name, measured["peak_rss_mb"], limit_text(limit))
    return failures
