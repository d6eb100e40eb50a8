"""The one timing harness: every benchmark (bench, compare, the scripts, the serve
benchmark) times through it, so they agree on what a number means.

- Warm-up calls first, then timed calls; on CUDA each call ends with a device
  synchronisation (`sync`), so a time is the work, not the launch.
- median and p90 in milliseconds; p90 is nearest-rank: the ceil(0.9 n)-th smallest sample.
- Every timing names its device and dtype. A ratio is only ever taken between timings of
  the same device: a CUDA reference is shown beside the CPU rows, never folded into them.
- `machine()` names the machine (CPU model and the instruction-set flags that change
  kernel speed, the GPU if any) and the commit that ran: an absolute time means nothing
  without them, and only ratios measured in one run carry over between machines.
"""

from __future__ import annotations

import math
import os
import platform
import resource
import statistics
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

# The CPU flags that decide which kernels XNNPACK, onnxruntime and PyTorch run.
SPEED_FLAGS = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx_vnni",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
    "asimd",
    "asimdhp",
    "asimddp",
    "sve",
)


@dataclass(frozen=True)
class Timing:
    name: str
    median_ms: float
    p90_ms: float
    load_ms: float
    repeats: int
    device: str
    dtype: str = "float32"

    def to_dict(self) -> dict:
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def p90(samples: list[float]) -> float:
    """Nearest-rank 90th percentile."""
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(0.9 * len(ordered)) - 1)]


def summarize(samples: list[float]) -> dict:
    """median, p90 (nearest-rank) and count of samples in milliseconds."""
    return {"median_ms": round(statistics.median(samples), 3), "p90_ms": round(p90(samples), 3), "calls": len(samples)}


def time_calls(fn: Callable[[], object], warmup: int, repeats: int, sync: Callable[[], None] | None = None) -> list[float]:
    """Milliseconds of each of `repeats` calls after `warmup` untimed ones; sync() ends each call."""
    done = sync or (lambda: None)
    for _ in range(warmup):
        fn()
        done()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        done()
        samples.append((time.perf_counter() - start) * 1000)
    return samples


def cuda_sync(device: str) -> Callable[[], None] | None:
    if device != "cuda":
        return None
    import torch

    return torch.cuda.synchronize


def measure(
    name: str,
    load: Callable[[], Callable],
    inputs: tuple[np.ndarray, ...],
    device: str,
    warmup: int = 3,
    repeats: int = 20,
    dtype: str = "float32",
) -> Timing:
    start = time.perf_counter()
    run = load()
    load_ms = (time.perf_counter() - start) * 1000
    samples = time_calls(lambda: run(*inputs), warmup, repeats, cuda_sync(device))
    return Timing(name, statistics.median(samples), p90(samples), load_ms, repeats, device, dtype)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def commit() -> str:
    """The git commit of this source tree (+dirty when it has changes), or 'not a git checkout'."""
    root = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "not a git checkout"
    return head + ("+dirty" if dirty else "")


WIDEST = (("avx512f", 512), ("avx2", 256), ("avx", 256), ("sve", 128), ("asimd", 128), ("sse4_2", 128))


def cpu_info() -> tuple[str, list[str]]:
    cpu, flags, named = platform.processor() or platform.machine(), [], False
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and not named:
                    cpu, named = value.strip(), True
                elif key.strip() in ("flags", "Features") and not flags:
                    present = set(value.split())
                    flags = [f for f in SPEED_FLAGS if f in present]
    except OSError:
        pass
    return cpu, flags


def cpu_class() -> dict:
    """CPU family and model (x86 /proc/cpuinfo; ARM: implementer and part) and the widest vector ISA.
    The ISA width is not the execution width: first-generation Zen runs AVX2 on 128-bit units."""
    keys = {"cpu family": "family", "model": "model", "CPU implementer": "implementer", "CPU part": "part"}
    out: dict = {}
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key.strip() in keys and keys[key.strip()] not in out:
                    out[keys[key.strip()]] = value.strip()
    except OSError:
        pass
    flags = set(cpu_info()[1])
    out["vector_isa"] = next((f"{bits}-bit ({f})" for f, bits in WIDEST if f in flags), "128-bit or unknown")
    return out


def sgemm_peak_gflops(threads: int, n: int = 2048, rounds: int = 5) -> float:
    """The machine's float32 GEMM peak with this thread count (torch.mm, n^3, best of rounds): the
    compute floor of a step is its MACs x 2 over this."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a, b = torch.randn(n, n), torch.randn(n, n)
        torch.mm(a, b)  # warm-up
        best = min(timed(lambda: torch.mm(a, b)) for _ in range(rounds))
    finally:
        torch.set_num_threads(previous)
    return 2 * n**3 / best / 1e9


def copy_bandwidth_gbs(mb: int = 256, rounds: int = 5) -> float:
    """Bytes read plus written per second by a large numpy copy (best of rounds): a memory-bound floor's rate."""
    a = np.ones(mb * 2**18, np.float32)
    b = np.empty_like(a)
    best = min(timed(lambda: np.copyto(b, a)) for _ in range(rounds))
    return 2 * a.nbytes / best / 1e9


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def machine() -> dict:
    cpu, flags = cpu_info()
    out = {
        "cpu": cpu,
        "cpu_class": cpu_class(),
        "flags": flags,
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "commit": commit(),
    }
    try:
        import torch

        if torch.cuda.is_available():
            out["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return out


def machine_line(m: dict) -> str:
    gpu = f", GPU {m['gpu']}" if m.get("gpu") else ""
    return f"{m['cpu']} ({' '.join(m.get('flags') or []) or 'flags not recorded'}), {m['cores']} cores{gpu}; commit {m.get('commit', 'not recorded')}"


def table(timings: list[Timing], reference: str | None = None) -> str:
    """The rows, each with its device and dtype; 'vs ref' only between rows of the reference's device."""
    ref = next((t for t in timings if t.name == reference), None)
    lines = [f"{'backend':<40} {'device':>6} {'dtype':>8} {'median ms':>10} {'p90 ms':>9} {'load ms':>9} {'vs ref':>7}"]
    for t in timings:
        ratio = f"{ref.median_ms / t.median_ms:6.2f}x" if ref and t.device == ref.device else "-"
        lines.append(
            f"{t.name:<40} {t.device:>6} {t.dtype:>8} {t.median_ms:>10.2f} {t.p90_ms:>9.2f} {t.load_ms:>9.1f} {ratio:>7}"
        )
    return "\n".join(lines)
