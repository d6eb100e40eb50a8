#!/usr/bin/env python
"""Load benchmark for `mobilegen serve`: N concurrent clients, batching on vs off.

Starts the server itself (a separate process, on 127.0.0.1, a free port) once per
mode, runs N clients that each send POST /v1/images back to back for a bounded
time, and reports requests/s, p50/p90 (nearest-rank, mobilegen.verify.timing) latency, errors and the mean batch (from the
server's /metrics) per mode, then the throughput ratio on/off. "off" is the same
server with --max-batch 1: every denoiser call runs alone. "rayN" is
`mobilegen serve --ray --replicas N` (Ray Serve, our micro-batcher in every replica),
"rayN-serve" the same with `--ray-batching serve` (Serve's @serve.batch on whole
requests); each starts its own local Ray cluster. With replicas, /metrics is scraped
until every replica has answered, and the batch means add up all replicas.

    .venv/bin/python scripts/bench_serve.py --clients 8 --duration 25 --steps 10
    .venv/bin/python scripts/bench_serve.py --modes ray1,ray2,ray1-serve,ray2-serve --clients 8 --duration 60 --steps 5

Not a unit test; nothing leaves the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

from mobilegen.verify.timing import machine as timing_machine
from mobilegen.verify.timing import machine_line, p90

ROOT = Path(__file__).resolve().parents[1]


def machine() -> str:
    import torch

    return f"{machine_line(timing_machine())}; torch {torch.__version__}, {torch.get_num_threads()} threads"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


MODE = re.compile(r"^(on|off|ray(\d+)(-serve)?)$")


def start_ray_server(port: int, args, max_batch: int, replicas: int, batching: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "mobilegen", "serve", *args.checkpoint[:1], "--ray", "--replicas", str(replicas),
           "--ray-batching", batching,
           "--port", str(port), "--steps", str(args.steps), "--guidance", str(args.guidance), "--max-batch", str(max_batch),
           "--max-wait-ms", str(args.max_wait_ms), "--max-pending", str(max(64, 2 * args.clients)),
           "--max-n", str(max(16, args.n)), "--timeout-s", "600", "--log-level", "warning"]  # fmt: skip
    return subprocess.Popen(cmd, cwd=ROOT)


def start_server(port: int, args, max_batch: int) -> subprocess.Popen:
    models = [{"path": p} for p in args.checkpoint]
    code = (
        "import json, sys; from pathlib import Path\n"
        "from mobilegen.serve import ModelSource, ServeConfig, serve\n"
        "a = json.loads(sys.argv[1])\n"
        "models = tuple(ModelSource(Path(m['path'])) for m in a.pop('models'))\n"
        "serve(ServeConfig(models=models, **a))\n"
    )
    config = {"models": models, "host": "127.0.0.1", "port": port, "steps": args.steps, "guidance": args.guidance,
              "max_batch": max_batch, "max_wait_ms": args.max_wait_ms, "max_pending": max(64, 2 * args.clients),
              "max_n": max(16, args.n), "timeout_s": 600, "log_level": "warning"}  # fmt: skip
    return subprocess.Popen([sys.executable, "-c", code, json.dumps(config)], cwd=ROOT)


async def wait_ready(base: str, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient() as client:
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"server exited with {proc.returncode}")
            try:
                if (await client.get(f"{base}/healthz", timeout=2)).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("server did not come up")
            await asyncio.sleep(0.2)


async def batch_means(client: httpx.AsyncClient, base: str, replicas: int = 1) -> dict[str, float]:
    """Batch histogram sums and counts, added over `replicas` replicas (each scrape answers from one)."""
    from prometheus_client.parser import text_string_to_metric_families

    seen: dict[str, dict[str, float]] = {}
    for _ in range(20 * replicas):
        text = (await client.get(f"{base}/metrics")).text
        replica = re.search(r'mobilegen_replica_info\{replica="([^"]+)"\}', text)
        out = seen.setdefault(replica.group(1) if replica else "", {})
        out.clear()
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name.startswith(("mobilegen_batch_size_", "mobilegen_batch_requests_")) and s.name.endswith(("_sum", "_count")):
                    out[s.name] = out.get(s.name, 0.0) + s.value
        if len(seen) >= replicas:
            break
    if len(seen) < replicas:
        raise SystemExit(f"/metrics answered from {len(seen)} of {replicas} replicas")
    return {k: sum(out.get(k, 0.0) for out in seen.values()) for k in set().union(*seen.values())}


async def load(base: str, args, replicas: int = 1) -> dict:
    latencies: list[float] = []
    errors: list[str] = []
    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=args.clients + 4)) as client:
        # Warm up: one request per replica, so kernel selection is not in the measurement.
        await asyncio.gather(*(client.post(f"{base}/v1/images", json={"label": "cat", "seed": 0, "n": args.n})
                               for _ in range(replicas)))  # fmt: skip
        before = await batch_means(client, base, replicas)
        start = time.perf_counter()
        stop = start + args.duration

        async def one_client(i: int) -> None:
            k = 0
            while time.perf_counter() < stop:
                body = {"label": (i + k) % 10, "seed": 1000 * i + k, "n": args.n}
                t0 = time.perf_counter()
                try:
                    res = await client.post(f"{base}/v1/images", json=body)
                    if res.status_code == 200 and res.content[:4] == b"\x89PNG":
                        latencies.append(time.perf_counter() - t0)
                    else:
                        errors.append(f"{res.status_code} {res.text[:100]}")
                except httpx.HTTPError as exc:
                    errors.append(repr(exc))
                k += 1

        await asyncio.gather(*(one_client(i) for i in range(args.clients)))
        elapsed = time.perf_counter() - start  # until the last request started in time has finished
        after = await batch_means(client, base, replicas)
    d = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    rows = d.get("mobilegen_batch_size_sum", 0) / max(d.get("mobilegen_batch_size_count", 0), 1)
    calls = d.get("mobilegen_batch_requests_sum", 0) / max(d.get("mobilegen_batch_requests_count", 0), 1)
    return {"requests": len(latencies), "errors": len(errors), "error_examples": errors[:3], "seconds": elapsed,
            "rps": len(latencies) / elapsed, "images_per_s": len(latencies) * args.n / elapsed,
            "p50": statistics.median(latencies) if latencies else float("nan"), "p90": p90(latencies) if latencies else float("nan"),
            "mean_rows": rows, "mean_requests": calls}  # fmt: skip


def run_mode(args, name: str, max_batch: int) -> dict:
    port = free_port()
    _, replicas, serve_batch = MODE.match(name).groups()
    ray = replicas is not None
    if ray:
        proc = start_ray_server(port, args, max_batch, int(replicas), "serve" if serve_batch else "ours")
    else:
        proc = start_server(port, args, max_batch)
    base = f"http://127.0.0.1:{port}"
    try:
        asyncio.run(wait_ready(base, proc))
        result = asyncio.run(load(base, args, int(replicas or 1)))
    finally:
        proc.send_signal(signal.SIGINT) if ray else proc.terminate()  # SIGINT: the Ray cluster shuts down with it
        proc.wait(timeout=60)
    return {"mode": name, "max_batch": max_batch, **result}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--duration", type=float, default=25, help="seconds of load per mode")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--n", type=int, default=1, help="images per request")
    parser.add_argument("--max-batch", type=int, default=32, help="images per model call with batching on")
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--checkpoint", action="append", default=[], help="model file (default: the untrained v2)")
    parser.add_argument("--modes", default="on,off", help="comma-separated: on, off, rayN (Ray Serve, N replicas, our "
                        "batcher), rayN-serve (the same with @serve.batch)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    print(f"machine: {machine()}")
    if hasattr(os, "getloadavg"):  # other work on the machine skews every number below
        print(f"load average before the run (1/5/15 min): {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print(f"load: {args.clients} clients x {args.duration:g} s per mode; ddim {args.steps} steps, guidance "
          f"{args.guidance:g}, n={args.n}; max wait {args.max_wait_ms:g} ms", flush=True)  # fmt: skip
    names = args.modes.split(",")  # a mode may repeat (on,off,on,off) to see the spread
    if bad := [n for n in names if not MODE.match(n)]:
        parser.error(f"unknown mode(s) {', '.join(bad)}: use on, off, rayN, rayN-serve")
    results = []
    for name in names:
        max_batch = 1 if name == "off" else args.max_batch
        print(f"running batching {name} (max batch {max_batch}) ...", flush=True)
        results.append(run_mode(args, name, max_batch))
    print(f"{'batching':<11}{'max batch':>10}{'requests':>9}{'errors':>7}{'req/s':>8}{'p50 s':>8}{'p90 s':>8}"
          f"{'rows/call':>10}{'reqs/call':>10}")
    for r in results:
        print(f"{r['mode']:<11}{r['max_batch']:>10}{r['requests']:>9}{r['errors']:>7}{r['rps']:>8.3f}{r['p50']:>8.2f}"
              f"{r['p90']:>8.2f}{r['mean_rows']:>10.1f}{r['mean_requests']:>10.2f}")  # fmt: skip
        for example in r["error_examples"]:
            print(f"  error: {example}")
    rps = {m: statistics.mean(r["rps"] for r in results if r["mode"] == m) for m in {r["mode"] for r in results}}
    if rps.get("off"):
        print(f"throughput ratio on/off: {rps.get('on', 0) / rps['off']:.2f}x")
    for suffix in ("", "-serve"):
        if rps.get(f"ray1{suffix}") and rps.get(f"ray2{suffix}"):
            print(f"throughput ratio 2 replicas / 1 replica{suffix and ' (@serve.batch)'}: "
                  f"{rps[f'ray2{suffix}'] / rps[f'ray1{suffix}']:.2f}x")  # fmt: skip
    for n in sorted({int(m[3:].split("-")[0]) for m in rps if m.startswith("ray")}):
        if rps.get(f"ray{n}") and rps.get(f"ray{n}-serve"):
            print(f"throughput ratio @serve.batch / our batcher, {n} replica(s): {rps[f'ray{n}-serve'] / rps[f'ray{n}']:.2f}x")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "args": vars(args) | {"json": str(args.json)},
                                         "results": results}, indent=2, default=str))  # fmt: skip


if __name__ == "__main__":
    main()
