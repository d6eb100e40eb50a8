"""The inference server: the real uvicorn server on 127.0.0.1, spoken to over HTTP.

Every server runs the untrained default v2 (or small seeded checkpoints) with 2-3
sampling steps, so the file runs in well under a minute on 2 cores.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import torch
from helpers import ROOT
from serving import (
    ABANDON,
    FAST,
    HEAVY,
    assert_healthy,
    metrics,
    model_counts,
    png,
    post_and_walk_away,
    raw_http,
    running,
    statuses,
    total,
    wait_idle,
    wait_until,
)

from mobilegen.models.checkpoint import seeded_model
from mobilegen.serve import ModelSource, ServeConfig, parse_model_option


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
    for send in (
        lambda: httpx.post(f"{url}/v1/images", content=b"x" * size),  # Content-Length
        lambda: httpx.post(f"{url}/v1/images", content=iter([b"x" * 2**16] * (size // 2**16))),
    ):  # chunked
        res = send()
        assert res.status_code == 413 and "limit of 8192 bytes" in res.json()["error"]
    assert_healthy(url)


# --- abandoned work: hang-ups and timeouts free the model --------------------------------


@pytest.mark.alone  # timed against a model call or a deadline
@pytest.mark.slow  # seconds: the quick suite stays under 3 minutes; CI runs it
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


def call_seconds(rows: int) -> float:
    """One warm call of the served model (the untrained default v2) on `rows` rows, on this machine."""
    import torch

    from mobilegen.models.checkpoint import default_model

    model, x = default_model().model.eval(), torch.randn(rows, 3, 64, 64)
    t, y = torch.full((rows,), 500), torch.zeros(rows, dtype=torch.long)
    with torch.inference_mode():
        model(x, t, y)
        start = time.monotonic()
        model(x, t, y)
    return time.monotonic() - start


@pytest.mark.alone  # timed against a model call or a deadline
@pytest.mark.slow  # seconds: the quick suite stays under 3 minutes; CI runs it
def test_requests_past_the_timeout_get_504_and_free_the_model():
    """--timeout-s 2 (longer on a slow machine: 4 model calls): every heavy request gets a 504; its
    queued calls are dropped then, and a new light request is served within the same timeout."""
    with running(ServeConfig(**{**ABANDON, "timeout_s": max(2.0, 4 * call_seconds(ABANDON["max_batch"]))})) as base:
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


@pytest.mark.alone  # timed against a model call or a deadline
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


@pytest.mark.slow  # seconds: the quick suite stays under 3 minutes; CI runs it
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
    # a histogram has no sample before its first observation (this test may be the server's first user)
    calls = after["mobilegen_batch_requests_sum"][v2] - before.get("mobilegen_batch_requests_sum", {}).get(v2, 0)
    runs = after["mobilegen_batch_requests_count"][v2] - before.get("mobilegen_batch_requests_count", {}).get(v2, 0)
    assert calls == 16 * 2  # every request made 2 denoiser calls (2 steps)
    assert runs < calls / 2, f"{calls} denoiser calls ran as {runs} model calls: not batched"


REQUESTS = [
    {"label": "cat", "seed": 11, "steps": 3},
    {"label": "ship", "seed": 12, "steps": 2, "n": 2},
    {"label": "auto", "seed": 13, "steps": 3, "guidance": 0},  # a single row: the padded path
    {"label": "none", "seed": 14, "steps": 2, "eta": 1.0},
    {"label": "frog", "seed": 15, "steps": 3, "n": 2, "guidance": 0},
]


@pytest.mark.slow  # seconds: the quick suite stays under 3 minutes; CI runs it
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
    # a histogram has no sample before its first observation (this test may be the server's first user)
    calls = after["mobilegen_batch_requests_sum"][v2] - before.get("mobilegen_batch_requests_sum", {}).get(v2, 0)
    runs = after["mobilegen_batch_requests_count"][v2] - before.get("mobilegen_batch_requests_count", {}).get(v2, 0)
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


@pytest.mark.alone  # timed against a model call or a deadline
@pytest.mark.slow  # seconds: the quick suite stays under 3 minutes; CI runs it
def test_several_models_cors_and_timeout(two_models):
    # timeout 6 s: a 2-step image of either model fits on a loaded 2-core machine; 200 steps x 8 rows never does
    config = ServeConfig(
        models=(parse_model_option(f"v1={two_models['student_v1']}"), ModelSource(two_models["student_v2"])),
        steps=2, max_steps=200, timeout_s=6, cors_origins=("https://app.example",), log_level="warning",
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
        assert time.monotonic() - start < 6 + 3.5
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


@pytest.mark.slow  # seconds: the quick suite stays under 3 minutes; CI runs it
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
        cat = httpx.post(f"{base}/generate_image", files={"text": (None, "cat"), "version": (None, "2")}, timeout=60)
        assert cat.status_code == 200 and png(cat.content).size == (64, 64)
        ships = httpx.post(f"{base}/v1/images", json={"label": "ship", "seed": 3, "steps": 2, "guidance": 3, "n": 4}, timeout=60)
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
