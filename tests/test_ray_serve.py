"""The server as a Ray Serve application: a real local Ray cluster on 127.0.0.1 with 2 replicas."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from mobilegen.errors import MobileGenError
from mobilegen.serve import ServeConfig, create_app

ray = pytest.importorskip("ray")
httpx = pytest.importorskip("httpx")
from ray import serve  # noqa: E402

from mobilegen.serve.ray_app import RayOptions, check_reachable, start, stop  # noqa: E402

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


def replica_images(url: str) -> dict[str, float]:
    """Images generated per replica, read from /metrics (each scrape answers from one replica)."""
    seen: dict[str, float] = {}
    for _ in range(40):
        text = httpx.get(f"{url}/metrics", timeout=30).text
        replica = re.search(r'mobilegen_replica_info\{replica="([^"]+)"\}', text).group(1)
        images = re.search(r'mobilegen_images_generated_total\{model="v2"\} ([0-9.e+]+)', text)
        seen[replica] = float(images.group(1)) if images else 0.0
        if len(seen) == 2:
            break
    return seen


@pytest.mark.slow  # a Ray cluster on 127.0.0.1
def test_requests_spread_over_both_replicas_and_metrics_show_it(cluster):
    _, url = cluster
    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda i: generate(url, {**REQUEST, "seed": i}), range(12)))
    assert all(r.status_code == 200 and r.headers["content-type"] == "image/png" for r in responses)
    replicas = {r.headers["X-Replica"] for r in responses}
    assert len(replicas) == 2, replicas
    per_replica = replica_images(url)
    assert set(per_replica) == replicas and all(v > 0 for v in per_replica.values()), per_replica
    assert sum(per_replica.values()) >= 12


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
    replicas = {generate(url, {**REQUEST, "seed": s}).headers["X-Replica"] for s in range(10)}
    assert victim not in replicas and len(replicas) == 2, (victim, replicas)


@pytest.mark.slow  # a Ray cluster on 127.0.0.1
def test_more_replicas_than_cpus_is_a_clear_error(cluster):
    config, _ = cluster
    with pytest.raises(MobileGenError, match="3 replicas x 1 CPU need 3 CPUs, but the cluster has 2"):
        start(config, RayOptions(replicas=3))


def test_unreachable_head_is_a_clear_error_not_a_hang():
    start_time = time.monotonic()
    with pytest.raises(MobileGenError, match="unreachable"):
        check_reachable(f"127.0.0.1:{free_port()}", timeout_s=3)
    assert time.monotonic() - start_time < 10
    res = subprocess.run([sys.executable, "-m", "mobilegen", "serve", "--ray", "--ray-address", f"127.0.0.1:{free_port()}"],
                         capture_output=True, text=True, timeout=60, cwd=Path(__file__).resolve().parents[1])  # fmt: skip
    assert res.returncode == 2 and "unreachable" in res.stderr, res.stderr


def test_the_deploy_config_file_builds_the_application():
    import yaml

    from mobilegen.serve.ray_app import app_builder

    spec = yaml.safe_load((Path(__file__).resolve().parents[1] / "deploy" / "ray_serve.yaml").read_text())
    (application,) = spec["applications"]
    assert application["import_path"] == "mobilegen.serve.ray_app:app_builder"
    args = {**application["args"], "models": [{"path": None, "name": "v2"}]}
    assert type(app_builder(args)).__name__ == "Application"
    with pytest.raises(MobileGenError, match="invalid server configuration"):
        app_builder({**args, "max_n": 0})


def test_ray_not_installed_is_a_clear_error():
    hide = "import sys; sys.modules['ray'] = None; from mobilegen.cli import main_cli; main_cli()"
    res = subprocess.run([sys.executable, "-c", hide, "serve", "--ray", "--port", "0"], capture_output=True, text=True,
                         timeout=60, cwd=Path(__file__).resolve().parents[1])  # fmt: skip
    assert res.returncode == 2 and "ray[serve]" in res.stderr and "not installed" in res.stderr, res.stderr
