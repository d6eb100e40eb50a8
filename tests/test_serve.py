"""The inference server: the real uvicorn server on 127.0.0.1, spoken to over HTTP.

Every server runs the untrained default v2 (or small seeded checkpoints) with 2-3
sampling steps, so the file runs in well under a minute on 2 cores.
"""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import torch
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from mobilegen.errors import MobileGenError
from mobilegen.models.checkpoint import seeded_model
from mobilegen.serve import ModelSource, ServeConfig, parse_model_option
from mobilegen.serve.app import create_app, make_server
from mobilegen.serve.batcher import Cancelled, MicroBatcher
from mobilegen.serve.models import TorchRunner

ROOT = Path(__file__).resolve().parents[1]
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


@pytest.fixture(scope="module")
def url():
    with running(ServeConfig(**FAST, max_wait_ms=20)) as base:
        yield base


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


# --- the original app's call and the JSON API -------------------------------------------


def test_original_app_call_returns_a_64x64_png(url):
    # What `curl -F text=cat -F version=2` sends (multipart), and the urlencoded form.
    multipart = httpx.post(f"{url}/generate_image", files={"text": (None, "cat"), "version": (None, "2")})
    assert multipart.status_code == 200, multipart.text
    assert multipart.headers["content-type"] == "image/png"
    image = png(multipart.content)
    assert image.size == (64, 64) and image.mode == "RGB"
    assert multipart.headers["x-model"] == "v2" and multipart.headers["x-label"] == "cat"
    assert multipart.headers["x-steps"] == "2" and multipart.headers["x-sampler"] == "ddim"  # server defaults
    auto = httpx.post(f"{url}/generate_image", data={"text": "auto", "version": "v2"})
    assert auto.status_code == 200 and auto.headers["x-label"] == "automobile"
    assert png(auto.content).size == (64, 64)


def test_json_api_png_grid_and_base64(url):
    grid = httpx.post(f"{url}/v1/images", json={"label": "ship", "seed": 3, "steps": 2, "guidance": 3, "n": 4})
    assert grid.status_code == 200 and grid.headers["x-seed"] == "3"
    assert png(grid.content).size == (2 * 66 + 2, 2 * 66 + 2)  # 2x2 grid, 2 px padding
    body = httpx.post(f"{url}/v1/images", json={"label": 8, "seed": 3, "n": 2, "output": "json"}).json()
    assert body["label"] == "ship" and body["seed"] == 3 and body["n"] == 2 and body["steps"] == 2
    assert [png(base64.b64decode(b)).size for b in body["images"]] == [(64, 64)] * 2
    # No seed: the server picks one and says which, so the image can be reproduced.
    first = httpx.post(f"{url}/v1/images", json={"label": "none"})
    again = httpx.post(f"{url}/v1/images", json={"label": "none", "seed": int(first.headers["x-seed"])})
    assert first.content == again.content


def test_models_health_and_metrics(url):
    models = httpx.get(f"{url}/v1/models").json()
    assert models["default"] == "v2"
    (v2,) = models["models"]
    assert v2["arch"] == "student_v2" and v2["checkpoint_sha256"] is None and "NOT a trained" in v2["source"]
    assert len(v2["labels"]) == 10 and v2["defaults"] == {"sampler": "ddim", "steps": 2, "guidance": 3.0, "eta": 0.0}
    assert models["limits"]["max_n"] == 4
    assert httpx.get(f"{url}/healthz").json() == {"status": "ok", "models": ["v2"], "pending": 0, "sampling": 0}
    httpx.post(f"{url}/v1/images", json={"label": "cat"})
    m = metrics(url)
    assert total(m["mobilegen_http_requests_total"], route="/v1/images", status="200") >= 1
    assert m["mobilegen_batch_size_count"][(("model", "v2"),)] >= 2
    assert total(m["mobilegen_http_request_duration_seconds_count"], route="/v1/images") >= 1


# --- bad input ----------------------------------------------------------------------------


BAD_JSON = [
    ({"label": "unicorn"}, "label"),
    ({"label": "cat", "version": "7"}, "version"),
    ({"label": "cat", "steps": 0}, "steps"),
    ({"label": "cat", "steps": 21}, "steps"),
    ({"label": "cat", "n": 5}, "n"),
    ({"label": "cat", "n": 10**30}, "n"),
    ({"label": "cat", "guidance": 51}, "guidance"),
    ({"label": "cat", "guidance": -0.5}, "guidance"),
    ({"label": "cat", "sampler": "euler"}, "sampler"),
    ({"label": "cat", "sampler": "ddpm"}, "sampler"),  # 999 steps > max_steps 20
    ({"label": "cat", "steps": "5"}, "steps"),
    ({"label": "cat", "steps": 2.5}, "steps"),
    ({"label": "cat", "n": True}, "n"),
    ({"label": "cat", "seed": -1}, "seed"),
    ({"label": "cat", "output": "gif"}, "output"),
]


@pytest.mark.parametrize("payload,field", BAD_JSON)
def test_bad_json_request_gets_422_naming_the_field(url, payload, field):
    res = httpx.post(f"{url}/v1/images", json=payload)
    assert res.status_code == 422, res.text
    body = res.json()
    assert body["status"] == 422 and body["error"]
    assert [p["field"] for p in body["problems"]] == [field]


# Values a hostile client sends. "²" and "³" pass str.isdigit() but int() rejects them; "٣" (Arabic-Indic
# three) and "𝟗" (mathematical bold nine) pass both, so int() silently reads them as 3 and 9. Raw JSON
# constants (NaN, Infinity) are parsed by Python's json module into floats.
UNICODE_DIGITS = ["²", "³", "٣", "𝟗", "½", "Ⅻ", "١٢"]
NOT_AN_INT = [*UNICODE_DIGITS, "1", "", " ", "\x00", "0x1", "+1", "1e3", 1.5, -1, 2**63, 10**30, -(10**30),
              True, False, [], {}, [1], {"a": 1}, "NaN", "NaN!", "Infinity!", "-Infinity!", "1e400!"]  # fmt: skip
NOT_A_NUMBER = [*UNICODE_DIGITS, "1", "", -1, 10**400, 1e300, True, [], {}, "NaN!", "Infinity!", "-Infinity!", "1e400!"]
NOT_A_NAME = [*UNICODE_DIGITS, "\x00", "x" * 2000, 1, -1, 1.5, True, [], {}, "NaN!", "Infinity!"]
HOSTILE_JSON = {
    "label": [*UNICODE_DIGITS, "", " ", "\x00", "cat\x00", "unicorn", "10", "-2", "+1", "1.0", "0x1", 10, -2, 10**30,
              1.5, True, False, None, [], {}, ["cat"], "NaN!", "Infinity!", "x" * 5000],
    "version": [*UNICODE_DIGITS, "9", "v9", "v²", "\x00", 99, -1, 1.5, True, [], {}, "NaN!", "Infinity!"],
    "seed": NOT_AN_INT,
    "steps": [*NOT_AN_INT, 0, 21],
    "n": [*NOT_AN_INT, 0, 5],
    "guidance": [*NOT_A_NUMBER, 51, -0.5],
    "eta": [*NOT_A_NUMBER, 1.5, -0.1],
    "sampler": [*NOT_A_NAME, "DDIM", "euler", ""],
    "output": [*NOT_A_NAME, "PNG", "gif", ""],
}
HOSTILE_FORM = {
    "text": [*UNICODE_DIGITS, "\x00", "unicorn", "10", "-2", "+1", "1.0"],
    "version": [*UNICODE_DIGITS, "9", "v²", "\x00"],
    "seed": [*UNICODE_DIGITS, "-1", "1.5", "1e3", "abc", "+1", "0x1", "9" * 30, "", " "],
}


def json_body(field: str, value) -> bytes:
    """{"label": "cat", field: value}; a string ending in "!" is a raw JSON constant (NaN, Infinity, 1e400)."""
    body = {"label": "cat", field: value}
    if isinstance(value, str) and value.endswith("!"):
        return json.dumps({**body, field: "@"}).replace('"@"', value[:-1]).encode()
    return json.dumps(body).encode()


def test_hostile_values_in_every_field_get_422_naming_the_field(url):
    """Every field of both endpoints, a table of hostile values each: 422 with the field named, never 5xx."""
    cases = [(f"/v1/images {f}={v!r}", lambda f=f, v=v: httpx.post(f"{url}/v1/images", content=json_body(f, v),
              headers={"content-type": "application/json"}), f) for f, vs in HOSTILE_JSON.items() for v in vs]  # fmt: skip
    for field, values in HOSTILE_FORM.items():
        for value in values:
            form = {"text": "cat", field: value}
            cases.append((f"form {field}={value!r}", lambda d=form: httpx.post(f"{url}/generate_image", data=d), field))
            files = {k: (None, v) for k, v in form.items()}
            cases.append((f"multipart {field}={value!r}", lambda d=files: httpx.post(f"{url}/generate_image", files=d), field))
    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda case: case[1](), cases))
    wrong = []
    for (name, _, field), res in zip(cases, responses):
        body = res.json() if res.headers.get("content-type") == "application/json" else {}
        fields = [p.get("field") for p in body.get("problems", [])]
        if res.status_code != 422 or field not in fields or not body.get("error"):
            wrong.append(f"{name}: {res.status_code} {res.text[:120] if body else res.headers.get('content-type')}")
    assert not wrong, f"{len(wrong)} of {len(cases)} hostile requests not a 422 naming the field:\n" + "\n".join(wrong)
    assert total(metrics(url)["mobilegen_http_requests_total"], status="500") == 0
    assert_healthy(url)


def test_422_lists_allowed_values_and_server_still_answers(url):
    label = httpx.post(f"{url}/v1/images", json={"label": "unicorn"}).json()["problems"][0]
    assert label["allowed"][:10] == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    assert "auto" in label["allowed"]
    version = httpx.post(f"{url}/generate_image", data={"text": "cat", "version": "1"})
    assert version.status_code == 422 and version.json()["problems"][0]["allowed"] == ["v2"]
    assert httpx.post(f"{url}/generate_image", data={"text": "unicorn", "version": "2"}).status_code == 422
    assert httpx.post(f"{url}/generate_image", data={"version": "2"}).status_code == 422
    assert_healthy(url)


def raw_http(base: str, data: bytes) -> bytes:
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


def test_malformed_request_storm_leaves_the_server_healthy(url):
    post = lambda path, **kw: lambda: httpx.post(f"{url}{path}", **kw).status_code  # noqa: E731
    big = b'{"label": "cat", "pad": "' + b"x" * 20000 + b'"}'
    calls = [
        post("/v1/images", content=b"{not json"),
        post("/v1/images", content=b""),
        post("/v1/images", content=b"\xff\xfe\x00garbage"),
        post("/v1/images", content=b"[" * 5000 + b"]" * 5000),  # deep nesting, under the size limit
        post("/v1/images", json=[1, 2, 3]),
        post("/v1/images", json="cat"),
        post("/v1/images", json={"label": None}),
        post("/v1/images", json={"label": {"$gt": ""}}),
        post("/v1/images", json={"label": "cat", "n": 10**6, "steps": 10**6}),
        post("/v1/images", content=b'{"label": "cat", "guidance": NaN}'),
        post("/v1/images", content=b'{"label": "cat", "guidance": Infinity}'),
        post("/v1/images", json={"label": "cat", "version": ["2"]}),
        post("/v1/images", json={"label": "cat", "evil": 1}),
        post("/v1/images", content=big),  # 413
        post("/v1/images", content=iter([b"x" * 4096] * 4)),  # chunked, no Content-Length: 413
        post("/generate_image", data={"text": "x" * 5000}),
        post("/generate_image", files={"text": ("cat.txt", b"cat")}),
        post("/generate_image", content=b"--nope\r\n\r\n", headers={"content-type": "multipart/form-data; boundary=zz"}),
        post("/generate_image", json={"text": "cat"}),
        post("/generate_image", data={"text": "cat", "seed": "abc"}),
        lambda: httpx.get(f"{url}/generate_image").status_code,
        lambda: httpx.delete(f"{url}/v1/images").status_code,
        lambda: httpx.get(f"{url}/../../etc/passwd").status_code,
    ]
    raw = [
        b"GARBAGE\r\n\r\n",
        b"POST /v1/images HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n" + b'{"label": "ca',  # truncated body
        b"POST /v1/images HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
        b"POST /v1/images HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\n\r\n{}",
        b"POST /generate_image HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
        b"Content-Length: 40\r\n\r\n--b\r\nContent-Disposition: form-data; na",  # truncated multipart
    ]
    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda f: f(), calls * 2))
        list(pool.map(lambda d: raw_http(url, d), raw * 2))
    assert all(400 <= s < 500 for s in statuses), statuses
    assert 413 in statuses and 404 in statuses and 405 in statuses
    assert statuses.count(422) >= 30
    assert_healthy(url)
    m = metrics(url)
    assert total(m["mobilegen_http_errors_total"], kind="validation") >= 30
    assert total(m["mobilegen_http_errors_total"], kind="too_large") >= 2
    assert total(m["mobilegen_http_requests_total"], status="500") == 0


def test_a_repeated_field_is_refused_not_read_twice(url):
    """Python's json keeps the last of a repeated key, other parsers the first: one request, two readings."""
    res = httpx.post(f"{url}/v1/images", content=b'{"label": "cat", "label": "dog"}', headers={"content-type": "application/json"})
    assert res.status_code == 422 and res.json()["problems"][0]["field"] == "label", res.text
    assert "more than once" in res.json()["error"]
    for send in (lambda d: httpx.post(f"{url}/generate_image", content=d, headers={"content-type": "application/x-www-form-urlencoded"}),
                 lambda d: httpx.post(f"{url}/generate_image", files=[("text", (None, "cat")), ("text", (None, "dog"))])):  # fmt: skip
        res = send(b"text=cat&text=dog")
        assert res.status_code == 422 and res.json()["problems"][0]["field"] == "text", res.text
        assert "given 2 times" in res.json()["error"]


@pytest.mark.parametrize("field, allowed", [("steps", "1..20"), ("seed", "0..9223372036854775807"), ("guidance", "0..50"),
                                            ("label", "use a class name")])  # fmt: skip
def test_a_5000_digit_number_gets_a_422_that_says_what_is_allowed(url, field, allowed):
    body = b'{"label": "cat", "%s": %s}' % (field.encode(), b"9" * 5000)
    if field == "label":
        body = b'{"label": %s}' % (b"9" * 5000)
    res = httpx.post(f"{url}/v1/images", content=body, headers={"content-type": "application/json"})
    assert res.status_code == 422 and res.json()["problems"][0]["field"] == field, res.text
    assert allowed in res.json()["error"] and "an integer of 5000 digits" in res.json()["error"]


def test_a_20_mb_body_gets_a_readable_413(url):
    """The client is still sending when the server refuses: it must read the 413, not a reset connection."""
    host, port = url.removeprefix("http://").split(":")
    size = 20 * 2**20
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(b"POST /v1/images HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n" % size)  # fmt: skip
        chunk = b"x" * 2**16
        for _ in range(size // len(chunk)):
            sock.sendall(chunk)
        answer = b""
        while data := sock.recv(65536):
            answer += data
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"over this server's limit of 8192 bytes" in answer
    for send in (lambda: httpx.post(f"{url}/v1/images", content=b"x" * size),  # Content-Length
                 lambda: httpx.post(f"{url}/v1/images", content=iter([b"x" * 2**16] * (size // 2**16)))):  # chunked
        res = send()
        assert res.status_code == 413 and "limit of 8192 bytes" in res.json()["error"]
    assert_healthy(url)


# --- abandoned work: hang-ups and timeouts free the model --------------------------------
# CPU on purpose (also where CUDA is present): the counts below need a model call to take
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


def test_clients_that_hang_up_stop_taking_model_calls():
    """12 heavy requests, each with one denoiser call queued or running; the clients hang up.
    Only the model call already running may finish: the other queued calls are dropped,
    no request takes another step, and a new request is served after that one call."""
    with running(ServeConfig(**ABANDON)) as base:
        clients = [post_and_walk_away(base, {"label": i % 10, "seed": i, **HEAVY}) for i in range(12)]
        wait_until(lambda: httpx.get(f"{base}/healthz").json()["sampling"] == 12 and model_counts(base)[0] >= 2, 60)
        before, _, call_s = model_counts(base)
        for sock in clients:
            sock.close()
        start = time.monotonic()
        new = httpx.post(f"{base}/v1/images", json={"label": "cat", "seed": 1, "steps": 2}, timeout=60)
        served = time.monotonic() - start
        wait_idle(base, 10)
        after, dropped, _ = model_counts(base)
        codes = statuses(base)
    assert new.status_code == 200 and png(new.content).size == (64, 64)
    ran = after - before - 2  # the new request made 2 calls
    # Without dropping, all 12 queued calls ran (6 model calls) and only then did the loops stop.
    assert ran <= 4, f"{ran:.0f} denoiser calls of hung-up requests ran after the hang-up"
    assert dropped >= 12 - 4
    assert served < 2 * call_s + 1.5, f"new request took {served:.2f} s; a model call takes {call_s:.2f} s"
    assert codes["499"] == 12 and codes["5xx"] == 0


def test_requests_past_the_timeout_get_504_and_free_the_model():
    """--timeout-s 2: every heavy request gets a 504; its queued calls are dropped then."""
    with running(ServeConfig(**{**ABANDON, "timeout_s": 2.0})) as base:
        post = lambda i: httpx.post(f"{base}/v1/images", json={"label": i % 10, "seed": i, **HEAVY}, timeout=60)  # noqa: E731
        with ThreadPoolExecutor(12) as pool:
            timed_out = list(pool.map(post, range(12)))
        before, _, call_s = model_counts(base)  # every request was cancelled before its 504 was sent
        start = time.monotonic()
        new = httpx.post(f"{base}/v1/images", json={"label": "cat", "seed": 1, "steps": 2}, timeout=60)
        served = time.monotonic() - start
        wait_idle(base, 10)
        after, dropped, _ = model_counts(base)
        codes = statuses(base)
    assert [r.status_code for r in timed_out] == [504] * 12
    assert all("timeout" in r.json()["error"] for r in timed_out)
    assert new.status_code == 200
    ran = after - before - 2
    assert ran <= 4, f"{ran:.0f} denoiser calls of timed-out requests ran after their 504"
    assert dropped >= 12 - 4
    assert served < 2 * call_s + 1.5, f"new request took {served:.2f} s; a model call takes {call_s:.2f} s"
    assert codes["504"] == 12 and codes["200"] == 1


@pytest.mark.slow
def test_burst_of_100_with_half_hanging_up_then_a_new_request_within_10_s():
    """Issue 12's acceptance line, with the default max batch (32 rows): 50 light requests
    that wait for their answers and 50 heavy ones whose clients hang up mid-request (10 of
    them mid-upload); then a new 5-step request. The default --max-pending (128) takes all 100
    at once (at 64, 36 of them got a 503 by design)."""
    config = ServeConfig(**{**FAST, "device": "cpu", "timeout_s": 120})
    stay = [{"label": i % 10, "seed": i, "steps": 1, "guidance": 0} for i in range(50)]  # 1 row, 1 call each
    answered = threading.Event()

    def leave(i: int) -> None:
        sock = post_and_walk_away(base, {"label": i % 10, "seed": i, **HEAVY}, upload_all=i % 5 != 0)
        answered.wait(120)  # still generating (20 steps): hang up now
        sock.close()

    with running(config) as base:
        with ThreadPoolExecutor(100) as pool:
            stayers = [pool.submit(lambda p: httpx.post(f"{base}/v1/images", json=p, timeout=120), p) for p in stay]
            leavers = [pool.submit(leave, i) for i in range(50)]
            stayed = [f.result() for f in stayers]
            before = model_counts(base)[0]
            answered.set()
            for f in leavers:
                f.result()
        start = time.monotonic()
        new = httpx.post(f"{base}/v1/images", json={"label": "ship", "seed": 7, "steps": 5}, timeout=120)
        served = time.monotonic() - start
        wait_idle(base, 10)
        after, dropped, call_s = model_counts(base)
        codes = statuses(base)
    assert [r.status_code for r in stayed] == [200] * 50
    assert new.status_code == 200 and png(new.content).size == (64, 64)
    assert served < 10, f"the new 5-step request took {served:.1f} s (a model call: {call_s:.2f} s)"
    assert codes["499"] == 50 and codes["200"] == 51 and codes["5xx"] == 0
    ran = after - before - 5
    # 40 hung-up requests had a call queued; a 32-row model call holds 8 of them.
    assert ran <= 16, f"{ran:.0f} denoiser calls of hung-up requests ran after the hang-up"
    assert dropped >= 40 - 16


# --- throughput and determinism -----------------------------------------------------------


def test_16_concurrent_requests_all_succeed_and_share_model_calls(url):
    before = metrics(url)

    def one(i: int):
        return httpx.post(f"{url}/v1/images", json={"label": i % 10, "seed": i}, timeout=60)

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, range(16)))
    assert [r.status_code for r in results] == [200] * 16
    assert all(png(r.content).size == (64, 64) for r in results)
    after = metrics(url)
    v2 = (("model", "v2"),)
    calls = after["mobilegen_batch_requests_sum"][v2] - before["mobilegen_batch_requests_sum"][v2]
    runs = after["mobilegen_batch_requests_count"][v2] - before["mobilegen_batch_requests_count"][v2]
    assert calls == 16 * 2  # every request made 2 denoiser calls (2 steps)
    assert runs < calls / 2, f"{calls} denoiser calls ran as {runs} model calls: not batched"


REQUESTS = [
    {"label": "cat", "seed": 11, "steps": 3},
    {"label": "ship", "seed": 12, "steps": 2, "n": 2},
    {"label": "auto", "seed": 13, "steps": 3, "guidance": 0},  # a single row: the padded path
    {"label": "none", "seed": 14, "steps": 2, "eta": 1.0},
    {"label": "frog", "seed": 15, "steps": 3, "n": 2, "guidance": 0},
]


def test_same_seed_same_png_bytes_batched_or_not():
    """One server: each request alone (nothing else running, so every denoiser call is
    its own model call), then the same requests all at once, mixed with other traffic
    so they share model calls at different timesteps."""
    with running(ServeConfig(**FAST, max_batch=64, max_wait_ms=50)) as base:
        alone = [httpx.post(f"{base}/v1/images", json=r).content for r in REQUESTS]
        before = metrics(base)
        v2 = (("model", "v2"),)
        assert before["mobilegen_batch_requests_sum"][v2] == before["mobilegen_batch_requests_count"][v2] == 13
        noise = [{"label": "dog", "seed": 100 + i, "steps": 2 + i % 2} for i in range(3)]
        with ThreadPoolExecutor(8) as pool:
            together = list(pool.map(lambda r: httpx.post(f"{base}/v1/images", json=r, timeout=60), REQUESTS + noise))
        after = metrics(base)
    calls = after["mobilegen_batch_requests_sum"][v2] - before["mobilegen_batch_requests_sum"][v2]
    runs = after["mobilegen_batch_requests_count"][v2] - before["mobilegen_batch_requests_count"][v2]
    assert calls / runs > 2, "the requests did not share model calls"
    assert [r.status_code for r in together] == [200] * 8
    for one, batched, request in zip(alone, together, REQUESTS):
        assert one == batched.content, f"{request}: batched PNG differs from the unbatched one"


# --- timeouts, CORS, several models -------------------------------------------------------


@pytest.fixture(scope="module")
def two_models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpts")
    paths = {}
    for arch in ("student_v1", "student_v2"):
        paths[arch] = folder / f"{arch}.pt"
        torch.save(seeded_model(arch, seed=1).model.state_dict(), paths[arch])
    return paths


def test_several_models_cors_and_timeout(two_models):
    config = ServeConfig(
        models=(parse_model_option(f"v1={two_models['student_v1']}"), ModelSource(two_models["student_v2"])),
        steps=2, max_steps=200, timeout_s=1.5, cors_origins=("https://app.example",), log_level="warning",
    )  # fmt: skip
    with running(config) as base:
        models = httpx.get(f"{base}/v1/models").json()
        assert [m["name"] for m in models["models"]] == ["v1", "v2"]  # the bare checkpoint is named after its arch
        assert models["models"][0]["arch"] == "student_v1" and len(models["models"][0]["checkpoint_sha256"]) == 64
        v1 = httpx.post(f"{base}/generate_image", data={"text": "cat", "version": "1"})
        v2 = httpx.post(f"{base}/generate_image", data={"text": "cat", "version": "2", "seed": "5"})
        assert (v1.headers["x-model"], v2.headers["x-model"]) == ("v1", "v2") and png(v1.content).size == (64, 64)

        allowed = httpx.get(f"{base}/healthz", headers={"Origin": "https://app.example"}).headers
        assert allowed["access-control-allow-origin"] == "https://app.example"
        assert "access-control-allow-credentials" not in allowed
        other = httpx.get(f"{base}/healthz", headers={"Origin": "https://evil.example"}).headers
        assert "access-control-allow-origin" not in other

        start = time.monotonic()
        slow = httpx.post(f"{base}/v1/images", json={"label": "cat", "steps": 200, "n": 4}, timeout=30)
        assert slow.status_code == 504 and "timeout" in slow.json()["error"]
        assert time.monotonic() - start < 5
        host, port = base.removeprefix("http://").split(":")
        hung = socket.create_connection((host, int(port)), timeout=10)  # a client that never finishes its body
        hung.sendall(b"POST /v1/images HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
        assert b" 504 " in hung.recv(4096).split(b"\r\n")[0]
        hung.close()
        wait_idle(base, 5)
        assert_healthy(base)
    with running(ServeConfig(**FAST)) as base:  # no CORS unless configured
        plain = httpx.get(f"{base}/healthz", headers={"Origin": "https://app.example"}).headers
        assert "access-control-allow-origin" not in plain


def test_config_is_validated():
    twice = (ModelSource(None, "a"), ModelSource(None, "a"))
    for bad in (dict(steps=300), dict(max_n=0), dict(sampler="ddpm"), dict(guidance=-1), dict(device="tpu"),
                dict(cors_origins=("app.example/path",)), dict(models=twice)):  # fmt: skip
        with pytest.raises(MobileGenError):
            ServeConfig(**bad)
    for bad in ("v1", "=x.pt", "bad name=x.pt"):
        with pytest.raises(MobileGenError):
            parse_model_option(bad)
    assert parse_model_option("v1=runs/v1.pt") == ModelSource(Path("runs/v1.pt"), "v1")
    with pytest.raises(MobileGenError, match="not found"):
        create_app(ServeConfig(models=(ModelSource(Path("/nonexistent/ckpt.pt")),)))


# --- the batcher on its own ---------------------------------------------------------------


def test_fixed_rows_runner_pads_and_splits_without_changing_a_row():
    """What serve does on CUDA (every call exactly `rows` rows), run on the CPU here:
    5 rows as chunks of 4 (the last padded) give the rows of one plain call."""
    model = seeded_model("student_v2").model
    x, t, y = torch.randn(5, 3, 64, 64), torch.tensor([1.0, 300, 999, 20, 500]), torch.tensor([0, -1, 9, 3, -1])
    fixed = TorchRunner(model, torch.device("cpu"), rows=4)
    plain = TorchRunner(seeded_model("student_v2").model, torch.device("cpu"))
    assert torch.equal(fixed(x, t, y), plain(x, t, y))
    assert torch.equal(fixed(x[:1], t[:1], y[:1]), plain(x[:1], t[:1], y[:1]))
    with pytest.raises(ValueError, match="at least 2"):
        TorchRunner(model, torch.device("cpu"), rows=1)


def test_batcher_merges_waiting_calls_and_survives_errors():
    seen = []

    def run(x, t, y):
        seen.append(len(t))
        if (y < 0).any():
            raise RuntimeError("model failed")
        return x * 2 + t[:, None, None, None]

    batcher = MicroBatcher(run, max_rows=8, max_wait_s=0.5)
    try:
        barrier = threading.Barrier(4)

        def call(i):
            with batcher.session() as denoise:
                barrier.wait()
                return denoise(torch.full((2, 1, 1, 1), float(i)), torch.full((2,), float(i)), torch.zeros(2))

        with ThreadPoolExecutor(4) as pool:
            outs = list(pool.map(call, range(4)))
        assert [o.flatten().tolist() for o in outs] == [[3.0 * i] * 2 for i in range(4)]
        assert seen == [8]  # four sessions, one model call, no waiting once all four were queued
        with pytest.raises(RuntimeError, match="model failed"):
            batcher(torch.zeros(1, 1, 1, 1), torch.zeros(1), -torch.ones(1))
        assert batcher(torch.ones(1, 1, 1, 1), torch.zeros(1), torch.zeros(1)).item() == 2.0
        cancelled = threading.Event()
        cancelled.set()
        with batcher.session(cancelled) as denoise, pytest.raises(Cancelled):
            denoise(torch.zeros(1, 1, 1, 1), torch.zeros(1), torch.zeros(1))
    finally:
        batcher.close()
    assert not batcher.alive


def test_batcher_cancel_drops_a_queued_call_at_once():
    """One call runs (held inside the model); two more are queued. Cancelling one session
    fails its queued call at once, while the model is still busy; it never runs, and
    that session's next call is refused before it is queued."""
    release, seen, drops = threading.Event(), [], []

    def run(x, t, y):
        seen.append(t.tolist())
        release.wait(10)
        return x

    batcher = MicroBatcher(run, max_rows=1, max_wait_s=0, on_drop=drops.append)
    try:
        events = [threading.Event() for _ in range(3)]

        def call(i):
            with batcher.session(events[i]) as denoise:
                return denoise(torch.zeros(1, 1, 1, 1), torch.full((1,), float(i)), torch.zeros(1))

        with ThreadPoolExecutor(3) as pool:
            first = pool.submit(call, 0)
            wait_until(lambda: len(seen) == 1, 5)  # call 0 is inside the model
            queued = [pool.submit(call, i) for i in (1, 2)]
            wait_until(lambda: batcher.queued == 2, 5)  # both calls are waiting
            batcher.cancel(events[1])
            with pytest.raises(Cancelled):
                queued[0].result(timeout=1)  # at once: the model has not finished call 0
            assert not release.is_set() and drops == [1]
            release.set()
            assert first.result(timeout=5).shape == (1, 1, 1, 1) and queued[1].result(timeout=5) is not None
        assert seen == [[0.0], [2.0]]  # the cancelled call never reached the model
        with batcher.session(events[1]) as denoise, pytest.raises(Cancelled):
            denoise(torch.zeros(1, 1, 1, 1), torch.zeros(1), torch.zeros(1))
        assert seen == [[0.0], [2.0]]
    finally:
        batcher.close()


def test_serve_entry_point_in_its_own_process():
    """serve(config) as the CLI will call it: a separate process, then the README's curl calls."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    code = ("from mobilegen.serve import ServeConfig, serve; "
            f"serve(ServeConfig(port={port}, steps=2, log_level='warning'))")  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stdout.read().decode()
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server process did not come up"
            time.sleep(0.1)
        cat = httpx.post(f"{base}/generate_image", files={"text": (None, "cat"), "version": (None, "2")})
        assert cat.status_code == 200 and png(cat.content).size == (64, 64)
        ships = httpx.post(f"{base}/v1/images", json={"label": "ship", "seed": 3, "steps": 2, "guidance": 3, "n": 4})
        assert ships.status_code == 200 and png(ships.content).size == (134, 134)
        assert json.loads(httpx.get(f"{base}/v1/models").text)["default"] == "v2"
    finally:
        proc.terminate()
        # uvicorn shuts down gracefully on SIGTERM, then re-raises it: exit status -SIGTERM.
        assert proc.wait(timeout=20) in (0, -signal.SIGTERM)


def test_a_state_that_turns_non_finite_gets_a_clear_500_and_no_image(tmp_path):
    """Finite weights pass the loader; scaled up they overflow float32 inside the forward pass.
    The sampler stops at that step and the server answers with the reason, never a black PNG."""
    state = seeded_model("student_v2", seed=1).model.state_dict()
    state["outc.weight"] = state["outc.weight"] * 3e38
    path = tmp_path / "overflow.pt"
    torch.save(state, path)
    with running(ServeConfig(models=(ModelSource(path),), steps=2, log_level="critical")) as base:
        res = httpx.post(f"{base}/v1/images", json={"label": "cat", "seed": 1}, timeout=60)
        assert res.status_code == 500 and res.headers["content-type"] == "application/json"
        assert "non-finite state" in res.json()["error"]
        assert httpx.get(f"{base}/healthz").status_code == 200
