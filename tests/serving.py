"""The inference server in tests: the real uvicorn server in a thread on a free loopback port,
and readers of its /metrics and /healthz."""

from __future__ import annotations

import io
import json
import socket
import threading
import time
from contextlib import contextmanager

import httpx
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from mobilegen.serve import ServeConfig
from mobilegen.serve.app import create_app, make_server

FAST = dict(steps=2, max_steps=20, max_n=4, timeout_s=30, max_body_bytes=8192, log_level="warning")


@contextmanager
def running(config: ServeConfig):
    """The real uvicorn server in a thread, on a free loopback port bound here (no race)."""
    app = create_app(config)
    server = make_server(app, config)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=20)
        sock.close()


def png(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def metrics(base: str) -> dict:
    """{sample name: {labels tuple: value}} from /metrics, parsed by prometheus_client's own parser."""
    res = httpx.get(f"{base}/metrics")
    assert res.status_code == 200 and res.headers["content-type"].startswith("text/plain")
    out: dict = {}
    for family in text_string_to_metric_families(res.text):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def total(values: dict, **labels) -> float:
    return sum(v for k, v in values.items() if all((name, value) in k for name, value in labels.items()))


def assert_healthy(base: str) -> None:
    assert httpx.get(f"{base}/healthz").json()["status"] == "ok"
    res = httpx.post(f"{base}/v1/images", json={"label": "cat", "seed": 1})
    assert res.status_code == 200 and png(res.content).size == (64, 64)


def raw_http(base: str, data: bytes) -> bytes:
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


# Abandoned work (hang-ups, timeouts). # CPU on purpose (also where CUDA is present): the counts below need a model call to take
# far longer than the server takes to notice a hang-up (measured well under 1 ms).
ABANDON = {**FAST, "device": "cpu", "max_batch": 8, "max_pending": 128}
HEAVY = {"steps": 20, "n": 2}  # guidance 3: 4 rows a call, so a call of 8 rows holds 2 requests


def wait_idle(base: str, seconds: float) -> float:
    start = time.monotonic()
    while (health := httpx.get(f"{base}/healthz").json())["pending"] or health["sampling"]:
        assert time.monotonic() - start < seconds, f"a request is still generating: {health}"
        time.sleep(0.05)
    return time.monotonic() - start


def wait_until(check, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "timed out waiting for the server"
        time.sleep(0.02)


def model_counts(base: str) -> tuple[float, float, float]:
    """(denoiser calls run, queued calls dropped, mean seconds per model call) from /metrics."""
    m, v2 = metrics(base), (("model", "v2"),)
    calls, runs = m.get("mobilegen_batch_requests_sum", {}).get(v2, 0), m.get("mobilegen_batch_requests_count", {}).get(v2, 0)
    dropped = m.get("mobilegen_denoiser_calls_dropped_total", {}).get(v2, 0)
    seconds = m.get("mobilegen_model_call_duration_seconds_sum", {}).get(v2, 0)
    return calls, dropped, seconds / max(runs, 1)


def post_and_walk_away(base: str, payload: dict, upload_all: bool = True) -> socket.socket:
    """A client that posts a request (or only half its body) and never reads the answer."""
    host, port = base.removeprefix("http://").split(":")
    body = json.dumps(payload).encode()
    sock = socket.create_connection((host, int(port)), timeout=10)
    head = b"POST /v1/images HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
    sock.sendall(head + (body if upload_all else body[: len(body) // 2]))
    return sock


def statuses(base: str) -> dict[str, float]:
    requests = metrics(base)["mobilegen_http_requests_total"]
    return {s: total(requests, route="/v1/images", status=s) for s in ("200", "499", "504")} | {
        "5xx": sum(v for k, v in requests.items() if dict(k)["status"].startswith("5"))}  # fmt: skip
