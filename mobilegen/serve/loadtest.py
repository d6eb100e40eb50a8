"""Load on a real `mobilegen serve` process: the server in a subprocess, its counters, and
the throughput benchmark (`mobilegen bench-serve`; the memory soak is in `soak.py`).

The server runs in a process of its own on 127.0.0.1 (a free port), started from the
library's ``serve`` (or ``serve_ray``) with a ``ServeConfig``; clients are asyncio HTTP
clients in this process. What the server did is read from its own /metrics (model calls,
rows and requests per call), what it holds from /proc/PID/status (VmRSS). Nothing leaves
the machine. Not a unit test: the numbers depend on the machine and what else runs on it.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from mobilegen.serve.config import ServeConfig

ROOT = Path(__file__).resolve().parents[2]
SERVER = """
import json, sys
from pathlib import Path
from mobilegen.serve import ModelSource, ServeConfig, serve
a = json.loads(sys.argv[1])
models = tuple(ModelSource(Path(m)) for m in a.pop("models"))
ray = a.pop("ray")
if ray is None:
    serve(ServeConfig(models=models, **a))
else:
    from mobilegen.serve.ray_app import RayOptions, serve_ray
    serve_ray(ServeConfig(models=models, **a), options=RayOptions(**ray))
"""
BATCH_SERIES = (
    "mobilegen_batch_size_sum",
    "mobilegen_batch_size_count",
    "mobilegen_batch_requests_sum",
    "mobilegen_batch_requests_count",
    "mobilegen_denoiser_calls_dropped_total",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    """Resident set of a process now (VmRSS), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise ProcessLookupError(pid)


@dataclass
class Server:
    """A `mobilegen serve` process on a free loopback port."""

    proc: subprocess.Popen
    base: str
    ray: bool

    def stop(self) -> None:
        # SIGINT: uvicorn (and a Ray cluster started with it) shut down cleanly.
        self.proc.send_signal(signal.SIGINT if self.ray else signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def start_server(config: ServeConfig, models: list[Path], ray: dict | None = None) -> Server:
    port = free_port()
    settings = asdict(config) | {"models": [str(m) for m in models], "host": "127.0.0.1", "port": port, "ray": ray}
    settings.pop("cors_origins")
    proc = subprocess.Popen([sys.executable, "-c", SERVER, json.dumps(settings)], cwd=ROOT)
    return Server(proc, f"http://127.0.0.1:{port}", ray is not None)


async def wait_ready(server: Server, timeout: float = 300) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient() as client:
        while True:
            if server.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {server.proc.returncode} before it answered")
            try:
                if (await client.get(f"{server.base}/healthz", timeout=2)).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server did not answer /healthz within {timeout:g} s")
            await asyncio.sleep(0.2)


async def batch_counters(client, base: str, replicas: int = 1) -> dict[str, float]:
    """The batching series of /metrics, added over `replicas` replicas (each scrape answers from one)."""
    from prometheus_client.parser import text_string_to_metric_families

    seen: dict[str, dict[str, float]] = {}
    for _ in range(20 * replicas):
        text = (await client.get(f"{base}/metrics")).text
        replica = re.search(r'mobilegen_replica_info\{replica="([^"]+)"\}', text)
        out = seen.setdefault(replica.group(1) if replica else "", {})
        out.clear()
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name in BATCH_SERIES:
                    out[s.name] = out.get(s.name, 0.0) + s.value
        if len(seen) >= replicas:
            break
    if len(seen) < replicas:
        raise RuntimeError(f"/metrics answered from {len(seen)} of {replicas} replicas")
    return {k: sum(out.get(k, 0.0) for out in seen.values()) for k in BATCH_SERIES}


def batching(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Model calls between two scrapes: how many, rows and requests per call, dropped calls."""
    d = {k: after[k] - before[k] for k in BATCH_SERIES}
    calls = d["mobilegen_batch_size_count"]
    return {
        "model_calls": int(calls),
        "rows_per_call": d["mobilegen_batch_size_sum"] / max(calls, 1),
        "requests_per_call": d["mobilegen_batch_requests_sum"] / max(calls, 1),
        "dropped_calls": int(d["mobilegen_denoiser_calls_dropped_total"]),
    }


# --- the soak: memory under a bounded storm -------------------------------------------------


MODE = re.compile(r"^(on|off|ray(\d+)(-serve)?)$")


@dataclass(frozen=True)
class LoadPlan:
    clients: int = 8
    duration_s: float = 25.0  # of load per mode
    n: int = 1  # images per request


def parse_modes(text: str) -> list[str]:
    """on (our micro-batcher), off (--max-batch 1), rayN (Ray Serve, N replicas), rayN-serve (@serve.batch)."""
    from mobilegen.errors import InvalidInput

    names = [m.strip() for m in text.split(",") if m.strip()]
    bad = [m for m in names if not MODE.match(m)]
    if bad or not names:
        raise InvalidInput(f"unknown mode(s) {', '.join(bad) or repr(text)}; use on, off, rayN or rayN-serve, e.g. on,off")
    return names


async def closed_loop(base: str, plan: LoadPlan, replicas: int) -> dict:
    """`clients` clients sending back to back for `duration_s`: requests/s, latency, batching."""
    import httpx

    from mobilegen.verify.timing import p90

    latencies: list[float] = []
    errors: list[str] = []
    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=plan.clients + 4)) as client:
        # Warm up: one request per replica, so kernel selection is not in the measurement.
        await asyncio.gather(
            *(client.post(f"{base}/v1/images", json={"label": "cat", "seed": 0, "n": plan.n}) for _ in range(replicas))
        )
        before = await batch_counters(client, base, replicas)
        start = time.perf_counter()
        stop = start + plan.duration_s

        async def one_client(i: int) -> None:
            k = 0
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                try:
                    res = await client.post(f"{base}/v1/images", json={"label": (i + k) % 10, "seed": 1000 * i + k, "n": plan.n})
                    if res.status_code == 200 and res.content[:4] == b"\x89PNG":
                        latencies.append(time.perf_counter() - t0)
                    else:
                        errors.append(f"{res.status_code} {res.text[:100]}")
                except httpx.HTTPError as exc:
                    errors.append(repr(exc))
                k += 1

        await asyncio.gather(*(one_client(i) for i in range(plan.clients)))
        elapsed = time.perf_counter() - start  # until the last request started in time has finished
        after = await batch_counters(client, base, replicas)
    nan = float("nan")
    return {
        "requests": len(latencies),
        "errors": len(errors),
        "error_examples": errors[:3],
        "seconds": round(elapsed, 2),
        "rps": len(latencies) / elapsed,
        "p50_s": statistics.median(latencies) if latencies else nan,
        "p90_s": p90(latencies) if latencies else nan,
        **batching(before, after),
    }


def run_mode(config: ServeConfig, models: list[Path], plan: LoadPlan, mode: str) -> dict:
    from dataclasses import replace

    _, replicas, serve_batch = MODE.match(mode).groups()
    mode_config = replace(config, max_batch=1) if mode == "off" else config
    ray = {"replicas": int(replicas), "batching": "serve" if serve_batch else "ours"} if replicas else None
    server = start_server(mode_config, models, ray)
    try:
        asyncio.run(wait_ready(server))
        result = asyncio.run(closed_loop(server.base, plan, int(replicas or 1)))
    finally:
        server.stop()
    return {"mode": mode, "max_batch": mode_config.max_batch, **result}


def ratios(results: list[dict]) -> list[str]:
    """The throughput ratios the modes measured allow: on/off, 2 vs 1 replica, @serve.batch vs ours."""
    rps = {m: statistics.mean(r["rps"] for r in results if r["mode"] == m) for m in {r["mode"] for r in results}}
    lines = []
    if rps.get("off") and rps.get("on"):
        lines.append(f"throughput ratio on/off: {rps['on'] / rps['off']:.2f}x")
    for suffix in ("", "-serve"):
        if rps.get(f"ray1{suffix}") and rps.get(f"ray2{suffix}"):
            lines.append(
                f"throughput ratio 2 replicas / 1 replica{suffix and ' (@serve.batch)'}: "
                f"{rps[f'ray2{suffix}'] / rps[f'ray1{suffix}']:.2f}x"
            )
    for n in sorted({int(m[3:].split("-")[0]) for m in rps if m.startswith("ray")}):
        if rps.get(f"ray{n}") and rps.get(f"ray{n}-serve"):
            lines.append(
                f"throughput ratio @serve.batch / our batcher, {n} replica(s): {rps[f'ray{n}-serve'] / rps[f'ray{n}']:.2f}x"
            )
    return lines


def bench_table(results: list[dict]) -> str:
    lines = [
        f"{'batching':<11}{'max batch':>10}{'requests':>9}{'errors':>7}{'req/s':>8}{'p50 s':>8}{'p90 s':>8}"
        f"{'rows/call':>10}{'reqs/call':>10}"
    ]
    for r in results:
        lines.append(
            f"{r['mode']:<11}{r['max_batch']:>10}{r['requests']:>9}{r['errors']:>7}{r['rps']:>8.3f}{r['p50_s']:>8.2f}"
            f"{r['p90_s']:>8.2f}{r['rows_per_call']:>10.1f}{r['requests_per_call']:>10.2f}"
        )
        lines += [f"  error: {e}" for e in r["error_examples"]]
    return "\n".join(lines + ratios(results))
