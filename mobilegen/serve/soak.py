"""Memory of a real `mobilegen serve` process under a bounded request storm
(`mobilegen soak-serve`): RSS sampled over time, the batching factor from /metrics.

Not a unit test: the numbers depend on the machine and what else runs on it.
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mobilegen.serve.config import ServeConfig
from mobilegen.serve.loadtest import Server, batch_counters, batching, rss_mb, start_server, wait_ready


@dataclass(frozen=True)
class SoakPlan:
    requests: int = 500  # in the storm, after the warm-up
    clients: int = 20  # concurrent
    warmup: int = 20
    hangup: float = 0.2  # share of requests whose client hangs up before the answer
    checkpoint_at: int = 100  # the level growth is measured from: RSS after this many storm requests
    idle_s: float = 20.0  # after the storm, then RSS again
    sample_s: float = 0.25
    seed: int = 0


@dataclass
class RssTrace:
    """VmRSS of the server sampled in a thread, each sample with the storm requests finished by then."""

    pid: int
    every_s: float
    done: int = 0
    samples: list[tuple[float, int, float]] = field(default_factory=list)  # (seconds, requests done, MB)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._start = time.monotonic()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                self.samples.append((round(time.monotonic() - self._start, 2), self.done, round(rss_mb(self.pid), 1)))
            except (ProcessLookupError, FileNotFoundError):
                return

    def now(self) -> float:
        return round(rss_mb(self.pid), 1)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def soak_request(rng: random.Random, i: int, max_n: int) -> dict:
    """Mixed sizes: 1-4 images, 1-3 steps, guided or not, PNG or JSON."""
    return {
        "label": rng.choice(["cat", "ship", "none", 3]),
        "seed": i,
        "n": rng.choice([1, 1, 2, min(4, max_n)]),
        "steps": rng.randint(1, 3),
        "guidance": rng.choice([0.0, 3.0]),
        "output": rng.choice(["png", "json"]),
    }


async def hang_up(base: str, body: dict, after_s: float) -> None:
    """A client that sends a whole request, then closes the connection before the answer."""
    host, port = base.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    data = json.dumps(body).encode()
    writer.write(
        b"POST /v1/images HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
        % (len(data), data)
    )
    await writer.drain()
    await asyncio.sleep(after_s)
    writer.close()


async def storm(server: Server, plan: SoakPlan, trace: RssTrace, max_n: int) -> dict:
    import httpx

    rng = random.Random(plan.seed)
    outcomes: dict[str, int] = {}
    queue = list(range(plan.requests))
    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=plan.clients + 4)) as client:

        async def worker() -> None:
            while queue:
                i = queue.pop()
                body = soak_request(rng, i, max_n)
                if rng.random() < plan.hangup:
                    await hang_up(server.base, body, rng.uniform(0.0, 0.3))
                    key = "hung up"
                else:
                    res = await client.post(f"{server.base}/v1/images", json=body)
                    key = str(res.status_code)
                outcomes[key] = outcomes.get(key, 0) + 1
                trace.done += 1

        before = await batch_counters(client, server.base)
        start = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(plan.clients)))
        seconds = time.monotonic() - start
        after = await batch_counters(client, server.base)
    return {"outcomes": outcomes, "seconds": round(seconds, 1), "batching": batching(before, after)}


async def warm_up(server: Server, plan: SoakPlan, max_n: int) -> None:
    import httpx

    rng = random.Random(plan.seed + 1)
    async with httpx.AsyncClient(timeout=600) as client:
        for i in range(plan.warmup):
            (await client.post(f"{server.base}/v1/images", json=soak_request(rng, i, max_n))).raise_for_status()


async def wait_idle(server: Server, timeout: float = 120) -> None:
    """Until no request is pending or sampling (hung-up requests stop at their next step)."""
    import httpx

    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient() as client:
        while time.monotonic() < deadline:
            health = (await client.get(f"{server.base}/healthz")).json()
            if not health["pending"] and not health["sampling"]:
                return
            await asyncio.sleep(0.2)


def level_until(samples: list[tuple[float, int, float]], done: int) -> float:
    """The working set: the highest RSS sampled while the first `done` storm requests ran (RSS
    swings with the rows of the model call in flight, so one sample is no level)."""
    return max(mb for _, n, mb in samples if n <= done)


def soak(config: ServeConfig, models: list[Path], plan: SoakPlan) -> dict:
    """Warm-up, the storm with RSS sampled throughout, then idle; the figures of the acceptance."""
    server = start_server(config, models)
    try:
        asyncio.run(wait_ready(server))
        start_mb = rss_mb(server.proc.pid)
        asyncio.run(warm_up(server, plan, config.max_n))
        trace = RssTrace(server.proc.pid, plan.sample_s)
        warm_mb = trace.now()
        result = asyncio.run(storm(server, plan, trace, config.max_n))
        asyncio.run(wait_idle(server))
        end_mb = trace.now()
        time.sleep(plan.idle_s)
        trace.stop()
        idle_mb = trace.now()
    finally:
        server.stop()
    samples = trace.samples
    level = level_until(samples, plan.checkpoint_at)
    peak = max(mb for _, n, mb in samples if n > plan.checkpoint_at)
    return {
        "plan": asdict(plan),
        "config": {
            "max_batch": config.max_batch,
            "max_n": config.max_n,
            "steps": config.steps,
            "max_pending": config.max_pending,
        },
        "rss_mb": {
            "started": round(start_mb, 1),
            "after_warmup": warm_mb,
            f"level_first_{plan.checkpoint_at}": level,
            "peak_after_level": peak,
            "end_of_storm": end_mb,
            "idle": idle_mb,
        },
        "growth": {"peak_vs_level": round(peak / level - 1, 4), "idle_vs_level": round(idle_mb / level - 1, 4)},
        **result,
        "samples": samples,
    }


def soak_summary(result: dict) -> str:
    r, g, b, p = result["rss_mb"], result["growth"], result["batching"], result["plan"]
    at = p["checkpoint_at"]
    lines = [
        f"storm: {p['requests']} requests, {p['clients']} concurrent, {p['hangup']:.0%} hang-ups, "
        f"{result['seconds']:.0f} s: {', '.join(f'{k} x{v}' for k, v in sorted(result['outcomes'].items()))}",
        f"RSS MB: started {r['started']}, after warm-up {r['after_warmup']}, peak over the first {at} requests "
        f"{r[f'level_first_{at}']}, peak over the rest {r['peak_after_level']} ({g['peak_vs_level']:+.1%}), "
        f"end of storm {r['end_of_storm']}, "
        f"after {p['idle_s']:g} s idle {r['idle']} ({g['idle_vs_level']:+.1%})",
        f"batching: {b['model_calls']} model calls, {b['rows_per_call']:.2f} rows and {b['requests_per_call']:.2f} "
        f"requests per call, {b['dropped_calls']} queued calls of gone clients dropped",
    ]
    return "\n".join(lines)


# --- throughput: batching on/off, Ray replicas ----------------------------------------------
