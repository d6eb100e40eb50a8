"""Checks on a published export folder: the source checkpoint, each file inside the folder,
of its slot's kind, unchanged (sha256) and loadable; the same sampling run on every file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from mobilegen.compress.unstructured import prune_l1
from mobilegen.contract import manifest as mf
from mobilegen.contract.spec import PRECISION
from mobilegen.diffusion import SamplerConfig
from mobilegen.diffusion.schedule import schedule_from_alphas_cumprod
from mobilegen.errors import ManifestError, MobileGenError
from mobilegen.files import sha256_file
from mobilegen.models.checkpoint import SUFFIXES, LoadedModel, default_model, load_checkpoint
from mobilegen.runtime.backends import TorchBackend, open_artifact
from mobilegen.verify.trajectory import TRAJECTORY_GATES, Run, TrajectoryResult, compare_runs, record

REFERENCE = "pytorch fp32"


def find_checkpoint(manifest: dict, checkpoint: Path | None = None, directory: Path | None = None) -> Path:
    """The checkpoint an export was made from, identified by the manifest's sha256: --checkpoint
    (refused if its sha256 differs), else the stored path, else a file beside the export folder."""
    stored, want = Path(manifest["source"]["checkpoint"]), manifest["source"]["sha256"]
    made_from = "the untrained default model (no checkpoint)" if want is None else f"a checkpoint with sha256 {want}"
    if checkpoint is not None:
        if not checkpoint.is_file():
            raise MobileGenError(f"--checkpoint {checkpoint}: no such file")
        got = sha256_file(checkpoint)
        if got != want:
            raise MobileGenError(
                f"--checkpoint {checkpoint} has sha256 {got}, but the export was made from {made_from}; "
                "give the checkpoint it was exported from"
            )
        return checkpoint
    candidates = [stored]
    if directory is not None:  # the export folder and its checkpoint moved together
        parent = Path(directory).resolve().parent
        candidates += [parent / stored.name] + sorted(p for p in parent.iterdir() if p.suffix in SUFFIXES)
    for path in dict.fromkeys(candidates):
        if path.is_file() and sha256_file(path) == want:
            return path
    where = f" nor beside {directory}" if directory is not None else ""
    raise MobileGenError(f"the source checkpoint ({made_from}) is not at {stored}{where}; pass --checkpoint PATH")


def reference_model(manifest: dict, checkpoint: Path | None = None, directory: Path | None = None) -> LoadedModel:
    """Rebuild the PyTorch model the export was made from (pruned the same way)."""
    if checkpoint is None and manifest["source"]["sha256"] is None:
        loaded = default_model()
    else:
        loaded = load_checkpoint(find_checkpoint(manifest, checkpoint, directory), manifest["model"]["arch"])
    loaded.model = prune_l1(loaded.model, manifest["compression"]["prune"]["amount"])
    return loaded


def inside(directory: Path, name: str) -> Path:
    """directory/name, refused unless it stays in the folder (a symlink may not lead out)."""
    path = directory / name
    if path.resolve().parent != directory.resolve():
        raise ManifestError(f"{directory}: manifest file {name!r} resolves to {path.resolve()}, outside the export folder")
    return path


def slot_problem(path: Path, precision: str) -> str | None:
    """Whether the file is what its slot says: an ONNX model, or a TFLite file of that precision."""
    if precision == "text":
        return None
    if precision == "onnx":
        import onnx

        try:
            onnx.checker.check_model(onnx.load(str(path)))
        except Exception as exc:  # onnx raises DecodeError, ValidationError, ...
            return f"is not a valid ONNX model ({type(exc).__name__})"
        return None
    from mobilegen.runtime.tflite_file import tflite_op_types, tflite_tensor_types

    if path.read_bytes()[4:8] != b"TFL3":
        return "is not a TFLite flatbuffer (no TFL3 identifier)"
    types, ops = tflite_tensor_types(path), tflite_op_types(path)
    half, dequantize, int8 = types.get("FLOAT16", 0) > 0, "DEQUANTIZE" in ops, types.get("INT8", 0) > 0
    expected = {"float32": (False, False, False), "float16": (True, True, False)}.get(precision)
    if expected is None:  # int8_dynamic / int8_full
        return None if int8 and not half else f"holds no int8 weights (tensor types {sorted(types)}): not an {precision} file"
    if (half, dequantize, int8) != expected:
        return (
            f"is not a {precision} file: float16 tensors {types.get('FLOAT16', 0)}, DEQUANTIZE {'yes' if dequantize else 'no'}, "
            f"int8 tensors {types.get('INT8', 0)}"
        )
    return None


def check_hashes(directory: Path, manifest: dict) -> list[str]:
    """Each listed file that is missing or changed (sha256); a file outside the folder, or one
    that is not of its slot's kind although its hash matches, is a malformed export (raised)."""
    problems = []
    for name, entry in manifest["files"].items():
        path = inside(directory, name)
        if not path.is_file():
            problems.append(f"{name}: missing")
        elif sha256_file(path) != entry["sha256"]:
            problems.append(f"{name}: sha256 mismatch (file changed since export)")
        elif problem := slot_problem(path, entry["precision"]):
            raise ManifestError(f"{directory}: files[{name!r}]: the file {problem}; the manifest does not describe this folder")
    return problems


def artifacts(directory: Path, manifest: dict) -> dict[str, Path]:
    return {n: directory / n for n in manifest["files"] if n in PRECISION}


def check_loadable(directory: Path, manifest: dict, threads: int | None = None) -> None:
    """Open every file in its runtime (ManifestError for one that does not load or whose
    inputs/outputs are not the contract): seconds, before minutes of reference work."""
    spec = mf.spec_from_manifest(manifest)
    for path in artifacts(directory, manifest).values():
        open_artifact(path, spec, threads)


@dataclass
class Trajectories:
    config: SamplerConfig
    labels: list[int]
    label_names: list[str]
    runs: dict[str, Run]  # REFERENCE first, then each artifact
    results: dict[str, TrajectoryResult]
    denoisers: dict[str, Callable]  # the opened backends, same keys as runs


def run_trajectories(
    directory: Path, manifest: dict, model, labels: list[int], config: SamplerConfig, threads: int | None = None
) -> Trajectories:
    """The same sampling run (same noise) on PyTorch fp32 and every artifact, compared."""
    spec = mf.spec_from_manifest(manifest)
    schedule = schedule_from_alphas_cumprod(manifest["schedule"]["alphas_cumprod"])
    names = [manifest["labels"][y] if y >= 0 else "unconditional" for y in labels]
    denoisers = {REFERENCE: TorchBackend(model, "cpu").torch_denoise}
    denoisers |= {name: open_artifact(path, spec, threads).torch_denoise for name, path in artifacts(directory, manifest).items()}
    runs = {name: record(denoise, labels, schedule, config) for name, denoise in denoisers.items()}
    results = {
        name: compare_runs(name, runs[REFERENCE], runs[name], names, TRAJECTORY_GATES[PRECISION[name]])
        for name in runs
        if name != REFERENCE
    }
    return Trajectories(config, labels, names, runs, results, denoisers)


def intact_folder(directory: Path, threads: int | None = None) -> dict:
    """The manifest of a folder whose files are all present, unchanged and loadable (else
    MobileGenError): the cheap checks, before any reference work."""
    manifest = mf.read_manifest(directory)
    problems = check_hashes(directory, manifest)
    if problems:
        raise MobileGenError(f"{directory}: " + "; ".join(problems))
    check_loadable(directory, manifest, threads)
    return manifest
