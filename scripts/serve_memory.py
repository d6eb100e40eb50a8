#!/usr/bin/env python
"""Peak RSS of `mobilegen serve` at full batches, attention unbounded vs bounded.

Starts the server (a separate process on 127.0.0.1) once per setting, sends enough
concurrent guided requests that every model call carries --max-batch rows, and reads the
server's peak resident set (VmHWM in /proc/PID/status) after the load, with the requests
served per second. Settings: `unbounded` (the default) and `--max-tensor-mb` values.

    .venv/bin/python scripts/serve_memory.py --max-batch 32 --budgets 128 --duration 40

Not a unit test; nothing leaves the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from mobilegen.verify.timing import machine, machine_line

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def vm(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {key} for {pid}")


async def load(base: str, clients: int, duration: float, steps: int) -> tuple[int, float]:
    done, stop = 0, time.monotonic() + duration
    async with httpx.AsyncClient(timeout=600) as client:

        async def one(i: int) -> None:
            nonlocal done
            while time.monotonic() < stop:
                r = await client.post(f"{base}/v1/images", json={"label": i % 10, "seed": i, "steps": steps, "guidance": 3.0})
                r.raise_for_status()
                done += 1

        start = time.monotonic()
        await asyncio.gather(*(one(i) for i in range(clients)))
        return done, time.monotonic() - start


def run(args, budget: str) -> dict:
    port = free_port()
    cmd = [sys.executable, "-m", "mobilegen", "serve", *args.checkpoint, "--port", str(port), "--device", "cpu",
           "--max-batch", str(args.max_batch), "--max-pending", str(2 * args.clients), "--timeout-s", "600",
           "--log-level", "warning"] + ([] if budget == "unbounded" else ["--max-tensor-mb", budget])  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        idle = vm(proc.pid, "VmHWM")
        served, seconds = asyncio.run(load(base, args.clients, args.duration, args.steps))
        rows = httpx.get(f"{base}/metrics").text
        return {"setting": budget, "idle_peak_mb": idle, "peak_rss_mb": vm(proc.pid, "VmHWM"), "requests": served,
                "requests_per_s": served / seconds, "metrics_batch_lines": [l for l in rows.splitlines()
                                                                             if l.startswith("mobilegen_batch_size_")]}  # fmt: skip
    finally:
        proc.terminate()
        proc.wait(60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", nargs="*", help="checkpoint (default: the untrained v2)")
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--clients", type=int, default=16, help="guided requests at once (2 rows each)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--duration", type=float, default=40)
    parser.add_argument("--budgets", default="128", help="comma-separated --max-tensor-mb values to compare with unbounded")
    args = parser.parse_args()
    print(f"machine: {machine_line(machine())}")
    print(f"--max-batch {args.max_batch}, {args.clients} guided clients, {args.steps} steps, {args.duration:g} s per setting")
    print(f"{'attention':<12} {'idle peak MB':>13} {'peak RSS MB':>12} {'requests':>9} {'req/s':>7}")
    for budget in ["unbounded", *args.budgets.split(",")]:
        r = run(args, budget)
        print(f"{r['setting']:<12} {r['idle_peak_mb']:>13.1f} {r['peak_rss_mb']:>12.1f} {r['requests']:>9} {r['requests_per_s']:>7.3f}")
        for line in r["metrics_batch_lines"]:
            print("   ", line)


if __name__ == "__main__":
    main()
