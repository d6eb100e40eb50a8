"""The verify job (`mobilegen-export verify DIR`): recheck a published export folder, read
only. Every sha256, each file loads, then per-step parity against float64, each file's
memory in a fresh process, and the trajectory check; one result with every problem."""

from __future__ import annotations

from pathlib import Path

from mobilegen.contract import defaults
from mobilegen.contract import manifest as mf
from mobilegen.contract.gates import GateResult
from mobilegen.contract.labels import parse_label
from mobilegen.diffusion import SamplerConfig
from mobilegen.diffusion.cases import forward_process_cases
from mobilegen.diffusion.schedule import schedule_from_alphas_cumprod
from mobilegen.errors import NonFiniteError
from mobilegen.verify.folder import (
    REFERENCE,
    Trajectories,
    artifacts,
    check_hashes,
    check_loadable,
    reference_model,
    run_trajectories,
)
from mobilegen.verify.parity import float32_reference, float64_outputs, run_parity
from mobilegen.verify.targets import check_runtimes, check_targets

DEFAULT_CLASSES = tuple(parse_label(c) for c in defaults.CLASSES.split(","))


def verify_directory(
    directory: Path,
    threads: int | None = None,
    checkpoint: Path | None = None,
    classes: tuple[int, ...] = DEFAULT_CLASSES,
    config: SamplerConfig = SamplerConfig(),
    targets: tuple[str, ...] = (),
) -> dict:
    if targets:
        check_runtimes(targets)  # before any work
    manifest = mf.read_manifest(directory)
    problems = check_hashes(directory, manifest)
    intact = not problems  # a failed export is still checked: it shows how far off it is
    if manifest.get("status") != "passed":
        problems.append(f"manifest status is {manifest.get('status')!r}, not 'passed'")
    gates: list[GateResult] = []
    trajectories, broken = None, []
    if intact:
        check_loadable(directory, manifest, threads)  # the cheap checks first: fail fast
        model = reference_model(manifest, checkpoint, directory).model
        gates += parity_gates(directory, manifest, model, threads)
        gates += recheck_memory(directory, manifest, threads)
        if targets and not any(n.endswith(".tflite") for n in artifacts(directory, manifest)):
            problems.append("--targets: this export has no .tflite file to run on the phone's paths")
        elif targets:
            schedule = schedule_from_alphas_cumprod(manifest["schedule"]["alphas_cumprod"])
            spec = mf.spec_from_manifest(manifest)
            checked = check_targets(model, artifacts(directory, manifest), spec, schedule, targets, threads, images=False)
            gates += checked.gates
        if classes:
            try:
                trajectories = run_trajectories(directory, manifest, model, list(classes), config, threads)
                gates += [r.as_gate() for r in trajectories.results.values()]
            except NonFiniteError as exc:  # a backend's sampling run went NaN/Inf: a failed check, reported with the rest
                broken.append(f"trajectory: {exc}")
    problems += [f"{r.subject}: {f}" for r in gates if r.gate == "parity" for f in r.failures[:3]]
    problems += [f for r in gates if r.gate == "memory" for f in r.failures]  # they name their file
    problems += [f"{r.subject}: {f}" for r in gates if r.gate in ("trajectory", "target") for f in r.failures] + broken
    return {
        "passed": not problems,
        "directory": str(directory),
        "problems": problems,
        "parity": {r.subject: r.figures for r in gates if r.gate == "parity"},
        "memory": {r.subject: r.figures for r in gates if r.gate == "memory"},
        "trajectory": {r.subject: r.figures for r in gates if r.gate == "trajectory"},
        "targets": {r.subject: r.figures for r in gates if r.gate == "target"},
        "summary": summary(directory, manifest, gates, trajectories, problems),
    }


def parity_gates(directory: Path, manifest: dict, model, threads: int | None) -> list[GateResult]:
    spec = mf.spec_from_manifest(manifest)
    cases = forward_process_cases(schedule_from_alphas_cumprod(manifest["schedule"]["alphas_cumprod"]))
    ref = float32_reference(model, cases)
    parity = run_parity(artifacts(directory, manifest), spec, cases, ref, threads, float64_outputs(model, cases))
    return [r.as_gate() for r in parity.values()]


def recheck_memory(directory: Path, manifest: dict, threads: int | None) -> list[GateResult]:
    """Measure every file again in a fresh process against the limit its manifest entry records."""
    from mobilegen.runtime.backends import default_threads
    from mobilegen.verify.memory import contract_feeds, measure_file, memory_gate

    spec, out = mf.spec_from_manifest(manifest), []
    for name, path in artifacts(directory, manifest).items():
        recorded = manifest["files"][name].get("memory")
        if recorded is None:
            continue
        measured = measure_file(path, contract_feeds(spec), threads or default_threads())
        result = memory_gate(name, measured, recorded["limit_mb"], recorded.get("max_tensor_mb"))
        figures = result.figures | {"recorded_mb": recorded["peak_rss_mb"], "problems": list(result.failures)}
        out.append(GateResult("memory", name, result.failures, figures, f"{result.text}, recorded {recorded['peak_rss_mb']:.1f}"))
    return out


def summary(
    directory: Path, manifest: dict, gates: list[GateResult], trajectories: Trajectories | None, problems: list[str]
) -> str:
    lines = [f"verify {directory}: {'PASS' if not problems else 'FAIL'}"]
    lines += [f"  sha256 ok: {name}" for name in manifest["files"] if not any(p.startswith(name + ":") for p in problems)]
    lines += [f"  {r.summary()}" if r.gate != "memory" else f"  memory {r.summary()}" for r in gates if r.gate != "trajectory"]
    recorded = sorted({p for paths in manifest.get("targets", {}).get("results", {}).values() for p in paths})
    if recorded and not any(r.gate == "target" for r in gates):
        lines.append(f"  phone paths checked at export: {', '.join(recorded)} (not rechecked here: --targets rechecks them)")
    if trajectories:
        cfg = trajectories.config
        lines.append(
            f"  trajectory: {cfg.sampler} {len(trajectories.runs[REFERENCE].timesteps)} steps, guidance {cfg.guidance:g}, "
            f"seed {cfg.seed}, classes {', '.join(trajectories.label_names)}"
        )
        lines += [f"  {r.summary()}" for r in gates if r.gate == "trajectory"]
    lines += [f"  problem: {p}" for p in problems]
    return "\n".join(lines)
