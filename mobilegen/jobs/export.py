"""The export job (`mobilegen-export onnx` and `tflite`), one small stage after another:

load -> prune -> ONNX -> TFLite fp32 (+ fp16, int8) -> parity of every artifact -> latency
-> manifest + report -> publish.

Everything is built in a hidden staging folder beside the output and moved into
place only when every gate passed, so an earlier good export is never replaced by a
bad or half-written one. A failed export lands in ``<out>.failed/`` with
``"status": "failed"`` in its manifest, for inspection, and ``GateError`` carries every
gate's result to the CLI.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mobilegen.compress.unstructured import prune_l1, sparsity, weights_gzip_size
from mobilegen.contract import defaults
from mobilegen.contract import manifest as mf
from mobilegen.contract.gates import GateResult, failed
from mobilegen.contract.labels import CIFAR10_LABELS
from mobilegen.contract.spec import PRECISION, DenoiserSpec
from mobilegen.diffusion import linear_schedule
from mobilegen.diffusion.cases import forward_process_cases
from mobilegen.errors import GateError, InvalidInput
from mobilegen.export.build import Artifacts, BuildOptions, build, tensor_budget
from mobilegen.export.tflite import check_converter
from mobilegen.files import check_output_folder, loads_strict, make_staging, publish_folder
from mobilegen.models.checkpoint import LoadedModel
from mobilegen.runtime.coverage import xnnpack_coverage
from mobilegen.verify.parity import PSNR_IDENTICAL, float32_reference, float64_outputs, psnr, run_parity
from mobilegen.verify.report_md import write_report

log = logging.getLogger(__name__)

OWN_FILES = frozenset(
    {
        *PRECISION,
        defaults.LABELS_FILE,
        defaults.MANIFEST_FILE,
        defaults.REPORT_MD,
        defaults.REPORT_HTML,
        defaults.BENCH_JSON,
        defaults.TRAJECTORY_JSON,
        defaults.PROFILE_JSON,
        defaults.PROFILE_MD,
        defaults.TARGETS_PNG,
    }
)
TEMP_FILE = re.compile(r"^\.(?P<name>.+)\.[a-z0-9_]+\.tmp$")  # atomic_write's, if a writer was killed
EXPORT = "a MobileGen export"


@dataclass(frozen=True)
class ExportOptions:
    """The export job's settings; `build` gets only its own part."""

    out_dir: Path
    build: BuildOptions = field(default_factory=BuildOptions)
    batch: int = defaults.BATCH
    layout: str = defaults.LAYOUT["tflite"]
    prune: float = defaults.PRUNE
    overwrite: bool = False
    bench: bool = True
    threads: int | None = None
    max_tensor_mb: float | None = None  # None: defaults.TENSOR_MB x batch; inf: attention unbounded
    max_memory_mb: float | None = None  # None: memory.memory_limit (student_v2 only)
    memory: bool = True  # measure every file's memory and gate on it
    targets: tuple[str, ...] = ()  # phone paths to check every TFLite file on (verify/targets.py)


@dataclass(frozen=True)
class ExportResult:
    out_dir: Path
    manifest: dict
    gates: tuple[GateResult, ...] = field(default=())

    @property
    def passed(self) -> bool:
        return not failed(self.gates)


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


def compression_info(loaded: LoadedModel, pruned, opts: ExportOptions, built: Artifacts, cases, ref) -> dict:
    fp16 = opts.build.fp16 and opts.build.tflite
    info: dict = {"prune": {"method": "l1_unstructured", "amount": opts.prune}, "fp16": fp16, "int8": built.int8}
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
        for dtype in (("float32", "float16") if fp16 else ("float32",))
    }
    return info


def build_options(opts: ExportOptions) -> BuildOptions:
    """The build's options with the tensor budget in effect for this batch."""
    return BuildOptions(
        opts.build.tflite,
        opts.build.fp16,
        opts.build.int8,
        opts.build.calibration_size,
        tensor_budget(opts.max_tensor_mb, opts.batch),
        opts.build.attention_split,
    )


def export_artifacts(loaded: LoadedModel, opts: ExportOptions) -> ExportResult:
    """Build, gate, publish. Returns the published result, or raises GateError (the failed
    export kept in <out>.failed/) with every gate's result."""
    check_output_dir(opts.out_dir, opts.overwrite, loaded.path)
    if opts.build.tflite:
        check_converter()
    if opts.targets:
        from mobilegen.verify.targets import check_runtimes

        if not opts.build.tflite:
            raise InvalidInput("--targets checks TFLite files; the onnx command writes none")
        check_runtimes(opts.targets)
    spec = DenoiserSpec(batch=opts.batch, layout=opts.layout)
    check_tensor_budget(loaded.model, opts)  # before anything is written
    stage = make_staging(opts.out_dir)  # also removes what killed exports left beside it
    try:
        manifest, gates = build_and_gate(loaded, opts, spec, stage)
        passed = not failed(gates)
        target = opts.out_dir if passed else failed_dir(opts.out_dir)
        # Checked again under the lock: another run may have published there meanwhile.
        replace = opts.overwrite or not passed
        publish_folder(stage, target, lambda: check_output_folder(target, replace, [loaded.path], EXPORT, export_folder_problem))
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    if not passed:
        kinds = ", ".join(dict.fromkeys(r.gate for r in failed(gates)))
        raise GateError(f"a {kinds} gate failed; nothing was published to {opts.out_dir}. Failed export kept in {target}", gates)
    return ExportResult(target, manifest, gates)


def build_and_gate(
    loaded: LoadedModel, opts: ExportOptions, spec: DenoiserSpec, stage: Path
) -> tuple[dict, tuple[GateResult, ...]]:
    """Every file, its gates and the manifest (with report.md), written into stage."""
    schedule = linear_schedule()
    model = prune_l1(loaded.model, opts.prune)
    built = build(model, spec, stage, build_options(opts), loaded.sha256)
    cases = forward_process_cases(schedule)
    ref = float32_reference(model, cases)  # the (pruned) fp32 reference
    parity = run_parity(built.files, spec, cases, ref, opts.threads, float64_outputs(model, cases))
    entries = {name: mf.file_entry(path, PRECISION[name], built.op_types[name]) for name, path in built.files.items()}
    for name, path in built.files.items():
        if name.endswith(".tflite"):  # which ops XNNPACK takes on x86 (the phone paths' coverage: `targets`)
            entries[name]["coverage"] = {"xnnpack_x86_64": xnnpack_coverage(path, "x86_64").to_dict()}
    gates = tuple(r.as_gate() for r in parity.values())
    if opts.memory:
        gates += gate_memory(built.files, entries, spec, opts, model.arch)
    targets = gate_targets(model, built.files, spec, schedule, opts, stage) if opts.targets else None
    gates += targets.gates if targets else ()
    status = "failed" if failed(gates) else "passed"
    (stage / mf.LABELS).write_text("\n".join(CIFAR10_LABELS) + "\n")
    entries[mf.LABELS] = mf.file_entry(stage / mf.LABELS, "text", [])
    manifest = mf.build_manifest(
        {"arch": loaded.arch, "config": loaded.model.config.to_dict()},
        {"checkpoint": loaded.source, "sha256": loaded.sha256, "weights": loaded.detail},
        spec,
        schedule,
        entries,
        compression_info(loaded, model, opts, built, cases, ref),
        {name: r.to_dict() for name, r in parity.items()},
        status,
    )
    if targets:
        manifest["targets"] = targets.section
    if opts.bench and status == "passed":
        from mobilegen.verify.bench import bench_directory_files

        manifest["latency"] = bench_directory_files(model, built.files, spec, opts.threads)
    mf.write_json(stage / mf.MANIFEST, manifest)
    write_report(stage, manifest)
    return manifest, gates


def gate_targets(model, files: dict[str, Path], spec: DenoiserSpec, schedule, opts: ExportOptions, stage: Path):
    """Every TFLite file on the phone paths (verify/targets.py); their images into targets.png."""
    from PIL import Image

    from mobilegen.verify.targets import check_targets, image_grid

    checked = check_targets(model, files, spec, schedule, opts.targets, opts.threads)
    Image.fromarray(image_grid(checked.images)).save(stage / defaults.TARGETS_PNG)
    checked.section["images"] = {"file": defaults.TARGETS_PNG, "columns": list(checked.images)}
    return checked


def check_tensor_budget(model, opts: ExportOptions) -> None:
    from mobilegen.models.budget import plan_attention

    if (budget := tensor_budget(opts.max_tensor_mb, opts.batch)) is not None:
        plan_attention(model, opts.batch, budget, opts.build.attention_split)  # names the smallest feasible budget


def gate_memory(
    files: dict[str, Path], entries: dict[str, dict], spec: DenoiserSpec, opts: ExportOptions, arch: str
) -> tuple[GateResult, ...]:
    """Measure every file in a fresh process (verify/memory.py) and record it in its manifest entry."""
    from mobilegen.runtime.backends import default_threads
    from mobilegen.verify.memory import contract_feeds, measure_file, memory_gate, memory_limit

    results, budget = [], tensor_budget(opts.max_tensor_mb, opts.batch)
    for name, path in files.items():
        measured = measure_file(path, contract_feeds(spec), opts.threads or default_threads())
        result = memory_gate(name, measured, memory_limit(arch, PRECISION[name], spec.batch, opts.max_memory_mb), budget)
        entries[name]["memory"] = measured | {
            "limit_mb": result.figures["limit_mb"],
            "max_tensor_mb": budget,
            "attention_split": opts.build.attention_split if budget is not None else None,
            "passed": result.passed,
        }
        results.append(result)
        log.info("%s", result.summary())
    return tuple(results)
