"""The HTTP service: the original app's endpoint, a JSON API, health and metrics.

    POST /generate_image   form: text (class name, the app's names included), version -> image/png 64x64
    POST /v1/images        JSON: label, version, seed, steps, sampler, guidance, eta, n, output -> PNG grid or JSON
    GET  /v1/models        names, arch, checkpoint sha256, labels, defaults, limits
    GET  /healthz          200 while every model's batcher is running
    GET  /metrics          Prometheus text format

Every error is a JSON object {"error": message, "status": code, ...}; 422 for any
bad input (with the allowed values where there is a list), 413 for a body over the
limit, 503 when too many requests are waiting, 504 past the request timeout.
Nothing is written to disk.
"""

# No "from __future__ import annotations": FastAPI must see the real Request class in the
# signatures of routes defined inside create_app, where fastapi is imported.

import asyncio
import base64
import json
import logging
import math
import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import torch

from mobilegen.diffusion import SamplerConfig, run_sampler, to_uint8
from mobilegen.diffusion.sampler import SAMPLERS
from mobilegen.errors import MobileGenError
from mobilegen.labels import ALIASES, parse_label
from mobilegen.serve.config import DDPM_STEPS, ServeConfig
from mobilegen.serve.metrics import Metrics
from mobilegen.serve.models import ServedModel, find_model, load_models

log = logging.getLogger(__name__)

ROUTES = ("/generate_image", "/v1/images", "/v1/models", "/healthz", "/metrics")
MAX_SEED = 2**63 - 1
RESULT_HEADERS = ["X-Model", "X-Label", "X-Seed", "X-Sampler", "X-Steps", "X-Guidance", "X-Generation-Seconds"]
ERROR_KINDS = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "too_large",
               422: "validation", 499: "client_closed", 503: "busy", 504: "timeout"}  # fmt: skip


class ApiError(Exception):
    def __init__(self, status: int, message: str, headers: dict | None = None, **extra: Any):
        super().__init__(message)
        self.status, self.message, self.headers, self.extra = status, message, headers, extra


def error_body(status: int, message: str, **extra: Any) -> bytes:
    return json.dumps({"error": message, "status": status, **extra}).encode()


@dataclass(frozen=True)
class Job:
    model: ServedModel
    label: int
    label_name: str
    n: int
    sampler: SamplerConfig
    output: str  # "png" (one image or a grid) or "json" (base64 PNG per image)

    def headers(self, seconds: float) -> dict[str, str]:
        steps = DDPM_STEPS if self.sampler.sampler == "ddpm" else self.sampler.steps
        values = [self.model.name, self.label_name, self.sampler.seed, self.sampler.sampler, steps,
                  f"{self.sampler.guidance:g}", f"{seconds:.3f}"]  # fmt: skip
        return {k: str(v) for k, v in zip(RESULT_HEADERS, values)} | {"Cache-Control": "no-store"}


def _bounded(problems: list, name: str, value, low, high, kind=int):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int):
        what = "a number" if kind is float else "an integer"
        problems.append({"field": name, "message": f"{name} must be {what}, got {value!r}"})
    elif kind is float and not math.isfinite(value):
        problems.append({"field": name, "message": f"{name} must be finite, got {value!r}"})
    elif not low <= value <= high:
        problems.append({"field": name, "message": f"{name} must be in {low}..{high}, got {value!r}", "min": low, "max": high})
    else:
        return kind(value)
    return None


class Server:
    """Models, limits and the thread pool behind the routes; one per app."""

    def __init__(self, config: ServeConfig, models: dict[str, ServedModel], metrics: Metrics):
        self.config, self.models, self.metrics = config, models, metrics
        self.default = next(iter(models.values()))
        self.pool = ThreadPoolExecutor(max_workers=config.max_pending, thread_name_prefix="sampler")
        self.pending = 0  # touched only on the event loop

    def close(self) -> None:
        for model in self.models.values():
            model.batcher.close()
        self.pool.shutdown(wait=False, cancel_futures=True)

    def limits(self) -> dict:
        c = self.config
        return {"max_n": c.max_n, "max_steps": c.max_steps, "max_guidance": c.max_guidance,
                "max_body_bytes": c.max_body_bytes, "timeout_s": c.timeout_s, "max_pending": c.max_pending,
                "max_batch": c.max_batch, "max_wait_ms": c.max_wait_ms}  # fmt: skip

    def job(self, label: Any, version: Any = None, seed: Any = None, steps: Any = None, sampler: Any = None,
            guidance: Any = None, eta: Any = None, n: Any = 1, output: str = "png") -> Job:  # fmt: skip
        """Validate one request against the limits; every problem at once, as a 422."""
        c, problems = self.config, []
        model = self.default
        if version is not None and str(version).strip() != "":
            model = find_model(self.models, str(version))
            if model is None:
                problems.append({"field": "version", "message": f"unknown version {version!r}", "allowed": list(self.models)})
                model = self.default
        label_index, label_name = -1, "unconditional"
        try:
            label_index = parse_label(label, model.labels)
            label_name = model.labels[label_index] if label_index >= 0 else "unconditional"
        except MobileGenError as exc:
            allowed = [*model.labels, *ALIASES, "none"]
            problems.append({"field": "label", "message": str(exc).split(";")[0], "allowed": allowed})
        sampler = c.sampler if sampler is None else sampler
        if sampler not in SAMPLERS:
            problems.append({"field": "sampler", "message": f"unknown sampler {sampler!r}", "allowed": list(SAMPLERS)})
        steps = _bounded(problems, "steps", steps, 1, c.max_steps) or c.steps
        if sampler == "ddpm" and DDPM_STEPS > c.max_steps:
            problems.append({"field": "sampler", "message": f"the ddpm sampler runs {DDPM_STEPS} steps, over this "
                             f"server's max_steps ({c.max_steps}); use ddim"})  # fmt: skip
        guidance = _bounded(problems, "guidance", guidance, 0, c.max_guidance, float)
        eta = _bounded(problems, "eta", eta, 0, 1, float)
        n = _bounded(problems, "n", n, 1, c.max_n)
        seed = _bounded(problems, "seed", seed, 0, MAX_SEED)
        if output not in ("png", "json"):
            problems.append({"field": "output", "message": f"unknown output {output!r}", "allowed": ["png", "json"]})
        if problems:
            raise ApiError(422, "; ".join(p["message"] for p in problems), problems=problems)
        config = SamplerConfig(
            sampler=sampler,
            steps=steps,
            guidance=c.guidance if guidance is None else guidance,
            eta=c.eta if eta is None else eta,
            seed=secrets.randbelow(2**31) if seed is None else seed,  # said back in X-Seed, so it can be repeated
        )
        return Job(model, label_index, label_name, n or 1, config, output)

    async def run(self, job: Job, request) -> tuple[Any, float]:
        """Generate on a pool thread (the sampler), batched with whatever else is running.

        A client that hangs up, or a request past the timeout, stops its sampling loop
        at the next step, so abandoned work does not hold the model.
        """
        from starlette.requests import ClientDisconnect

        if self.pending >= self.config.max_pending:
            raise ApiError(503, f"server busy: {self.pending} requests are already generating; retry shortly",
                           headers={"Retry-After": "1"})  # fmt: skip
        self.pending += 1
        cancelled = threading.Event()
        generating = asyncio.wrap_future(self.pool.submit(self._generate, job, cancelled))
        hangup = asyncio.ensure_future(_disconnected(request))
        try:
            await asyncio.wait({generating, hangup}, return_when=asyncio.FIRST_COMPLETED)
            if not generating.done():
                raise ClientDisconnect()
            return generating.result()
        finally:
            hangup.cancel()
            generating.cancel()
            cancelled.set()
            self.pending -= 1

    def _generate(self, job: Job, cancelled: threading.Event) -> tuple[Any, float]:
        from mobilegen.images import png_bytes

        start = time.perf_counter()
        labels = torch.full((job.n,), job.label)
        with job.model.batcher.session(cancelled) as denoise, torch.inference_mode():
            x = run_sampler(denoise, labels, job.model.schedule, job.sampler, job.model.device)
        images = to_uint8(x)
        self.metrics.images.labels(job.model.name).inc(job.n)
        if job.output == "png":
            return png_bytes(images), time.perf_counter() - start
        return [base64.b64encode(png_bytes(images[i : i + 1])).decode() for i in range(job.n)], time.perf_counter() - start


async def _disconnected(request) -> None:
    """Returns when the client closes the connection (the body has been read by then)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


class _BodyTooLarge(Exception):
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
                    raise _BodyTooLarge()
            return message

        too_large = f"request body over this server's limit of {config.max_body_bytes} bytes"
        metrics.in_progress.inc()
        try:
            length = dict(scope["headers"]).get(b"content-length", b"0")
            if not length.isdigit() or int(length) > config.max_body_bytes:
                await fail(413, too_large)
                return
            async with asyncio.timeout(config.timeout_s):
                await self.app(scope, limited_receive, tracked_send)
        except _BodyTooLarge:
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


def create_app(config: ServeConfig = ServeConfig()):
    """Load every model once (on CUDA in float16 when present), then build the FastAPI app."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.middleware.cors import CORSMiddleware
    from fastapi.responses import JSONResponse, Response
    from starlette.exceptions import HTTPException

    metrics = Metrics()
    server = Server(config, load_models(config, metrics.on_batch), metrics)

    @asynccontextmanager
    async def lifespan(app):
        yield
        server.close()

    app = FastAPI(title="MobileGen", summary="Class-conditional 64x64 CIFAR-10 images from a DDPM",
                  docs_url=None, redoc_url=None, lifespan=lifespan)  # fmt: skip
    app.state.server = server

    def json_error(status: int, message: str, headers: dict | None = None, **extra) -> Response:
        return Response(error_body(status, message, **extra), status, headers, media_type="application/json")

    @app.exception_handler(ApiError)
    async def api_error(request, exc: ApiError):
        return json_error(exc.status, exc.message, exc.headers, **exc.extra)

    @app.exception_handler(HTTPException)
    async def http_error(request, exc: HTTPException):
        known = {404: f"no such endpoint; try {', '.join(ROUTES)}", 405: "method not allowed"}
        message = known.get(exc.status_code, str(exc.detail))
        return json_error(exc.status_code, message, getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request, exc: RequestValidationError):
        return json_error(422, "invalid request", problems=json.loads(json.dumps(exc.errors(), default=str)))

    @app.exception_handler(Exception)
    async def internal_error(request, exc: Exception):
        log.exception("unhandled error on %s", request.url.path)
        return json_error(500, f"internal error ({type(exc).__name__}); the server keeps serving")

    def respond(job: Job, result, seconds: float) -> Response:
        headers = job.headers(seconds)
        if job.output == "png":
            return Response(result, media_type="image/png", headers=headers)
        c = job.sampler
        body = {"model": job.model.name, "label": job.label_name, "seed": c.seed, "sampler": c.sampler,
                "steps": int(headers["X-Steps"]), "guidance": c.guidance, "eta": c.eta, "n": job.n,
                "width": 64, "height": 64, "seconds": round(seconds, 3), "images": result}  # fmt: skip
        return JSONResponse(body, headers=headers)

    @app.post("/generate_image", response_class=Response, responses={200: {"content": {"image/png": {}}}})
    async def generate_image(request: Request):
        """The original Android app's call: form fields text (class name) and version; a 64x64 PNG back."""
        try:
            form = await request.form(max_files=0, max_fields=16, max_part_size=4096)
        except HTTPException as exc:
            raise ApiError(422, f"malformed form body: {exc.detail}") from None
        fields = {}
        for key in ("text", "version", "seed"):
            value = form.get(key)
            if value is not None and not isinstance(value, str):
                raise ApiError(422, f"form field {key!r} must be text, not a file")
            fields[key] = value
        if not fields["text"]:
            raise ApiError(422, "missing form field 'text' (the class name, e.g. text=cat); send "
                           "multipart/form-data or application/x-www-form-urlencoded")  # fmt: skip
        seed = fields["seed"]
        if seed is not None:
            seed = int(seed) if seed.strip().isdigit() else seed  # non-digits fail validation below
        job = server.job(fields["text"], fields["version"], seed=seed)
        return respond(job, *await server.run(job, request))

    @app.post("/v1/images", response_class=Response)
    async def images(request: Request):
        """JSON body: {"label", "version", "seed", "steps", "sampler", "guidance", "eta", "n", "output": "png"|"json"}."""
        raw = await request.body()
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError) as exc:
            raise ApiError(422, f"body is not valid JSON ({str(exc)[:100]}); send e.g. "
                           '{"label": "ship", "seed": 3, "n": 4}') from None  # fmt: skip
        if not isinstance(data, dict):
            raise ApiError(422, f"body must be a JSON object, got {type(data).__name__}")
        known = {"label", "version", "seed", "steps", "sampler", "guidance", "eta", "n", "output"}
        if unknown := sorted(set(data) - known):
            raise ApiError(422, f"unknown field(s) {', '.join(map(repr, unknown))}", allowed=sorted(known))
        if "label" not in data:
            raise ApiError(422, "missing field 'label' (a class name, index, or 'none')")
        label = data["label"]
        if isinstance(label, bool) or not isinstance(label, (str, int)):
            raise ApiError(422, f"label must be a string or an integer, got {json.dumps(label)[:50]}")
        for key in ("version", "sampler", "output"):
            if key in data and not isinstance(data[key], (str, int) if key == "version" else str):
                raise ApiError(422, f"{key} must be a string, got {json.dumps(data[key])[:50]}")
        job = server.job(**data)
        return respond(job, *await server.run(job, request))

    @app.get("/v1/models")
    async def list_models():
        return {"default": server.default.name, "models": [m.describe(config) for m in server.models.values()],
                "label_aliases": ALIASES, "limits": server.limits()}  # fmt: skip

    @app.get("/healthz")
    async def healthz():
        dead = [name for name, m in server.models.items() if not m.batcher.alive]
        if dead:
            return json_error(503, f"model worker stopped: {', '.join(dead)}")
        sampling = sum(m.batcher.active for m in server.models.values())  # includes loops of abandoned requests
        return {"status": "ok", "models": list(server.models), "pending": server.pending, "sampling": sampling}

    @app.get("/metrics")
    async def metrics_endpoint():
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    app.add_middleware(Guard, server=server)
    if config.cors_origins:
        # Credentials are never allowed: the API uses none, and with "*" they would let any site act as the user.
        app.add_middleware(CORSMiddleware, allow_origins=list(config.cors_origins), allow_credentials=False,
                           allow_methods=["GET", "POST"], allow_headers=["Content-Type"],
                           expose_headers=RESULT_HEADERS)  # fmt: skip
    return app


def make_server(app, config: ServeConfig):
    """A uvicorn.Server for the app (tests and benchmarks run it in a thread on their own socket)."""
    import uvicorn

    uv = uvicorn.Config(app, host=config.host, port=config.port, log_level=config.log_level, lifespan="on",
                        ws="none", server_header=False, timeout_keep_alive=5, timeout_graceful_shutdown=10,
                        h11_max_incomplete_event_size=16 * 1024)  # fmt: skip
    return uvicorn.Server(uv)


def serve(config: ServeConfig, sockets=None) -> None:
    """Load the models, then serve HTTP until interrupted (Ctrl-C)."""
    app = create_app(config)
    server = make_server(app, config)
    say = logging.getLogger("uvicorn.error")
    for m in app.state.server.models.values():
        say.info("model %s: %s from %s, %s on %s (%s)", m.name, m.arch, m.source, m.backend, m.device, m.dtype)
    say.info("defaults: %s %d steps, guidance %g; micro-batching up to %d images, %g ms wait",
             config.sampler, config.steps, config.guidance, config.max_batch, config.max_wait_ms)  # fmt: skip
    server.run(sockets=sockets)
