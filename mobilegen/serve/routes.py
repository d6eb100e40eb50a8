"""The routes and error handlers of the HTTP service (app.py builds the app around them)."""

# No "from __future__ import annotations": FastAPI must see the real Request class in the
# signatures of the routes defined inside add_routes, where fastapi is imported.

import json
import logging

from mobilegen.contract.labels import ALIASES
from mobilegen.errors import NonFiniteError
from mobilegen.serve.validate import ApiError, Job, error_body, form_job, invalid, json_job

log = logging.getLogger(__name__)

ROUTES = ("/generate_image", "/v1/images", "/v1/models", "/healthz", "/metrics")


def json_error(status: int, message: str, headers: dict | None = None, **extra):
    from fastapi.responses import Response

    return Response(error_body(status, message, **extra), status, headers, media_type="application/json")


def add_error_handlers(app) -> None:
    """Every error as a JSON object {"error", "status", ...}; a 500 keeps the server serving."""
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException

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

    @app.exception_handler(NonFiniteError)
    async def non_finite(request, exc: NonFiniteError):
        log.error("%s on %s", exc, request.url.path)
        return json_error(500, f"the model produced a non-finite state; no image was made ({exc})")

    @app.exception_handler(Exception)
    async def internal_error(request, exc: Exception):
        log.exception("unhandled error on %s", request.url.path)
        return json_error(500, f"internal error ({type(exc).__name__}); the server keeps serving")


def respond(job: Job, result, seconds: float):
    from fastapi.responses import JSONResponse, Response

    headers = job.headers(seconds)
    if job.output == "png":
        return Response(result, media_type="image/png", headers=headers)
    c = job.sampler
    body = {
        "model": job.model.name,
        "label": job.label_name,
        "seed": c.seed,
        "sampler": c.sampler,
        "steps": int(headers["X-Steps"]),
        "guidance": c.guidance,
        "eta": c.eta,
        "n": job.n,
        "width": 64,
        "height": 64,
        "seconds": round(seconds, 3),
        "images": result,
    }
    return JSONResponse(body, headers=headers)


def add_routes(app, server, config, metrics) -> None:
    """The five routes (ROUTES) over one Server (app.py)."""
    from fastapi import Request
    from fastapi.responses import Response
    from starlette.exceptions import HTTPException

    @app.post("/generate_image", response_class=Response, responses={200: {"content": {"image/png": {}}}})
    async def generate_image(request: Request):
        """The original Android app's call: form fields text (class name) and version; a 64x64 PNG back."""
        try:
            form = await request.form(max_files=0, max_fields=16, max_part_size=4096)
        except HTTPException as exc:
            raise invalid("body", f"malformed form body: {exc.detail}") from None
        job = form_job(form, config, server.models)
        return respond(job, *await server.run(job, request))

    @app.post("/v1/images", response_class=Response)
    async def images(request: Request):
        """JSON body: {"label", "version", "seed", "steps", "sampler", "guidance", "eta", "n", "output": "png"|"json"}."""
        job = json_job(await request.body(), config, server.models)
        return respond(job, *await server.run(job, request))

    @app.get("/v1/models")
    async def list_models():
        return {
            "default": server.default.name,
            "models": [m.describe(config) for m in server.models.values()],
            "label_aliases": ALIASES,
            "limits": server.limits(),
        }

    @app.get("/healthz")
    async def healthz():
        dead = [name for name, m in server.models.items() if not m.batcher.alive]
        if dead:
            return json_error(503, f"model worker stopped: {', '.join(dead)}")
        sampling = getattr(server.sample, "active", 0)  # includes loops of abandoned requests
        return {"status": "ok", "models": list(server.models), "pending": server.pending, "sampling": sampling}

    @app.get("/metrics")
    async def metrics_endpoint():
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)
