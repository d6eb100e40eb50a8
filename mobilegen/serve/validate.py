"""Request fields -> a validated Job; every bad field at once, as one 422 naming each field.

JSON bodies keep JSON's types: an integer field takes a JSON integer, a number field a
JSON number (Python's json module also reads NaN and Infinity; they are refused as not
finite). Form fields are text: an integer there is ASCII digits only (``ascii_int``),
since str.isdigit() also accepts "²", which int() then rejects, and int() reads "٣" as 3.
Every error body names its fields: {"error", "status", "problems": [{"field", "message", ...}]}.
"""

from __future__ import annotations

import json
import math
import secrets
from dataclasses import dataclass
from typing import Any

from mobilegen.contract.labels import ALIASES, ascii_int, parse_label
from mobilegen.diffusion import SamplerConfig
from mobilegen.diffusion.sampler import MAX_SEED, SAMPLERS
from mobilegen.errors import MobileGenError
from mobilegen.files import DuplicateKey, loads_strict
from mobilegen.serve.config import DDPM_STEPS, ServeConfig
from mobilegen.serve.models import ServedModel, find_model

JSON_FIELDS = ("label", "version", "seed", "steps", "sampler", "guidance", "eta", "n", "output")
FORM_FIELDS = ("text", "version", "seed")
OUTPUTS = ("png", "json")
RESULT_HEADERS = ["X-Model", "X-Label", "X-Seed", "X-Sampler", "X-Steps", "X-Guidance", "X-Generation-Seconds"]
JSON_EXAMPLE = '{"label": "ship", "seed": 3, "n": 4}'


class ApiError(Exception):
    def __init__(self, status: int, message: str, headers: dict | None = None, **extra: Any):
        super().__init__(message)
        self.status, self.message, self.headers, self.extra = status, message, headers, extra


def error_body(status: int, message: str, **extra: Any) -> bytes:
    return json.dumps({"error": message, "status": status, **extra}).encode()


def invalid(field: str, message: str, **extra: Any) -> ApiError:
    return ApiError(422, message, problems=[{"field": field, "message": message, **extra}])


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
        values = [
            self.model.name,
            self.label_name,
            self.sampler.seed,
            self.sampler.sampler,
            steps,
            f"{self.sampler.guidance:g}",
            f"{seconds:.3f}",
        ]
        return {k: str(v) for k, v in zip(RESULT_HEADERS, values)} | {"Cache-Control": "no-store"}


@dataclass(frozen=True)
class LongInteger:
    """A JSON integer too long to be any allowed value (Python refuses to convert one of over
    4,300 digits; anything over MAX_DIGITS is out of every range here anyway)."""

    digits: int

    MAX_DIGITS = 40

    @classmethod
    def parse(cls, text: str) -> "int | LongInteger":
        digits = len(text.lstrip("-"))
        return int(text) if digits <= cls.MAX_DIGITS else cls(digits)

    def __str__(self) -> str:
        return f"an integer of {self.digits} digits"


def parse_body(raw: bytes) -> Any:
    """The JSON body, refusing repeated keys (DuplicateKey) and reading huge integers as LongInteger."""
    return loads_strict(raw, parse_int=LongInteger.parse)


def shown(value: Any) -> str:
    """A value as the client sent it (JSON spelling), cut to 60 characters."""
    if isinstance(value, LongInteger):
        return str(value)
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class Fields:
    """Collects every problem of one request; ``check`` raises them as one 422."""

    def __init__(self) -> None:
        self.problems: list[dict] = []

    def bad(self, field: str, message: str, **extra: Any) -> None:
        self.problems.append({"field": field, "message": message, **extra})

    def check(self) -> None:
        if self.problems:
            raise ApiError(422, "; ".join(p["message"] for p in self.problems), problems=self.problems)

    def integer(self, field: str, value: Any, low: int, high: int, text: bool = False) -> int | None:
        """A JSON integer (or, from a form, ASCII digits) in low..high; None when absent or bad."""
        if value is None:
            return None
        if text and isinstance(value, str):
            if (parsed := ascii_int(value)) is None:
                self.bad(field, f"{field} must be an integer in ASCII digits 0-9, got {shown(value)}")
                return None
            value = parsed
        if isinstance(value, LongInteger):
            self.bad(field, f"{field} must be in {low}..{high}, got {value}", min=low, max=high)
        elif isinstance(value, bool) or not isinstance(value, int):
            self.bad(field, f"{field} must be an integer, got {shown(value)}")
        elif not low <= value <= high:
            self.bad(field, f"{field} must be in {low}..{high}, got {shown(value)}", min=low, max=high)
        else:
            return value
        return None

    def number(self, field: str, value: Any, low: float, high: float) -> float | None:
        """A finite JSON number in low..high (compared before any cast: 10**400 is not an overflow)."""
        if value is None:
            return None
        if isinstance(value, LongInteger):
            self.bad(field, f"{field} must be in {low:g}..{high:g}, got {value}", min=low, max=high)
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            self.bad(field, f"{field} must be a number, got {shown(value)}")
        elif isinstance(value, float) and not math.isfinite(value):
            self.bad(field, f"{field} must be a finite number, got {shown(value)}")
        elif not low <= value <= high:
            self.bad(field, f"{field} must be in {low:g}..{high:g}, got {shown(value)}", min=low, max=high)
        else:
            return float(value)
        return None

    def choice(self, field: str, value: Any, allowed: tuple[str, ...], default: str) -> str:
        if value is None:
            return default
        if not isinstance(value, str) or value not in allowed:
            self.bad(field, f"unknown {field} {shown(value)}", allowed=list(allowed))
        return value if value in allowed else default


def build_job(
    config: ServeConfig, models: dict[str, ServedModel], fields: dict[str, Any], text: bool = False, f: Fields | None = None
) -> Job:
    """Validate one request's fields (JSON names, or the form's: text for label) against the limits.

    ``f``: problems found before (unknown fields, files), reported with these.
    """
    c, f = config, f or Fields()
    label_field = "text" if text else "label"
    model = next(iter(models.values()))
    version = fields.get("version")
    if isinstance(version, bool) or not isinstance(version, (str, int, type(None))):
        f.bad("version", f"version must be a string or an integer, got {shown(version)}", allowed=list(models))
    elif version is not None and str(version).strip() != "":
        found = find_model(models, str(version))
        if found is None:
            f.bad("version", f"unknown version {shown(version)}", allowed=list(models))
        model = found or model
    label, label_index, label_name = fields.get(label_field), -1, "unconditional"
    allowed = [*model.labels, *ALIASES, "none"]
    use = f"use a class name, an index 0-{len(model.labels) - 1} in ASCII digits, an alias or 'none'"
    if isinstance(label, LongInteger):
        f.bad(label_field, f"unknown {label_field} ({label}); {use}", allowed=allowed)
    elif isinstance(label, bool) or not isinstance(label, (str, int)):
        f.bad(label_field, f"{label_field} must be a string or an integer, got {shown(label)}; {use}", allowed=allowed)
    else:
        try:
            label_index = parse_label(label, model.labels)
            label_name = model.labels[label_index] if label_index >= 0 else "unconditional"
        except MobileGenError:
            f.bad(label_field, f"unknown {label_field} {shown(label)}; {use}", allowed=allowed)
    sampler = f.choice("sampler", fields.get("sampler"), SAMPLERS, c.sampler)
    steps = f.integer("steps", fields.get("steps"), 1, c.max_steps)
    if sampler == "ddpm" and DDPM_STEPS > c.max_steps:
        f.bad("sampler", f"the ddpm sampler runs {DDPM_STEPS} steps, over this server's max_steps ({c.max_steps}); use ddim")
    guidance = f.number("guidance", fields.get("guidance"), 0, c.max_guidance)
    eta = f.number("eta", fields.get("eta"), 0, 1)
    n = f.integer("n", fields.get("n"), 1, c.max_n)
    seed = f.integer("seed", fields.get("seed"), 0, MAX_SEED, text=text)
    output = f.choice("output", fields.get("output"), OUTPUTS, "png")
    f.check()
    sampling = SamplerConfig(
        sampler=sampler,
        steps=steps or c.steps,
        guidance=c.guidance if guidance is None else guidance,
        eta=c.eta if eta is None else eta,
        seed=secrets.randbelow(2**31) if seed is None else seed,  # said back in X-Seed, so it can be repeated
    )
    return Job(model, label_index, label_name, n or 1, sampling, output)


def json_job(raw: bytes, config: ServeConfig, models: dict[str, ServedModel]) -> Job:
    """POST /v1/images: the body must be one JSON object of known fields, label included."""
    try:
        data = parse_body(raw)
    except DuplicateKey as exc:
        raise invalid(exc.key, f"field {shown(exc.key)} is given more than once; send each field once") from None
    except (ValueError, RecursionError) as exc:
        raise invalid("body", f"body is not valid JSON ({str(exc)[:100]}); send e.g. {JSON_EXAMPLE}") from None
    if not isinstance(data, dict):
        raise invalid("body", f"body must be a JSON object, got {type(data).__name__}; send e.g. {JSON_EXAMPLE}")
    f = Fields()
    for name in sorted(set(data) - set(JSON_FIELDS)):
        f.bad(name, f"unknown field {shown(name)}", allowed=list(JSON_FIELDS))
    if "label" not in data:
        f.bad("label", "missing field 'label' (a class name, index, or 'none')")
        data = {**data, "label": "none"}  # so the other fields are still checked
    return build_job(config, models, data, f=f)


def form_job(form, config: ServeConfig, models: dict[str, ServedModel]) -> Job:
    """POST /generate_image: form fields text (class name), version, seed; other fields are ignored."""
    fields, f = {}, Fields()
    for key in FORM_FIELDS:
        value = form.get(key)
        if len(form.getlist(key)) > 1:
            f.bad(key, f"form field {key!r} is given {len(form.getlist(key))} times; send it once")
        elif value is not None and not isinstance(value, str):
            f.bad(key, f"form field {key!r} must be text, not a file")
        else:
            fields[key] = value
    if "text" in fields and not fields["text"]:
        f.bad(
            "text",
            "missing form field 'text' (the class name, e.g. text=cat); send "
            "multipart/form-data or application/x-www-form-urlencoded",
        )
    if not isinstance(fields.get("text"), str) or not fields["text"]:
        fields["text"] = "none"  # reported above; the other fields are still checked
    return build_job(config, models, fields, text=True, f=f)
