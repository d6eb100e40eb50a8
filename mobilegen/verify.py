"""Recheck a published export folder: hashes, per-step parity and trajectory parity."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from mobilegen.backends import TorchBackend, open_artifact
from mobilegen.calibration import forward_process_cases
from mobilegen.checkpoint import SUFFIXES, LoadedModel, default_model, load_checkpoint, sha256_file
from mobilegen.diffusion import SamplerConfig
from mobilegen.diffusion.schedule import schedule_from_alphas_cumprod
from mobilegen.errors import MobileGenError
from mobilegen.exporter import manifest as mf
from mobilegen.exporter.pipeline import PRECISION, run_parity
from mobilegen.exporter.prune import prune_l1
from mobilegen.trajectory import TRAJECTORY_GATES, Run, TrajectoryResult, compare_runs, record

REFERENCE = "pytorch fp32"
DEFAULT_CLASSES = (3, 8)  # cat, ship: a CI-sized trajectory check


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
            raise MobileGenError(f"--checkpoint {checkpoint} has sha256 {got}, but the export was made from {made_from}; "
                                 "give the checkpoint it was exported from")  # fmt: skip
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


def check_hashes(directory: Path, manifest: dict) -> list[str]:
    problems = []
    for name, entry in manifest["files"].items():
        path = directory / name
        if not path.is_file():
            problems.append(f"{name}: missing")
        elif sha256_file(path) != entry["sha256"]:
            problems.append(f"{name}: sha256 mismatch (file changed since export)")
    return problems


def artifacts(directory: Path, manifest: dict) -> dict[str, Path]:
    return {n: directory / n for n in manifest["files"] if n in PRECISION}


@dataclass
class Trajectories:
    config: SamplerConfig
    labels: list[int]
    label_names: list[str]
    runs: dict[str, Run]  # REFERENCE first, then each artifact
    results: dict[str, TrajectoryResult]
    denoisers: dict[str, Callable]  # the opened backends, same keys as runs


def run_trajectories(directory: Path, manifest: dict, model, labels: list[int], config: SamplerConfig,
                     threads: int | None = None) -> Trajectories:  # fmt: skip
    """The same sampling run (same noise) on PyTorch fp32 and every artifact, compared."""
    spec = mf.spec_from_manifest(manifest)
    schedule = schedule_from_alphas_cumprod(manifest["schedule"]["alphas_cumprod"])
    names = [manifest["labels"][y] if y >= 0 else "unconditional" for y in labels]
    denoisers = {REFERENCE: TorchBackend(model, "cpu").torch_denoise}
    denoisers |= {name: open_artifact(path, spec, threads).torch_denoise for name, path in artifacts(directory, manifest).items()}
    runs = {name: record(denoise, labels, schedule, config) for name, denoise in denoisers.items()}
    results = {
        name: compare_runs(name, runs[REFERENCE], runs[name], names, TRAJECTORY_GATES[PRECISION[name]])
        for name in runs if name != REFERENCE
    }
    return Trajectories(config, labels, names, runs, results, denoisers)


def verify_directory(directory: Path, threads: int | None = None, checkpoint: Path | None = None,
                     classes: tuple[int, ...] = DEFAULT_CLASSES, config: SamplerConfig = SamplerConfig()) -> dict:  # fmt: skip
    manifest = mf.read_manifest(directory)
    problems = check_hashes(directory, manifest)
    intact = not problems  # a failed export is still checked: it shows how far off it is
    if manifest.get("status") != "passed":
        problems.append(f"manifest status is {manifest.get('status')!r}, not 'passed'")
    parity, trajectories = {}, None
    if intact:
        spec = mf.spec_from_manifest(manifest)
        model = reference_model(manifest, checkpoint, directory).model
        cases = forward_process_cases(schedule_from_alphas_cumprod(manifest["schedule"]["alphas_cumprod"]))
        ref = TorchBackend(model, "cpu")(cases.x, cases.t, cases.y)
        parity = run_parity(artifacts(directory, manifest), spec, cases, ref, threads)
        problems += [f"{name}: {f}" for name, r in parity.items() for f in r.failures[:3]]
        if classes:
            trajectories = run_trajectories(directory, manifest, model, list(classes), config, threads)
            problems += [f"{name}: {f}" for name, r in trajectories.results.items() for f in r.failures]
    lines = [f"verify {directory}: {'PASS' if not problems else 'FAIL'}"]
    lines += [f"  sha256 ok: {name}" for name in manifest["files"] if not any(p.startswith(name + ":") for p in problems)]
    lines += [f"  {r.summary()}" for r in parity.values()]
    if trajectories:
        cfg = trajectories.config
        lines.append(f"  trajectory: {cfg.sampler} {len(trajectories.runs[REFERENCE].timesteps)} steps, guidance {cfg.guidance:g}, "
                     f"seed {cfg.seed}, classes {', '.join(trajectories.label_names)}")  # fmt: skip
        lines += [f"  {r.summary()}" for r in trajectories.results.values()]
    lines += [f"  problem: {p}" for p in problems]
    return {
        "passed": not problems,
        "directory": str(directory),
        "problems": problems,
        "parity": {name: r.to_dict() for name, r in parity.items()},
        "trajectory": {name: r.to_dict() for name, r in trajectories.results.items()} if trajectories else {},
        "summary": "\n".join(lines),
    }


def bench_directory(directory: Path, checkpoint: Path | None, threads: int | None, repeats: int) -> dict:
    from mobilegen.exporter.benchmark import bench_directory_files
    from mobilegen.exporter.report import write_report

    manifest = mf.read_manifest(directory)
    problems = check_hashes(directory, manifest)
    if problems:
        raise MobileGenError(f"{directory}: " + "; ".join(problems))
    model = reference_model(manifest, checkpoint, directory).model
    manifest["latency"] = bench_directory_files(model, artifacts(directory, manifest), mf.spec_from_manifest(manifest), threads, repeats=repeats)
    mf.write_json(directory / mf.MANIFEST, manifest)
    write_report(directory, manifest)
    return manifest["latency"]
