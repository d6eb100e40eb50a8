"""Recheck a published export folder: hashes, then per-step parity against PyTorch."""

from __future__ import annotations

from pathlib import Path

from mobilegen.backends import TorchBackend
from mobilegen.calibration import forward_process_cases
from mobilegen.checkpoint import LoadedModel, default_model, load_checkpoint, sha256_file
from mobilegen.diffusion import linear_schedule
from mobilegen.errors import MobileGenError
from mobilegen.exporter import manifest as mf
from mobilegen.exporter.pipeline import PRECISION, run_parity
from mobilegen.exporter.prune import prune_l1


def reference_model(manifest: dict, checkpoint: Path | None = None) -> LoadedModel:
    """Rebuild the PyTorch model the export was made from (pruned the same way)."""
    source = manifest["source"]
    if checkpoint is None and source["sha256"] is None:
        loaded = default_model()
    else:
        path = checkpoint or Path(source["checkpoint"])
        if not path.is_file():
            raise MobileGenError(f"the source checkpoint {path} is not here; pass --checkpoint PATH")
        loaded = load_checkpoint(path, manifest["model"]["arch"])
        if loaded.sha256 != source["sha256"]:
            raise MobileGenError(f"{path} has sha256 {loaded.sha256}, but the export was made from {source['sha256']}")
    loaded.model = prune_l1(loaded.model, manifest["compression"]["prune"]["amount"])
    return loaded


def check_hashes(directory: Path, manifest: dict) -> list[str]:
    problems = []
    for name, entry in manifest["files"].items():
        path = directory / name
        if not path.is_file():
            problems.append(f"{name}: missing")
        elif sha256_file(path) != entry["sha256"]:
            problems.append(f"{name}: sha256 mismatch (file changed since export)")
    return problems


def verify_directory(directory: Path, threads: int | None = None, checkpoint: Path | None = None) -> dict:
    manifest = mf.read_manifest(directory)
    problems = check_hashes(directory, manifest)
    if manifest.get("status") != "passed":
        problems.append(f"manifest status is {manifest.get('status')!r}, not 'passed'")
    parity = {}
    artifacts = {n: directory / n for n in manifest["files"] if n in PRECISION and (directory / n).is_file()}
    if not problems:
        spec = mf.spec_from_manifest(manifest)
        model = reference_model(manifest, checkpoint).model
        cases = forward_process_cases(linear_schedule())
        ref = TorchBackend(model, "cpu")(cases.x, cases.t, cases.y)
        parity = run_parity(artifacts, spec, cases, ref, threads)
        problems += [f"{name}: {f}" for name, r in parity.items() for f in r.failures[:3]]
    lines = [f"verify {directory}: {'PASS' if not problems else 'FAIL'}"]
    lines += [f"  sha256 ok: {name}" for name in manifest["files"] if not any(p.startswith(name + ":") for p in problems)]
    lines += [f"  {r.summary()}" for r in parity.values()]
    lines += [f"  problem: {p}" for p in problems]
    return {
        "passed": not problems,
        "directory": str(directory),
        "problems": problems,
        "parity": {name: r.to_dict() for name, r in parity.items()},
        "summary": "\n".join(lines),
    }


def bench_directory(directory: Path, checkpoint: Path | None, threads: int | None, repeats: int) -> dict:
    from mobilegen.exporter.benchmark import bench_directory_files
    from mobilegen.exporter.report import write_report

    manifest = mf.read_manifest(directory)
    problems = check_hashes(directory, manifest)
    if problems:
        raise MobileGenError(f"{directory}: " + "; ".join(problems))
    model = reference_model(manifest, checkpoint).model
    files = {n: directory / n for n in manifest["files"] if n in PRECISION}
    manifest["latency"] = bench_directory_files(model, files, mf.spec_from_manifest(manifest), threads, repeats=repeats)
    mf.write_json(directory / mf.MANIFEST, manifest)
    write_report(directory, manifest)
    return manifest["latency"]
