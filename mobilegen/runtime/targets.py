"""The phone's runtimes as backends: LiteRT's GPU accelerator and ARM64 LiteRT (issue 23).

- gpu-fp16 / gpu-fp32: CompiledModel with the GPU accelerator (ML Drift over WebGPU/Vulkan, on
  Mesa's lavapipe here), in its default float16 precision (what an app gets) or with enforce_f32.
  Ops the accelerator rejects run on the CPU, as on a phone.
- arm64-fp32 / arm64-fp16: the aarch64 ai-edge-litert under qemu-user on a Cortex-A76 model
  (FP16 arithmetic and dotprod: most phones since 2019), CompiledModel on the CPU (XNNPACK), in
  float32 or with XNNPACK's FORCE_FP16 flag.
- arm64-a53-fp32: the classic Interpreter on a Cortex-A53 model (no FP16 arithmetic; the
  CompiledModel library needs ARMv8.1 atomics, which the A53 lacks).

Each (file, target, threads) gets one persistent worker process (runtime/litert_worker.py), so
the start-up (qemu, imports, compiling the graph for the GPU) happens once per process.
`scripts/install.sh` sets both runtimes up; a missing piece raises MissingRuntimeError.
"""

from __future__ import annotations

import atexit
import ctypes.util
import glob
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mobilegen.contract.spec import DenoiserSpec
from mobilegen.errors import InvalidInput, MissingRuntimeError, TargetError
from mobilegen.runtime import litert_worker
from mobilegen.runtime.backends import FixedBatch, check_io, default_threads

WORKER = Path(litert_worker.__file__)
ARM64_PYTHON = "usr/bin/python3.11"
LAVAPIPE_ICDS = "/usr/share/vulkan/icd.d/lvp_icd*.json"


@dataclass(frozen=True)
class Target:
    name: str
    runtime: str  # "gpu" or "arm64"
    precision: str  # the arithmetic: "fp32" or "fp16"
    api: str  # "compiled" (CompiledModel) or "interpreter" (the classic Interpreter)
    cpu: str = ""  # the qemu CPU model (arm64)
    about: str = ""

    def options(self, path: Path, threads: int) -> dict:
        """The worker's Model arguments (litert_worker.Model)."""
        opts = {"path": str(path), "api": self.api, "threads": threads}
        if self.api == "compiled":
            opts["accelerator"] = "gpu" if self.runtime == "gpu" else "cpu"
            opts["enforce_f32"] = self.runtime == "gpu" and self.precision == "fp32"
            if self.runtime == "arm64" and self.precision == "fp16":
                opts["xnnpack_flags"] = litert_worker.XNNPACK_FORCE_FP16
        return opts


TARGETS = {t.name: t for t in (
    Target("gpu-fp16", "gpu", "fp16", "compiled", about="LiteRT GPU accelerator, default float16 precision (lavapipe)"),
    Target("gpu-fp32", "gpu", "fp32", "compiled", about="LiteRT GPU accelerator with enforce_f32 (lavapipe)"),
    Target("arm64-fp32", "arm64", "fp32", "compiled", "cortex-a76", "ARM64 XNNPACK, float32 (Cortex-A76 under qemu)"),
    Target("arm64-fp16", "arm64", "fp16", "compiled", "cortex-a76", "ARM64 XNNPACK with FORCE_FP16 (Cortex-A76 under qemu)"),
    Target("arm64-a53-fp32", "arm64", "fp32", "interpreter", "cortex-a53",
           "ARM64 classic Interpreter, float32 (Cortex-A53 under qemu)"),
)}  # fmt: skip


def target(name: str) -> Target:
    if name not in TARGETS:
        raise InvalidInput(f"unknown target {name!r}; expected one of {', '.join(TARGETS)}")
    return TARGETS[name]


def arm64_root() -> Path:
    """The folder scripts/install-targets.sh fills (MOBILEGEN_ARM64_ROOT overrides it)."""
    env = os.environ.get("MOBILEGEN_ARM64_ROOT")
    return Path(env) if env else Path(__file__).resolve().parents[2] / ".deps" / "arm64-root"


def qemu() -> str | None:
    return shutil.which("qemu-aarch64-static") or shutil.which("qemu-aarch64")


def gpu_problem() -> str | None:
    """What is missing for the gpu runtime, or None (the GPU adapter itself is checked at open)."""
    try:
        import ai_edge_litert
    except ImportError:
        return "the Python package ai-edge-litert"
    if not Path(ai_edge_litert.__file__).with_name("libLiteRtWebGpuAccelerator.so").is_file():
        return "ai-edge-litert's GPU accelerator (libLiteRtWebGpuAccelerator.so, in the 2.3.0 wheel)"
    if not ctypes.util.find_library("vulkan"):
        return "the Vulkan loader (Debian: libvulkan1)"
    if not os.environ.get("VK_ICD_FILENAMES") and not glob.glob(LAVAPIPE_ICDS):
        return "Mesa's lavapipe Vulkan driver (Debian bookworm-backports: mesa-vulkan-drivers 25.x)"
    return None


def arm64_problem(cpu: str) -> str | None:
    root = arm64_root()
    if qemu() is None:
        return "qemu-user (Debian: qemu-user-static)"
    if not (root / ARM64_PYTHON).is_file() or not (root / "site" / "ai_edge_litert").is_dir():
        return f"an arm64 Python 3.11 with the aarch64 ai-edge-litert in {root}"
    if not (root / "cpu" / cpu / "proc" / "cpuinfo").is_file():
        return f"an ARM cpuinfo for {cpu} in {root}/cpu/{cpu}/proc (XNNPACK crashes on the host's x86 one)"
    return None


def problem(t: Target) -> str | None:
    """Why target t cannot run here (what is missing), or None."""
    return gpu_problem() if t.runtime == "gpu" else arm64_problem(t.cpu)


def worker_command(t: Target, threads: int) -> tuple[list[str], dict[str, str]]:
    missing = problem(t)
    if missing:
        raise MissingRuntimeError(t.name, missing)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    if t.runtime == "gpu":
        return [sys.executable, str(WORKER)], env | {"LP_NUM_THREADS": str(threads)}
    root = arm64_root()
    # -L: the emulated program's absolute paths are looked up under the prefix first, so the dynamic
    # loader, the libraries and /proc/cpuinfo come from the arm64 root, everything else from the host.
    cmd = [qemu(), "-cpu", t.cpu, "-L", str(root / "cpu" / t.cpu), str(root / ARM64_PYTHON), str(WORKER)]
    return cmd, env | {"PYTHONPATH": str(root / "site"), "PYTHONNOUSERSITE": "1"}


class Worker:
    """One worker process; request() sends a message and returns the reply (header, arrays)."""

    def __init__(self, command: list[str], env: dict[str, str], label: str):
        self.label = label
        self.stderr = tempfile.TemporaryFile()  # noqa: SIM115 (lives as long as the worker; close() closes it)
        self.proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr, env=env)

    def request(self, header: dict, arrays: dict[str, np.ndarray] | None = None) -> tuple[dict, dict[str, np.ndarray]]:
        try:
            litert_worker.write_message(self.proc.stdin, header, arrays)
            reply, out = litert_worker.read_message(self.proc.stdout)
        except (EOFError, BrokenPipeError, OSError):
            code = self.proc.wait()
            self.stderr.seek(0)
            tail = self.stderr.read().decode(errors="replace").strip().splitlines()[-3:]
            raise TargetError(f"{self.label}: the worker process ended (exit code {code}): {' | '.join(tail)}") from None
        if "error" in reply:
            raise TargetError(f"{self.label}: {reply['error']}{log_hint(reply.get('log', ''))}")
        return reply, out

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.stderr.close()


def log_hint(log: str) -> str:
    """The runtime's own error lines, the part of its log that says why."""
    lines = [line.strip() for line in log.splitlines() if line.startswith(("ERROR", "E0000")) or "failed" in line.lower()]
    return f" (LiteRT: {' | '.join(lines[:4])})" if lines else ""


@dataclass
class Opened:
    worker: Worker
    reply: dict  # the open request's reply: io, fully_accelerated, log


POOL: dict[tuple, Opened] = {}


def opened(path: str | Path, t: Target, threads: int | None = None) -> Opened:
    """The pool's worker for (file as it is now, target, threads), started and opened once."""
    path = Path(path).resolve()
    if not path.is_file():
        raise InvalidInput(f"{path}: no such file")
    threads = threads or default_threads()
    stat = path.stat()
    key = (str(path), stat.st_mtime_ns, stat.st_size, t.name, threads)
    if key not in POOL:
        worker = Worker(*worker_command(t, threads), label=f"{t.name}:{path.name}")
        try:
            reply, _ = worker.request({"op": "open", "options": t.options(path, threads)})
        except TargetError as exc:
            worker.close()
            if "No adapters found" in str(exc):
                raise MissingRuntimeError(t.name, "a Vulkan adapter (Mesa 25's lavapipe; bookworm's 22.3 finds none)") from None
            raise
        POOL[key] = Opened(worker, reply)
    return POOL[key]


@atexit.register
def close_all() -> None:
    while POOL:
        POOL.popitem()[1].worker.close()


class TargetBackend(FixedBatch):
    """A .tflite file on a phone target: called like every backend (canonical arrays in, eps out)."""

    kind = "litert-target"

    def __init__(self, path: str | Path, spec: DenoiserSpec, target_name: str, threads: int | None = None):
        self.target = target(target_name)
        self.opened = opened(path, self.target, threads)
        self.spec, self.name = spec, f"{self.target.name}:{Path(path).name}"
        check_io({k: (shape, dtype) for k, (shape, dtype) in self.opened.reply["io"].items()}, spec, path)

    def raw_call(self, x: np.ndarray, t: np.ndarray, y: np.ndarray) -> np.ndarray:
        _, out = self.opened.worker.request({"op": "run"}, {"x": x, "t": t, "y": y})
        return out["eps"]


def open_target(path: str | Path, spec: DenoiserSpec, target_name: str, threads: int | None = None) -> TargetBackend:
    return TargetBackend(path, spec, target_name, threads)
