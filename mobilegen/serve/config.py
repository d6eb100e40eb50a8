"""What the server is told at start: which models, where to listen, defaults and limits.

Plain data, no web framework: the CLI builds a ``ServeConfig`` and hands it to
``mobilegen.serve.serve``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from mobilegen.diffusion.sampler import SAMPLERS
from mobilegen.errors import MobileGenError

DDPM_STEPS = 999  # the original sampler always runs T-1 steps
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,31}$")


@dataclass(frozen=True)
class ModelSource:
    """One model to serve. ``name`` None: named after its architecture (student_v2 -> "v2")."""

    path: Path | None = None  # None: the untrained default v2; .onnx: served by onnxruntime
    name: str | None = None
    arch: str | None = None


def parse_model_option(value: str) -> ModelSource:
    """``NAME=PATH`` (as given to ``--model``) -> ModelSource."""
    name, sep, path = value.partition("=")
    if not sep or not path:
        raise MobileGenError(f"--model {value!r}: expected NAME=PATH, e.g. --model v2=runs/v2/ema.pt")
    return ModelSource(Path(path), check_name(name.strip()))


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise MobileGenError(f"model name {name!r}: use 1-32 letters, digits, '.', '_' or '-' (e.g. v1, v2)")
    return name


@dataclass(frozen=True)
class ServeConfig:
    models: tuple[ModelSource, ...] = ()  # empty: the untrained default v2, named "v2"
    host: str = "127.0.0.1"
    port: int = 8000
    device: str = "auto"  # auto: CUDA (float16 autocast) when present, else CPU (float32)
    # Defaults for requests that do not say (the original app never does).
    sampler: str = "ddim"
    steps: int = 50
    guidance: float = 3.0
    eta: float = 0.0
    # Micro-batching: denoiser calls waiting together run as one model call.
    max_batch: int = 32  # images per model call (guidance doubles a request's); 1 = batching off
    max_wait_ms: float = 5.0  # how long the first waiting call holds the model for others
    # Limits: a request outside them gets 422, never a slow or failed run.
    max_n: int = 16
    max_steps: int = 250
    max_guidance: float = 50.0
    max_body_bytes: int = 64 * 1024
    max_pending: int = 128  # requests generating or queued; more get 503 at once
    timeout_s: float = 120.0  # whole request, body upload included; 504 after it
    cors_origins: tuple[str, ...] = ()  # none by default; credentials are never allowed
    log_level: str = "info"  # uvicorn's: critical, error, warning, info, debug, trace
    max_tensor_mb: float | None = None  # PyTorch models: attention in chunks so no tensor of a call exceeds this

    def __post_init__(self) -> None:
        problems = []
        if self.sampler not in SAMPLERS:
            problems.append(f"sampler {self.sampler!r} is not one of {', '.join(SAMPLERS)}")
        for name in ("max_batch", "max_n", "max_steps", "max_body_bytes", "max_pending"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 1 <= self.steps <= self.max_steps:
            problems.append(f"default steps {self.steps} must be in 1..max_steps ({self.max_steps})")
        if self.sampler == "ddpm" and self.max_steps < DDPM_STEPS:
            problems.append(f"the ddpm sampler runs {DDPM_STEPS} steps; raise max_steps to at least that")
        if self.max_guidance < 0 or not 0 <= self.guidance <= self.max_guidance:
            problems.append(f"default guidance {self.guidance} must be in 0..max_guidance ({self.max_guidance})")
        if not 0 <= self.eta <= 1:
            problems.append(f"eta must be in 0..1, got {self.eta}")
        if self.max_wait_ms < 0 or self.timeout_s <= 0:
            problems.append("max_wait_ms must be >= 0 and timeout_s > 0")
        if not 0 <= self.port <= 65535:
            problems.append(f"port {self.port} is not in 0..65535")
        if self.device not in ("auto", "cpu", "cuda"):
            problems.append(f"device {self.device!r} is not one of auto, cpu, cuda")
        names = [m.name for m in self.models if m.name]
        if len(set(names)) != len(names):
            problems.append(f"model names must be unique, got {names}")
        for origin in self.cors_origins:
            if origin != "*" and not re.match(r"^https?://[^/\s]+$", origin):
                problems.append(f"CORS origin {origin!r} must look like https://host[:port] (no path) or be '*'")
        if problems:
            raise MobileGenError("invalid server configuration: " + "; ".join(problems))
