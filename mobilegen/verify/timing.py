"""Timing primitives for benchmarks: warm-up, median and p90, the machine named.

Warm-up calls first, then `repeats` timed calls; median and p90 in milliseconds.
"""

from __future__ import annotations

import platform
import resource
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class Timing:
    name: str
    median_ms: float
    p90_ms: float
    load_ms: float
    repeats: int
    device: str

    def to_dict(self) -> dict:
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def time_calls(fn: Callable[[], object], warmup: int, repeats: int) -> list[float]:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
    return samples


def measure(name: str, load: Callable[[], Callable], inputs: tuple[np.ndarray, ...], device: str,
            warmup: int = 3, repeats: int = 20) -> Timing:  # fmt: skip
    start = time.perf_counter()
    run = load()
    load_ms = (time.perf_counter() - start) * 1000
    samples = sorted(time_calls(lambda: run(*inputs), warmup, repeats))
    p90 = samples[min(len(samples) - 1, int(round(0.9 * (len(samples) - 1))))]
    return Timing(name, statistics.median(samples), p90, load_ms, repeats, device)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def machine() -> dict:
    import os

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}


def table(timings: list[Timing], reference: str | None = None) -> str:
    ref = next((t.median_ms for t in timings if t.name == reference), None)
    lines = [f"{'backend':<34} {'median ms':>10} {'p90 ms':>9} {'load ms':>9} {'vs ref':>7}"]
    for t in timings:
        ratio = f"{ref / t.median_ms:6.2f}x" if ref else ""
        lines.append(f"{t.name:<34} {t.median_ms:>10.2f} {t.p90_ms:>9.2f} {t.load_ms:>9.1f} {ratio:>7}")
    return "\n".join(lines)
