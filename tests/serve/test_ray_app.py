"""The server as a Ray Serve application: a real local Ray cluster on 127.0.0.1 with 2 replicas.

The cluster tests run first with our micro-batcher in every replica, then (the last
ones, on the same cluster) with `--ray-batching serve`: @serve.batch on whole requests.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest
import torch
from helpers import ROOT

from mobilegen.diffusion import SamplerConfig
from mobilegen.errors import MobileGenError
from mobilegen.serve import ServeConfig, create_app
from mobilegen.serve.app import MicroBatched
from mobilegen.serve.batcher import Cancelled
from mobilegen.serve.models import load_models
from mobilegen.serve.request_batch import Pending, WholeRequests, batch_rows, sample_together
from mobilegen.serve.validate import Job

ray = pytest.importorskip("ray")
httpx = pytest.importorskip("httpx")
from ray import serve  # noqa: E402

from mobilegen.serve.ray_app import APP_NAME, RayOptions, check_reachable, start, stop  # noqa: E402

REQUEST = {"label": "cat", "seed": 7, "steps": 2, "guidance": 2.0, "n": 1}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster():
    config = ServeConfig(port=free_port(), device="cpu", steps=2, max_wait_ms=5.0)
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", object_store_memory=200 << 20)
    try:
        start(config, RayOptions(replicas=2, start_timeout_s=240))
        yield config, f"http://127.0.0.1:{config.port}"
    finally:
        stop()


def generate(url: str, body: dict = REQUEST, timeout: float = 120) -> httpx.Response:
    return httpx.post(f"{url}/v1/images", json=body, timeout=timeout)


def from_both_replicas(send, rounds: int = 6) -> list[httpx.Response]:
    """Responses of `send()` rounds until both replicas have answered. Ray's router picks a replica per
    request from cached queue lengths, so a burst may land on one replica when probes are slow (a busy
    machine): more rounds, not a looser check. Every response is returned, so each one is checked."""
    responses: list[httpx.Response] = []
    for _ in range(rounds):
        responses += send()
        if len({r.headers.get("X-Replica") for r in responses} - {None}) == 2:
            break
    return responses


def replica_values(url: str, sample: str = 'mobilegen_images_generated_total{model="v2"}') -> dict[str, float]:
    """One sample's value per replica, read from /metrics (each scrape answers from one replica)."""
    seen: dict[str, float] = {}
    for _ in range(40):
        text = httpx.get(f"{url}/metrics", timeout=30).text
        replica = re.search(r'mobilegen_replica_info\{replica="([^"]+)"\}', text).group(1)
        value = re.search(re.escape(sample) + r" ([0-9.e+]+)", text)
        seen[replica] = float(value.group(1)) if value else 0.0
        if len(seen) == 2:
            break
    return seen


@pytest.mark.slow  # a Ray cluster on 127.0.0.1
def test_requests_spread_over_both_replicas_and_metrics_show_it(cluster):
    _, url = cluster
    with ThreadPoolExecutor(8) as pool:
        responses = from_both_replicas(lambda: list(pool.map(lambda i: generate(url, {**REQUEST, "seed": i}), range(12))))
    assert all(r.status_code == 200 and r.headers["content-type"] == "image/png" for r in responses)
    replicas = {r.headers["X-Replica"] for r in responses}
    assert len(replicas) == 2, replicas
    per_replica = replica_values(url)
    assert set(per_replica) == replicas and all(v > 0 for v in per_replica.values()), per_replica
    assert sum(per_replica.values()) >= len(responses)


@pytest.mark.slow  # a Ray cluster on 127.0.0.1
def test_same_request_same_png_on_every_replica_and_single_process(cluster):
    config, url = cluster
    by_replica: dict[str, bytes] = {}
    for _ in range(30):
        r = generate(url)
        assert r.status_code == 200
        by_replica.setdefault(r.headers["X-Replica"], r.content)
        if len(by_replica) == 2:
            break
    assert len(by_replica) == 2 and len(set(by_replica.values())) == 1
    from fastapi.testclient import TestClient

    with TestClient(create_app(config)) as client:
        single = client.post("/v1/images", json=REQUEST)
    assert single.status_code == 200 and single.content == next(iter(by_replica.values()))


@pytest.mark.slow  # a Ray cluster on 127.0.0.1
def test_validation_and_limits_are_the_apps(cluster):
    config, url = cluster
    bad = generate(url, {**REQUEST, "n": config.max_n + 1})
    assert bad.status_code == 422 and "n" in bad.text
    assert httpx.get(f"{url}/v1/models", timeout=30).json()["limits"]["max_n"] == config.max_n
    assert httpx.get(f"{url}/nope", timeout=30).status_code == 404


@pytest.mark.slow  # a Ray cluster on 127.0.0.1
def test_killing_a_replica_loses_only_its_in_flight_requests(cluster):
    _, url = cluster
    victim = generate(url).headers["X-Replica"]
    actor = next(a for a in ray.util.list_named_actors(all_namespaces=True) if victim in a["name"])
    results: list[int] = []

    def client(k: int) -> None:
        for i in range(4):
            try:
                results.append(generate(url, {**REQUEST, "seed": 100 * k + i}, timeout=60).status_code)
            except httpx.HTTPError:
                results.append(-1)

    with ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(client, k) for k in range(3)]
        time.sleep(1.0)
        ray.kill(ray.get_actor(actor["name"], namespace=actor["namespace"]), no_restart=True)
        for f in futures:
            f.result()
    failed = [s for s in results if s != 200]
    assert len(results) == 12 and len(failed) <= 3, results  # at most one in flight per client on the killed replica
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        status = serve.status().applications["mobilegen"]
        running = status.deployments["MobileGen"].replica_states.get("RUNNING", 0)
        if status.status == "RUNNING" and running == 2:
            break
        time.sleep(1)
    assert running == 2, serve.status()
    assert httpx.get(f"{url}/healthz", timeout=30).status_code == 200
    replicas = {r.headers["X-Replica"] for r in from_both_replicas(lambda: [generate(url, REQUEST) for _ in range(5)])}
    assert victim not in replicas and len(replicas) == 2, (victim, replicas)


@pytest.mark.slow  # a Ray cluster on 127.0.0.1
def test_more_replicas_than_cpus_is_a_clear_error(cluster):
    config, _ = cluster
    with pytest.raises(MobileGenError, match="3 replicas x 1 CPU need 3 CPUs, but the cluster has 2"):
        start(config, RayOptions(replicas=3))


@pytest.mark.slow  # seconds: the quick suite stays under 3 minutes; CI runs it
def test_unreachable_head_is_a_clear_error_not_a_hang():
    start_time = time.monotonic()
    with pytest.raises(MobileGenError, match="unreachable"):
        check_reachable(f"127.0.0.1:{free_port()}", timeout_s=3)
    assert time.monotonic() - start_time < 10
    res = subprocess.run([sys.executable, "-m", "mobilegen", "serve", "--ray", "--ray-address", f"127.0.0.1:{free_port()}"],
                         capture_output=True, text=True, timeout=60, cwd=ROOT)  # fmt: skip
    assert res.returncode == 2 and "unreachable" in res.stderr, res.stderr


def test_the_deploy_config_file_builds_the_application():
    import yaml

    from mobilegen.serve.ray_app import app_builder

    spec = yaml.safe_load((ROOT / "deploy" / "ray_serve.yaml").read_text())
    (application,) = spec["applications"]
    assert application["import_path"] == "mobilegen.serve.ray_app:app_builder"
    args = {**application["args"], "models": [{"path": None, "name": "v2"}]}
    assert type(app_builder(args)).__name__ == "Application"
    with pytest.raises(MobileGenError, match="invalid server configuration"):
        app_builder({**args, "max_n": 0})


def test_ray_not_installed_is_a_clear_error():
    hide = "import sys; sys.modules['ray'] = None; from mobilegen.cli import main_cli; main_cli()"
    res = subprocess.run([sys.executable, "-c", hide, "serve", "--ray", "--port", "0"], capture_output=True, text=True,
                         timeout=60, cwd=ROOT)  # fmt: skip
    assert res.returncode == 2 and "ray[serve]" in res.stderr and "not installed" in res.stderr, res.stderr


# --- --ray-batching serve: @serve.batch on whole requests ---------------------------------


@pytest.mark.slow  # seconds: the quick suite stays under 3 minutes; CI runs it
def test_requests_sampled_together_give_their_lone_images():
    """The serve-batch engine without Ray: requests with the same settings share one loop,
    and every request's images equal its lone run through our batcher, bit for bit."""
    model = load_models(ServeConfig(device="cpu"))["v2"]
    try:

        def job(label: int, seed: int, n: int = 1, guidance: float = 2.0, eta: float = 0.0) -> Job:
            return Job(model, label, str(label), n, SamplerConfig("ddim", 2, guidance, eta, seed), "png")

        jobs = [job(3, 11), job(8, 12, n=2), job(1, 13, guidance=0), job(5, 14, eta=1.0), job(6, 15, n=2, guidance=0),
                job(2, 16, n=3)]  # fmt: skip
        alone = [MicroBatched.sample(j, threading.Event()) for j in jobs]
        gone = Pending(job(0, 17), threading.Event())
        gone.cancelled.set()
        calls: list[tuple] = []
        together = sample_together([Pending(j, threading.Event()) for j in jobs] + [gone], lambda *a: calls.append(a[1:3]))
        for one, batched, j in zip(alone, together, jobs):
            assert torch.equal(one, batched), f"{j.sampler}: batched images differ from the lone run"
        assert isinstance(together[-1], Cancelled) and not gone.started  # abandoned before its batch ran: never runs
        # 3 loops of 2 steps: guided (1+2+3 images, 12 rows), unguided (1+2 images), eta 1 (1 image, 2 rows)
        assert sorted(calls) == sorted([(12, 3)] * 2 + [(3, 2)] * 2 + [(2, 1)] * 2)
    finally:
        model.batcher.close()
    assert batch_rows([gone, Pending(dataclasses.replace(gone.job, n=40), threading.Event())], max_rows=32) == 2 + 32


def test_a_request_abandoned_in_the_serve_batch_queue_counts_as_dropped():
    drops: list[tuple] = []

    async def queued(item):  # @serve.batch's queue, with a batch running ahead of this request
        await asyncio.sleep(3600)

    async def main() -> int:
        queue = WholeRequests(queued, lambda *a: drops.append(a))
        job = Job(SimpleNamespace(name="v2"), 0, "airplane", 1, SamplerConfig(), "png")
        task = asyncio.ensure_future(queue(job, threading.Event()))
        await asyncio.sleep(0.05)
        assert queue.active == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return queue.active

    assert asyncio.run(main()) == 0 and drops == [("v2", 1)]


SERVE_BATCH = [  # three settings groups; each request's PNG must equal its single-process PNG
    REQUEST,
    {**REQUEST, "label": "ship", "seed": 21, "n": 2},
    {**REQUEST, "label": "frog", "seed": 22},
    {**REQUEST, "label": "dog", "seed": 23},
    {**REQUEST, "label": "auto", "seed": 24, "guidance": 0},
    {**REQUEST, "label": "bird", "seed": 25, "guidance": 0, "n": 2},
    {**REQUEST, "label": "none", "seed": 26, "eta": 1.0},
    {**REQUEST, "label": "deer", "seed": 27, "eta": 1.0},
]


@pytest.fixture(scope="module")
def serve_batching(cluster):
    """The same cluster, redeployed with --ray-batching serve (a longer batch wait, so that a burst shares batches)."""
    config, url = cluster
    config = dataclasses.replace(config, max_wait_ms=250.0)
    serve.delete(APP_NAME)
    start(config, RayOptions(replicas=2, batching="serve", start_timeout_s=240))
    return config, url


def burst(url: str, requests: list[dict]) -> list[httpx.Response]:
    with ThreadPoolExecutor(len(requests)) as pool:
        return list(pool.map(lambda body: generate(url, body), requests))


@pytest.mark.slow  # a Ray cluster on 127.0.0.1
def test_serve_batch_same_png_as_single_process_on_any_replica(serve_batching):
    config, url = serve_batching
    responses = from_both_replicas(lambda: burst(url, SERVE_BATCH), rounds=4)
    assert all(r.status_code == 200 for r in responses), [r.text[:200] for r in responses]
    assert len({r.headers["X-Replica"] for r in responses}) == 2
    from fastapi.testclient import TestClient

    # A replica holds one CPU (Ray sets its OMP_NUM_THREADS=1): the single process runs PyTorch on one
    # thread too, since float sums may differ in the last bit between thread counts.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with TestClient(create_app(config)) as client:
            single = [client.post("/v1/images", json=body).content for body in SERVE_BATCH]
    finally:
        torch.set_num_threads(threads)
    for i, batched in enumerate(responses):  # every round sent SERVE_BATCH in order
        body, one = SERVE_BATCH[i % len(SERVE_BATCH)], single[i % len(SERVE_BATCH)]
        assert one == batched.content, f"{body}: the @serve.batch PNG differs from the single-process one"


@pytest.mark.slow  # a Ray cluster on 127.0.0.1
def test_serve_batch_merges_concurrent_requests(serve_batching):
    _, url = serve_batching
    merged, runs = (replica_values(url, f'mobilegen_batch_requests_{k}{{model="v2"}}') for k in ("sum", "count"))
    responses = burst(url, [{**REQUEST, "seed": 300 + i} for i in range(8)])
    assert [r.status_code for r in responses] == [200] * 8
    after = [replica_values(url, f'mobilegen_batch_requests_{k}{{model="v2"}}') for k in ("sum", "count")]
    calls = sum(after[0].values()) - sum(merged.values())
    model_calls = sum(after[1].values()) - sum(runs.values())
    assert calls == 8 * 2 and model_calls < calls / 2, f"{calls} request-steps ran as {model_calls} model calls: not batched"
    assert httpx.get(f"{url}/healthz", timeout=30).json()["status"] == "ok"
