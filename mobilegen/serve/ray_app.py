"""The same FastAPI app as `mobilegen serve`, deployed on Ray Serve with replicas.

    mobilegen serve CKPT --ray --replicas N          (a local Ray cluster, or --ray-address HOST:PORT)
    serve deploy deploy/ray_serve.yaml               (a running cluster; see docs/serving.md)

Every replica builds the app with `create_app(config)` and loads the model. How a
replica batches (``RayOptions.batching``, `--ray-batching`):
  * "ours": our micro-batcher, which merges the denoiser calls of the requests a
    replica is serving at each sampling step (batcher.py);
  * "serve": Serve's `@serve.batch` on whole requests; a batch's requests with the
    same sampler settings run as one sampling loop (request_batch.py).
Ray's proxy spreads requests over the replicas and
the controller replaces a replica that dies. Each replica keeps its own metrics
(/metrics answers from one replica, labelled by `mobilegen_replica_info`), and
every response names its replica in the X-Replica header.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

from mobilegen.errors import MissingDependencyError, MobileGenError
from mobilegen.serve.config import ModelSource, ServeConfig

log = logging.getLogger(__name__)

APP_NAME = "mobilegen"
BATCHING = ("ours", "serve")


@dataclass(frozen=True)
class RayOptions:
    replicas: int = 2
    cpus_per_replica: float = 1.0
    gpus_per_replica: float = 0.0
    address: str | None = None  # None: start a local cluster in this process; else HOST:PORT of a running head
    start_timeout_s: float = 300.0  # every replica loaded and healthy by then, or an error
    batching: str = "ours"  # "ours": our micro-batcher per replica; "serve": @serve.batch on whole requests

    def __post_init__(self) -> None:
        if self.replicas < 1:
            raise MobileGenError(f"--replicas must be >= 1, got {self.replicas}")
        if self.batching not in BATCHING:
            raise MobileGenError(f"--ray-batching {self.batching!r} is not one of {', '.join(BATCHING)}")
        if self.cpus_per_replica <= 0 or self.gpus_per_replica < 0:
            raise MobileGenError("--replica-cpus must be > 0 and --replica-gpus >= 0")


def import_ray():
    try:
        import ray
        from ray import serve
    except ImportError:
        raise MissingDependencyError("ray[serve]", "mobilegen serve --ray") from None
    return ray, serve


def serve_batching(server):
    """The app's Sample for batching "serve": jobs queue in @serve.batch, a batch samples on one pool thread.

    max_batch_size counts model rows (--max-batch; guidance doubles a request's), the
    wait is --max-wait-ms, and one batch runs at a time (the next one forms meanwhile).
    """
    import asyncio
    import functools

    from ray import serve

    from mobilegen.serve.request_batch import WholeRequests, batch_rows, sample_together

    c, metrics = server.config, server.metrics

    @serve.batch(
        max_batch_size=c.max_batch,
        batch_wait_timeout_s=c.max_wait_ms / 1000,
        max_concurrent_batches=1,
        batch_size_fn=functools.partial(batch_rows, max_rows=c.max_batch),
    )
    async def sample_batch(items):
        return await asyncio.get_running_loop().run_in_executor(server.pool, sample_together, items, metrics.on_batch)

    return WholeRequests(sample_batch, metrics.on_drop)


def build_asgi(config: ServeConfig, batching: str = "ours"):
    """Runs on each replica: the single-process app, plus the replica's name on every response and in /metrics."""
    from prometheus_client import Info
    from ray import serve

    from mobilegen.serve.app import MicroBatched, create_app

    app = create_app(config, serve_batching if batching == "serve" else MicroBatched)
    replica = serve.get_replica_context().replica_id.unique_id
    Info("mobilegen_replica", "The Ray Serve replica that answered", registry=app.state.server.metrics.registry).info(
        {"replica": replica}
    )

    @app.middleware("http")
    async def name_replica(request, call_next):
        response = await call_next(request)
        response.headers["X-Replica"] = replica
        return response

    return app


def deployment(config: ServeConfig, options: RayOptions):
    """The bound Serve application: `options.replicas` copies of the app."""
    _, serve = import_ray()
    actor = {"num_cpus": options.cpus_per_replica, "num_gpus": options.gpus_per_replica}
    ingress = serve.ingress(lambda: build_asgi(config, options.batching))

    # max_ongoing_requests above the app's own max_pending: the app answers 503 itself, as single-process.
    @serve.deployment(
        name="MobileGen",
        num_replicas=options.replicas,
        ray_actor_options=actor,
        max_ongoing_requests=config.max_pending + 8,
        health_check_period_s=2,
        health_check_timeout_s=30,
    )
    @ingress
    class MobileGen:
        pass

    return MobileGen.bind()


def app_builder(args: dict[str, Any]):
    """`serve deploy` entry point (import_path mobilegen.serve.ray_app:app_builder); args as in deploy/ray_serve.yaml."""
    args = dict(args)
    models = tuple(ModelSource(path=m.get("path"), name=m.get("name"), arch=m.get("arch")) for m in args.pop("models", []))
    ray_args = {k: args.pop(k) for k in ("replicas", "cpus_per_replica", "gpus_per_replica", "batching") if k in args}
    return deployment(ServeConfig(models=models, **args), RayOptions(**ray_args))


def check_reachable(address: str, timeout_s: float = 5.0) -> None:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise MobileGenError(f"--ray-address {address!r}: expected HOST:PORT of the Ray head (ray start --head prints it)")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise MobileGenError(
            f"Ray head {address} is unreachable ({exc}); start it with `ray start --head --port {port}` or fix --ray-address"
        ) from None


def start(config: ServeConfig, options: RayOptions) -> None:
    """Join (or start) the cluster, check it can hold the replicas, deploy, and wait until every replica is healthy."""
    ray, serve = import_ray()
    if ray.is_initialized():
        pass  # the caller's cluster (tests: ray.init(num_cpus=2))
    elif options.address:
        check_reachable(options.address)
        ray.init(address=options.address, include_dashboard=False, logging_level=logging.WARNING)
    else:  # a one-machine cluster of our own: keep its nodes on loopback (multi-node: ray start, --ray-address)
        ray.init(include_dashboard=False, logging_level=logging.WARNING, _node_ip_address="127.0.0.1")
    total = ray.cluster_resources()
    for key, need in (("CPU", options.cpus_per_replica), ("GPU", options.gpus_per_replica)):
        if need and need * options.replicas > total.get(key, 0):
            raise MobileGenError(
                f"{options.replicas} replicas x {need:g} {key} need {need * options.replicas:g} {key}s, "
                f"but the cluster has {total.get(key, 0):g}; lower --replicas or add nodes (ray start)"
            )
    serve.start(http_options={"host": config.host, "port": config.port})
    app = deployment(config, options)
    failure: list[BaseException] = []

    def run() -> None:
        try:
            serve.run(app, name=APP_NAME, route_prefix="/")
        except BaseException as exc:  # re-raised in the caller
            failure.append(exc)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(options.start_timeout_s)
    if worker.is_alive():
        raise MobileGenError(f"the replicas were not healthy after {options.start_timeout_s:g} s: {serve.status()}")
    if failure:
        raise MobileGenError(f"deploying on Ray Serve failed: {failure[0]}") from None


def stop() -> None:
    ray, serve = import_ray()
    if ray.is_initialized():
        serve.shutdown()
        ray.shutdown()


def serve_ray(config: ServeConfig, options: RayOptions) -> None:
    """`mobilegen serve --ray`: deploy, then serve until interrupted (Ctrl-C)."""
    try:
        start(config, options)
        say = logging.getLogger("uvicorn.error")
        say.info(
            "Ray Serve: %d replicas on http://%s:%d, batching %s", options.replicas, config.host, config.port, options.batching
        )
        while True:
            time.sleep(3600)
    finally:
        stop()
