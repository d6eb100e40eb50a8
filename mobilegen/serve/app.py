"""The HTTP service: the original app's endpoint, a JSON API, health and metrics.

    POST /generate_image   form: text (class name, the app's names included), version -> image/png 64x64
    POST /v1/images        JSON: label, version, seed, steps, sampler, guidance, eta, n, output -> PNG grid or JSON
    GET  /v1/models        names, arch, checkpoint sha256, labels, defaults, limits
    GET  /healthz          200 while every model's batcher is running
    GET  /metrics          Prometheus text format

Every error is a JSON object {"error": message, "status": code, ...}; 422 for any
bad input, naming each bad field (with the allowed values where there is a list;
see validate.py), 413 for a body over the
limit, 503 when too many requests are waiting, 504 past the request timeout.
Nothing is written to disk.
"""

# No "from __future__ import annotations": FastAPI must see the real Request class in the
# signatures of routes defined inside create_app, where fastapi is imported.

import asyncio
import base64
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any, Awaitable, Callable

import torch

from mobilegen.diffusion import run_sampler, to_uint8
from mobilegen.serve.config import ServeConfig
from mobilegen.serve.metrics import Metrics
from mobilegen.serve.models import ServedModel, load_models
from mobilegen.serve.routes import ROUTES, add_error_handlers, add_routes
from mobilegen.serve.validate import RESULT_HEADERS, ApiError, Job, error_body

log = logging.getLogger(__name__)

ERROR_KINDS = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    422: "validation",
    499: "client_closed",
    503: "busy",
    504: "timeout",
}


Sample = Callable[[Job, threading.Event], Awaitable[torch.Tensor]]
"""A job's uint8 images [n, 3, 64, 64]; the request sets the event when it is abandoned."""


class MicroBatched:
    """Our batching: each request samples on a pool thread, its denoiser calls merged step by step (batcher.py)."""

    def __init__(self, server: "Server"):
        self.server = server

    @property
    def active(self) -> int:
        """Sampling loops running (includes loops of abandoned requests until their next step)."""
        return sum(m.batcher.active for m in self.server.models.values())

    def __call__(self, job: Job, cancelled: threading.Event) -> Awaitable[torch.Tensor]:
        return asyncio.wrap_future(self.server.pool.submit(self.sample, job, cancelled))

    @staticmethod
    def sample(job: Job, cancelled: threading.Event) -> torch.Tensor:
        labels = torch.full((job.n,), job.label)
        with job.model.batcher.session(cancelled) as denoise, torch.inference_mode():
            x = run_sampler(denoise, labels, job.model.schedule, job.sampler, job.model.device)
        return to_uint8(x)


class Server:
    """Models, limits and the thread pool behind the routes; one per app.

    ``batching``: how requests share the model (default ``MicroBatched``; Ray Serve's
    whole-request mode passes its own, see ray_app.py); it returns the Sample used for
    every job, which may also report ``active`` sampling loops.
    """

    def __init__(
        self,
        config: ServeConfig,
        models: dict[str, ServedModel],
        metrics: Metrics,
        batching: Callable[["Server"], Sample] = MicroBatched,
    ):
        self.config, self.models, self.metrics = config, models, metrics
        self.default = next(iter(models.values()))
        self.pool = ThreadPoolExecutor(max_workers=config.max_pending, thread_name_prefix="sampler")
        self.pending = 0  # touched only on the event loop
        self.sample = batching(self)

    def close(self) -> None:
        for model in self.models.values():
            model.batcher.close()
        self.pool.shutdown(wait=False, cancel_futures=True)

    def limits(self) -> dict:
        c = self.config
        return {
            "max_n": c.max_n,
            "max_steps": c.max_steps,
            "max_guidance": c.max_guidance,
            "max_body_bytes": c.max_body_bytes,
            "timeout_s": c.timeout_s,
            "max_pending": c.max_pending,
            "max_batch": c.max_batch,
            "max_wait_ms": c.max_wait_ms,
        }

    async def run(self, job: Job, request) -> tuple[Any, float]:
        """Generate (``self.sample``), batched with whatever else is running, then encode on a pool thread.

        A client that hangs up (uvicorn's receive() then returns http.disconnect), or a
        request past the timeout (Guard's asyncio.timeout cancels this coroutine), is
        cancelled: with our batcher its queued denoiser call is dropped and its sampling
        loop stops before its next step, so abandoned work does not hold the model.
        """
        from starlette.requests import ClientDisconnect

        if self.pending >= self.config.max_pending:
            raise ApiError(
                503, f"server busy: {self.pending} requests are already generating; retry shortly", headers={"Retry-After": "1"}
            )
        self.pending += 1
        cancelled = threading.Event()
        start = time.perf_counter()
        generating = asyncio.ensure_future(self._generate(job, cancelled))
        hangup = asyncio.ensure_future(_disconnected(request))
        try:
            await asyncio.wait({generating, hangup}, return_when=asyncio.FIRST_COMPLETED)
            if not generating.done():
                raise ClientDisconnect()
            return generating.result(), time.perf_counter() - start
        finally:
            hangup.cancel()
            generating.cancel()  # not started yet (the pool was full): never starts
            job.model.batcher.cancel(cancelled)  # sets the event; a no-op once the job has finished
            self.pending -= 1

    async def _generate(self, job: Job, cancelled: threading.Event) -> Any:
        images = await self.sample(job, cancelled)
        self.metrics.images.labels(job.model.name).inc(job.n)
        return await asyncio.wrap_future(self.pool.submit(_encode, job.output, images))


def _encode(output: str, images: torch.Tensor) -> bytes | list[str]:
    from mobilegen.runtime.images import png_bytes

    if output == "png":
        return png_bytes(images)
    return [base64.b64encode(png_bytes(images[i : i + 1])).decode() for i in range(len(images))]


async def _disconnected(request) -> None:
    """Returns when the client closes the connection (the body has been read by then)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


class _BodyTooLarge(Exception):
    """args[0]: whether more of the body is still to come."""


DRAIN_LIMIT = 256 * 2**20  # past this a refused body is not read on: the connection is closed


async def _drain(receive, timeout_s: float) -> None:
    """Read and drop the rest of a refused body, so that the client, still sending, reads our
    413 instead of a connection reset (closing a socket with unread data resets it)."""
    dropped = 0
    try:
        async with asyncio.timeout(timeout_s):
            while dropped <= DRAIN_LIMIT:
                message = await receive()
                if message["type"] != "http.request" or not message.get("more_body"):
                    return
                dropped += len(message.get("body", b""))
    except TimeoutError:
        pass


class Guard:
    """Outermost ASGI layer: body size limit, request timeout, and the request metrics."""

    def __init__(self, app, server: Server):
        self.app, self.server = app, server

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        from starlette.requests import ClientDisconnect

        config, metrics = self.server.config, self.server.metrics
        route = scope["path"] if scope["path"] in ROUTES else "other"
        method = scope["method"] if scope["method"] in ("GET", "POST", "HEAD", "OPTIONS") else "other"
        state = {"status": 500, "started": False}
        start = time.perf_counter()

        async def tracked_send(message):
            if message["type"] == "http.response.start":
                state["status"], state["started"] = message["status"], True
            await send(message)

        async def fail(status: int, message: str):
            if not state["started"]:
                headers = [(b"content-type", b"application/json"), (b"connection", b"close")]
                await tracked_send({"type": "http.response.start", "status": status, "headers": headers})
                await send({"type": "http.response.body", "body": error_body(status, message)})

        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > config.max_body_bytes:
                    raise _BodyTooLarge(bool(message.get("more_body")))
            return message

        too_large = f"request body over this server's limit of {config.max_body_bytes} bytes"
        metrics.in_progress.inc()
        try:
            length = dict(scope["headers"]).get(b"content-length", b"0")
            if not length.isdigit() or len(length) > 18 or int(length) > config.max_body_bytes:
                await _drain(receive, config.timeout_s)
                await fail(413, too_large)
                return
            async with asyncio.timeout(config.timeout_s):
                await self.app(scope, limited_receive, tracked_send)
        except _BodyTooLarge as exc:
            if exc.args[0]:  # more of the body is on its way
                await _drain(receive, config.timeout_s)
            await fail(413, too_large)
        except TimeoutError:
            await fail(504, f"request took longer than this server's timeout of {config.timeout_s:g} s")
        except ClientDisconnect:
            state["status"] = 499
        finally:
            metrics.in_progress.dec()
            status = state["status"]
            metrics.requests.labels(route, method, str(status)).inc()
            metrics.latency.labels(route).observe(time.perf_counter() - start)
            if status >= 400:
                metrics.errors.labels(route, ERROR_KINDS.get(status, "internal" if status >= 500 else "client")).inc()


def create_app(config: ServeConfig = ServeConfig(), batching: Callable[[Server], Sample] = MicroBatched):
    """Load every model once (on CUDA in float16 when present), then build the FastAPI app.

    ``batching``: see Server (Ray Serve's @serve.batch mode passes its own).
    """
    from fastapi import FastAPI
    from fastapi.middleware.cors import CORSMiddleware

    metrics = Metrics()
    server = Server(config, load_models(config, metrics.on_batch, metrics.on_drop), metrics, batching)

    @asynccontextmanager
    async def lifespan(app):
        yield
        server.close()

    app = FastAPI(
        title="MobileGen",
        summary="Class-conditional 64x64 CIFAR-10 images from a DDPM",
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.server = server

    add_error_handlers(app)
    add_routes(app, server, config, metrics)
    app.add_middleware(Guard, server=server)
    if config.cors_origins:
        # Credentials are never allowed: the API uses none, and with "*" they would let any site act as the user.
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(config.cors_origins),
            allow_credentials=False,
            allow_methods=["GET", "POST"],
            allow_headers=["Content-Type"],
            expose_headers=RESULT_HEADERS,
        )
    return app


def make_server(app, config: ServeConfig):
    """A uvicorn.Server for the app (tests and benchmarks run it in a thread on their own socket)."""
    import uvicorn

    uv = uvicorn.Config(
        app,
        host=config.host,
        port=config.port,
        log_level=config.log_level,
        lifespan="on",
        ws="none",
        server_header=False,
        timeout_keep_alive=5,
        timeout_graceful_shutdown=10,
        h11_max_incomplete_event_size=16 * 1024,
    )
    return uvicorn.Server(uv)


def serve(config: ServeConfig, sockets=None) -> None:
    """Load the models, then serve HTTP until interrupted (Ctrl-C)."""
    app = create_app(config)
    server = make_server(app, config)
    say = logging.getLogger("uvicorn.error")
    for m in app.state.server.models.values():
        say.info("model %s: %s from %s, %s on %s (%s)", m.name, m.arch, m.source, m.backend, m.device, m.dtype)
    say.info(
        "defaults: %s %d steps, guidance %g; micro-batching up to %d images, %g ms wait",
        config.sampler,
        config.steps,
        config.guidance,
        config.max_batch,
        config.max_wait_ms,
    )
    server.run(sockets=sockets)
