"""The target check (issue 23): every TFLite file on the paths a phone runs it.

For each file and path (runtime/targets.py: LiteRT's GPU accelerator in float16 and float32,
ARM64 XNNPACK in float32 and FORCE_FP16, the classic Interpreter on a Cortex-A53):
- one step on TARGET_CASES (a subset of the 77 parity cases: high and low t, conditional and
  unconditional) against the float64 run of the same model. Float32-arithmetic paths keep the
  file's x86 gate; float16-arithmetic paths the fp16 gate (>= 40 dB per step);
- on the GPU: op coverage, and a file with an op the accelerator leaves to the CPU fails;
- on float16-arithmetic paths: the guided DDIM trajectory (TRAJECTORY: fewer steps than the x86
  check's 50, the same seed, so the same noise), final image against PyTorch fp32
  (>= 30 dB and SSIM >= 0.95): the image an app with default GPU settings draws. A float32
  path that keeps the x86 per-step gate draws the x86 image, which the x86 trajectory check gates.

One GateResult per (file, path); the manifest's `targets` section holds their figures, and the
final images go side by side into targets.png (PyTorch, x86, then each path that sampled).
"""

from __future__ import annotations

import logging
import subprocess
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

from mobilegen.contract import defaults
from mobilegen.contract.gates import GateResult
from mobilegen.contract.labels import CIFAR10_LABELS
from mobilegen.contract.spec import PRECISION, DenoiserSpec, Tolerance
from mobilegen.diffusion import SamplerConfig, Schedule
from mobilegen.diffusion.cases import Cases, forward_process_cases
from mobilegen.errors import InvalidInput, MissingRuntimeError, NonFiniteError
from mobilegen.runtime.coverage import ARM64_NODES_TARGET, xnnpack_coverage
from mobilegen.verify.parity import check_parity, finite_or_none
from mobilegen.verify.trajectory import Run, compare_runs, record

log = logging.getLogger(__name__)

# (t, y) from the parity set: noise and image-like inputs, conditional and unconditional (-1).
TARGET_CASES: tuple[tuple[int, int], ...] = ((999, 1), (500, -1), (100, 5), (1, -1))
GROUPS = defaults.TARGET_GROUPS
FP16_STEP_PSNR = 40.0  # the fp16 gate, per step against float64
FP16_IMAGE = (30.0, 0.95)  # final image PSNR (dB) and SSIM against PyTorch fp32
TRAJECTORY = SamplerConfig(sampler="ddim", steps=10, guidance=3.0, seed=0)
TRAJECTORY_CLASSES = ("ship",)
GPU_FILES = ("float32", "float16")  # the float files; the accelerator has no int8 dynamic kernels


def parse_targets(text: str) -> tuple[str, ...]:
    """'gpu,arm64' -> the paths, in TARGET_NAMES order; a group or a path name each."""
    allowed = ", ".join([*GROUPS, *defaults.TARGET_NAMES])
    names: list[str] = []
    for item in (s.strip() for s in text.split(",") if s.strip()):
        if item not in GROUPS and item not in defaults.TARGET_NAMES:
            raise InvalidInput(f"--targets: unknown target {item!r}; expected a comma-separated list of {allowed}")
        names += GROUPS.get(item, (item,))
    if not names:
        raise InvalidInput(f"--targets: no target given; expected a comma-separated list of {allowed}")
    return tuple(n for n in defaults.TARGET_NAMES if n in names)


def check_runtimes(paths: tuple[str, ...]) -> None:
    """Before any work: every path's runtime is set up (MissingRuntimeError names what is missing)."""
    from mobilegen.runtime.targets import problem, target

    for name in paths:
        if missing := problem(target(name)):
            raise MissingRuntimeError(name, missing)


def target_cases(schedule: Schedule) -> Cases:
    cases = forward_process_cases(schedule)
    pairs = list(zip(cases.t.astype(int).tolist(), cases.y.tolist()))
    idx = [pairs.index(p) for p in TARGET_CASES]
    return Cases(cases.x[idx], cases.t[idx], cases.y[idx])


def files_on(path_name: str, files: dict[str, Path]) -> dict[str, Path]:
    tflite = {n: p for n, p in files.items() if n.endswith(".tflite")}
    if path_name.startswith("gpu"):
        return {n: p for n, p in tflite.items() if PRECISION[n] in GPU_FILES}
    return tflite


def step_tolerance(file_name: str, arithmetic: str, spec: DenoiserSpec) -> Tolerance:
    tol = spec.tolerances[PRECISION[file_name]]
    return tol if arithmetic == "fp32" else Tolerance(min(FP16_STEP_PSNR, tol.min_psnr))


@dataclass
class Reference:
    """What every (file, path) is compared with: computed once per check."""

    cases: Cases
    fp32: np.ndarray  # PyTorch fp32 eps on the cases
    float64: np.ndarray
    schedule: Schedule
    run: Run | None  # PyTorch fp32 trajectory (None: nothing is sampled)
    labels: list[int]  # its classes


def reference(model: torch.nn.Module, schedule: Schedule, sample: bool) -> Reference:
    from mobilegen.runtime.backends import TorchBackend
    from mobilegen.verify.parity import float32_reference, float64_outputs

    cases = target_cases(schedule)
    labels = [CIFAR10_LABELS.index(c) for c in TRAJECTORY_CLASSES]
    run = record(TorchBackend(model, "cpu").torch_denoise, labels, schedule, TRAJECTORY) if sample else None
    return Reference(cases, float32_reference(model, cases), float64_outputs(model, cases), schedule, run, labels)


@dataclass
class TargetCheck:
    gates: tuple[GateResult, ...]
    section: dict  # the manifest's `targets`
    images: dict[str, np.ndarray]  # column title -> uint8 [classes, 3, H, W]


def check_targets(
    model: torch.nn.Module,
    files: dict[str, Path],
    spec: DenoiserSpec,
    schedule: Schedule,
    paths: tuple[str, ...],
    threads,
    images: bool = True,
) -> TargetCheck:
    """Every file on every path: one GateResult each, the manifest section and the images (with
    images=False only the float16 paths sample: verify keeps no image)."""
    from mobilegen.runtime.backends import open_artifact
    from mobilegen.runtime.targets import target

    ref = reference(model, schedule, images or any(target(p).precision == "fp16" for p in paths))
    drawn = {"PyTorch fp32": ref.run.images} if images else {}
    gates, results = [], {}
    for name, path in files.items():
        if images and any(name in files_on(p, files) for p in paths) and PRECISION[name] in GPU_FILES:
            x86 = open_artifact(path, spec, threads).torch_denoise
            drawn[f"x86 {short(name)}"] = record(x86, ref.labels, schedule, TRAJECTORY).images
        for path_name in (p for p in paths if name in files_on(p, files)):
            gate, run = check_one(name, path, path_name, spec, ref, threads)
            gates.append(gate)
            results.setdefault(name, {})[path_name] = gate.figures
            if run is not None and images:
                drawn[f"{path_name} {short(name)}"] = run.images
            log.info("%s", gate.summary())
    section = {
        "cases": [ref.cases.describe(i) for i in range(len(ref.cases))],
        "trajectory": trajectory_settings(),
        "runtimes": runtime_versions(paths),
        "results": results,
    }
    return TargetCheck(tuple(gates), section, drawn)


def short(file_name: str) -> str:
    return PRECISION[file_name].replace("_", " ")


def trajectory_settings() -> dict:
    c = TRAJECTORY
    return {"sampler": c.sampler, "steps": c.steps, "guidance": c.guidance, "seed": c.seed, "classes": list(TRAJECTORY_CLASSES)}


def check_one(
    name: str, path: Path, path_name: str, spec: DenoiserSpec, ref: Reference, threads
) -> tuple[GateResult, Run | None]:
    """One file on one path: per-step parity, GPU coverage, and the fp16 image."""
    from mobilegen.runtime.targets import open_target, target

    t = target(path_name)
    backend = open_target(path, spec, path_name, threads)
    tol = step_tolerance(name, t.precision, spec)
    out = backend(ref.cases.x, ref.cases.t, ref.cases.y)
    if tol.float64_multiple:  # the float32 gates (parity.py)
        parity = check_parity(name, ref.fp32, out, ref.cases, tol, ref.float64)
    else:  # the others, measured against float64 directly
        parity = check_parity(name, ref.float64, out, ref.cases, tol)
    figures = parity.float64.to_dict() if parity.float64 else {}
    failures = list(parity.failures)
    entry: dict = {
        "runtime": t.runtime,
        "precision": t.precision,
        "step": {
            "min_psnr_db": figures.get("artifact_min_psnr_db", finite_or_none(parity.min_psnr, 3)),
            "max_abs_error": figures.get("artifact_max_abs_error", finite_or_none(parity.max_abs)),
            "gate_min_psnr_db": parity.tolerance.min_psnr,
        },
    }
    if t.runtime == "gpu":
        entry["coverage"], problem = gpu_coverage_entry(path, t.precision, threads)
        failures += [problem] if problem else []
    elif path_name == ARM64_NODES_TARGET:  # which ops XNNPACK takes on ARM64, read in this path's worker
        from mobilegen.runtime.backends import default_threads

        entry["coverage"] = xnnpack_coverage(path, "arm64", threads or default_threads()).to_dict()
    run = None
    if t.precision == "fp16":
        run, image, problems = fp16_image(name, backend, ref)
        entry["trajectory"] = image
        failures += [f"image {p}" for p in problems]
    entry = {"passed": not failures, "failures": failures} | entry
    return GateResult("target", f"{name}@{path_name}", tuple(failures), entry, summary(name, path_name, entry)), run


def fp16_image(name: str, backend, ref: Reference) -> tuple[Run | None, dict, list[str]]:
    """The guided trajectory on a float16 path: (its run or None if it went NaN/Inf, figures, failures)."""
    image = {"min_psnr_db": None, "min_ssim": None, "gate_min_psnr_db": FP16_IMAGE[0], "gate_min_ssim": FP16_IMAGE[1]}
    try:
        run = record(backend.torch_denoise, ref.labels, ref.schedule, TRAJECTORY)
    except NonFiniteError as exc:
        return None, image, [f"lost: {exc}"]
    traj = compare_runs(name, ref.run, run, list(TRAJECTORY_CLASSES), FP16_IMAGE)
    image["min_psnr_db"] = min(c["psnr"] for c in traj.per_class.values())
    image["min_ssim"] = min(c["ssim"] for c in traj.per_class.values())
    return run, image, traj.failures


def gpu_coverage_entry(path: Path, precision: str, threads) -> tuple[dict, str | None]:
    from mobilegen.runtime.coverage import gpu_coverage

    cov = gpu_coverage(path, precision, threads)
    if cov.fully_accelerated and cov.cpu_ops == 0:
        return cov.to_dict(), None
    why = ", ".join(f"{op} x{cov.rejected_in_file.get(op, 0)}" + (f" ({r})" if r else "") for op, r in cov.rejected.items())
    return cov.to_dict(), f"{cov.cpu_ops} of {cov.ops} ops run on the CPU, not the GPU: {why or 'no reason logged'}"


def summary(name: str, path_name: str, entry: dict) -> str:
    step = entry["step"]
    psnr = "NaN/Inf" if step["min_psnr_db"] is None else f"{step['min_psnr_db']:.1f} dB"
    text = f"{'PASS' if entry['passed'] else 'FAIL'} {name} on {path_name}: step vs float64 min {psnr} (gate {step['gate_min_psnr_db']:g})"
    cov = entry.get("coverage")
    if cov and "gpu_ops" in cov:
        text += f", GPU {cov['gpu_ops']}/{cov['ops']} ops"
    elif cov:
        text += f", XNNPACK {cov['delegated']}/{cov['ops']} ops"
    if "trajectory" in entry:
        tr = entry["trajectory"]
        shown = "lost (NaN/Inf)" if tr["min_psnr_db"] is None else f"{tr['min_psnr_db']:.1f} dB SSIM {tr['min_ssim']:.4f}"
        text += f", image {shown} (gate {FP16_IMAGE[0]:g} dB, {FP16_IMAGE[1]:g})"
    return text + "".join(f"; {f}" for f in entry["failures"][:3])


def runtime_versions(paths: tuple[str, ...]) -> dict[str, str]:
    out = {}
    if any(p.startswith("gpu") for p in paths):
        out["gpu"] = f"ai-edge-litert {metadata.version('ai-edge-litert')} GPU accelerator on {vulkan_driver()}"
    if any(p.startswith("arm64") for p in paths):
        from mobilegen.runtime.targets import arm64_root, qemu

        wheels = sorted(p.name for p in (arm64_root() / "site").glob("ai_edge_litert-*.dist-info"))
        version = wheels[0].removeprefix("ai_edge_litert-").removesuffix(".dist-info") if wheels else "unknown"
        emulator = first_line([qemu() or "qemu-aarch64", "--version"])
        out["arm64"] = f"ai-edge-litert {version} (aarch64) under {emulator}"
    return out


def vulkan_driver() -> str:
    version = first_line(["dpkg-query", "-W", "-f", "${Version}", "mesa-vulkan-drivers"])
    return f"Mesa lavapipe {version}" if version != "unknown" else "a Vulkan driver"


def first_line(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.splitlines()[0] if out else "unknown"


def image_grid(images: dict[str, np.ndarray]) -> np.ndarray:
    """One row per class, one column per run: uint8 HWC."""
    columns = [np.concatenate(list(batch.transpose(0, 2, 3, 1)), axis=0) for batch in images.values()]
    return np.concatenate(columns, axis=1)
