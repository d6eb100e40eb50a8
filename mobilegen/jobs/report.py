"""The report job (`mobilegen-export report DIR`): report.html for a person, from the same
sampling run on PyTorch and every file. Read only as far as the manifest goes: the
trajectory results go to DIR/trajectory.json (contract.defaults.TRAJECTORY_JSON)."""

from __future__ import annotations

from pathlib import Path

from mobilegen.contract.defaults import BENCH_JSON, MANIFEST_FILE, REPORT_HTML, TARGETS_PNG, TRAJECTORY_JSON
from mobilegen.diffusion import SamplerConfig
from mobilegen.files import atomic_write, check_output_file, loads_strict, sha256_file, write_json
from mobilegen.verify.folder import intact_folder, reference_model, run_trajectories
from mobilegen.verify.report_html import images_per_second, render


def latest_bench(directory: Path) -> dict | None:
    """DIR/bench.json when it measured this very manifest, else None."""
    try:
        bench = loads_strict((directory / BENCH_JSON).read_text())
    except (OSError, ValueError, RecursionError):
        return None
    fresh = isinstance(bench, dict) and bench.get("manifest_sha256") == sha256_file(directory / MANIFEST_FILE)
    return bench if fresh else None


def write_html_report(
    directory: Path,
    labels: tuple[int, ...],
    config: SamplerConfig,
    checkpoint: Path | None,
    threads: int | None,
    overwrite: bool = False,
) -> tuple[Path, str]:
    """DIR/report.html (refused if it exists, unless overwrite) and DIR/trajectory.json."""
    path = check_output_file(directory / REPORT_HTML, overwrite)
    manifest = intact_folder(directory, threads)
    model = reference_model(manifest, checkpoint, directory).model
    traj = run_trajectories(directory, manifest, model, list(labels), config, threads)
    ips = images_per_second(manifest, labels[0], traj)
    trajectory = {
        "sampler": config.sampler,
        "steps": config.steps,
        "guidance": config.guidance,
        "seed": config.seed,
        "classes": traj.label_names,
        "results": {n: r.to_dict() for n, r in traj.results.items()},
        "images_per_second": ips,
        "manifest_sha256": sha256_file(directory / MANIFEST_FILE),
    }
    write_json(directory / TRAJECTORY_JSON, trajectory)
    bench = latest_bench(directory)
    png = directory / TARGETS_PNG  # the export's, if it checked the phone paths
    page = render(manifest | ({"latency": bench} if bench else {}), traj, ips, png.read_bytes() if png.is_file() else None)
    atomic_write(path, lambda tmp: tmp.write_text(page))
    return path, "\n".join(r.summary() for r in traj.results.values())
