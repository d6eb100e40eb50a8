"""The manifest schema, checked once when a manifest is read.

Kept beside the export contract (spec.py) it describes. A manifest that breaks it
is refused with one line naming the field (exit 2), before any file is opened:
everything that reads a manifest (verify, sample, bench, report, serve) relies on
these facts holding.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from mobilegen.contract.defaults import TARGET_NAMES
from mobilegen.contract.spec import ARCHS, LAYOUTS, SLOTS, TIMESTEPS, DenoiserSpec
from mobilegen.diffusion.sampler import SAMPLERS
from mobilegen.diffusion.schedule import alphas_cumprod_problem
from mobilegen.errors import ManifestError

SCHEMA_VERSION = 1
STATUSES = ("passed", "failed")
SHA256 = re.compile(r"^[0-9a-f]{64}$")
JSON_NAMES = {dict: "object", list: "list", str: "string", int: "integer", float: "number", bool: "boolean"}
TYPE_NAMES = {dict: "an object", list: "a list", str: "a string", int: "an integer", bool: "true or false"}


class Invalid(Exception):
    def __init__(self, field: str, problem: str):
        super().__init__(f"{field}: {problem}")


def typed(value: Any, field: str, kind: type) -> Any:
    ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
    if not ok:
        got = json_text(value) if value is None else f"got {JSON_NAMES.get(type(value), type(value).__name__)} {json_text(value)}"
        raise Invalid(field, f"must be {TYPE_NAMES[kind]} ({got})")
    return value


def json_text(value: Any) -> str:
    """A value as JSON writes it, cut to 40 characters (an integer of thousands of digits included)."""
    if value is None:
        return "missing or null"
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 100:
        return f"an integer of about {int(value.bit_length() * 0.30103) + 1} digits"
    text = json.dumps(value) if isinstance(value, (dict, list, str, int, float)) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def member(obj: dict, key: str, field: str, kind: type) -> Any:
    return typed(obj.get(key), f"{field}.{key}" if field else key, kind)


def whole(obj: dict, key: str, field: str, low: int, high: int) -> int:
    value = member(obj, key, field, int)
    if not low <= value <= high:
        raise Invalid(f"{field}.{key}", f"must be in {low}..{high}, got {json_text(value)}")
    return value


def one_of(obj: dict, key: str, field: str, allowed: tuple) -> Any:
    value = obj.get(key)
    if value not in allowed:
        raise Invalid(
            f"{field}.{key}" if field else key, f"must be one of {', '.join(map(str, allowed))} (got {json_text(value)})"
        )
    return value


def check_io(m: dict) -> DenoiserSpec:
    io = member(m, "io", "", dict)
    spec = DenoiserSpec(
        batch=whole(io, "batch", "io", 1, 4096),
        layout=one_of(io, "layout", "io", LAYOUTS),
        image_size=whole(io, "image_size", "io", 64, 64),
        channels=whole(io, "channels", "io", 3, 3),
        num_classes=whole(io, "num_classes", "io", 1, 1000),
        opset=whole(io, "opset", "io", 1, 100),
    )
    want = json.loads(json.dumps(spec.to_dict()))  # tuples -> lists, as read from JSON
    for key in ("inputs", "outputs"):
        if io.get(key) != want[key]:
            shapes = {t["name"]: t["shape"] for t in want[key]}
            raise Invalid(
                f"io.{key}",
                f"does not match the contract for batch {spec.batch}, layout {spec.layout} "
                f"(expected names, dtypes and shapes {shapes} as mobilegen-export writes them)",
            )
    return spec


def check_schedule(m: dict) -> None:
    schedule = member(m, "schedule", "", dict)
    T = whole(schedule, "T", "schedule", TIMESTEPS, TIMESTEPS)
    problem = alphas_cumprod_problem(member(schedule, "alphas_cumprod", "schedule", list), T)
    if problem:
        raise Invalid("schedule.alphas_cumprod", problem)
    defaults = member(m, "sampler_defaults", "", dict)
    one_of(defaults, "sampler", "sampler_defaults", SAMPLERS)
    whole(defaults, "steps", "sampler_defaults", 1, T - 1)
    for key in ("guidance", "eta"):
        value = defaults.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise Invalid(f"sampler_defaults.{key}", f"must be a finite number >= 0 (got {json_text(value)})")
    steps = member(defaults, "timesteps", "sampler_defaults", list)
    if not all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t < T for t in steps):
        raise Invalid("sampler_defaults.timesteps", f"must be a list of integer timesteps in 0..{T - 1}")


def check_labels(m: dict, spec: DenoiserSpec) -> None:
    labels = member(m, "labels", "", list)
    if len(labels) != spec.num_classes or not all(isinstance(v, str) and v.strip() for v in labels):
        raise Invalid("labels", f"must be {spec.num_classes} non-empty class names (io.num_classes), got {len(labels)} entries")
    if len(set(labels)) != len(labels):
        raise Invalid("labels", "class names must be unique")


def check_files(m: dict) -> None:
    files = member(m, "files", "", dict)
    if not files:
        raise Invalid("files", "lists no file")
    for name, entry in files.items():
        field = f"files[{name!r}]"
        if name not in SLOTS:
            raise Invalid(field, f"is not a file of an export folder; allowed names: {', '.join(SLOTS)}")
        typed(entry, field, dict)
        if not SHA256.match(str(entry.get("sha256"))):
            raise Invalid(f"{field}.sha256", "must be 64 lowercase hex digits")
        whole(entry, "bytes", field, 1, 1 << 40)
        if entry.get("precision") != SLOTS[name]:
            raise Invalid(
                f"{field}.precision", f"must be {SLOTS[name]!r} for this file (got {json_text(entry.get('precision'))})"
            )
        ops = member(entry, "op_types", field, list)
        if not all(isinstance(op, str) for op in ops):
            raise Invalid(f"{field}.op_types", "must be a list of strings")


def check_targets(m: dict) -> None:
    """The phone paths an export was checked on (optional; the Kotlin library picks its path from them)."""
    if "targets" not in m:
        return
    targets = member(m, "targets", "", dict)
    for name, paths in member(targets, "results", "targets", dict).items():
        field = f"targets.results[{name!r}]"
        if name not in m["files"]:
            raise Invalid(field, "names a file the manifest does not list")
        for path, entry in typed(paths, field, dict).items():
            where = f"{field}[{path!r}]"
            if path not in TARGET_NAMES:
                raise Invalid(where, f"is not a phone path; allowed: {', '.join(TARGET_NAMES)}")
            typed(typed(entry, where, dict).get("passed"), f"{where}.passed", bool)
            typed(entry.get("failures"), f"{where}.failures", list)
            member(entry, "step", where, dict)


def check_manifest(m: Any) -> None:
    typed(m, "manifest", dict)
    if m.get("schema_version") != SCHEMA_VERSION:
        raise Invalid("schema_version", f"must be {SCHEMA_VERSION} (got {json_text(m.get('schema_version'))})")
    one_of(m, "status", "", STATUSES)
    model = member(m, "model", "", dict)
    one_of(model, "arch", "model", ARCHS)
    config = member(model, "config", "model", dict)
    source = member(m, "source", "", dict)
    member(source, "checkpoint", "source", str)
    if source.get("sha256") is not None and not SHA256.match(str(source["sha256"])):
        raise Invalid("source.sha256", "must be null (the default model) or 64 lowercase hex digits")
    spec = check_io(m)
    if config.get("num_classes") != spec.num_classes:
        raise Invalid(
            "io.num_classes", f"is {spec.num_classes}, but the model has {json_text(config.get('num_classes'))} classes"
        )
    check_schedule(m)
    check_labels(m, spec)
    check_files(m)
    member(m, "compression", "", dict)
    prune = member(m["compression"], "prune", "compression", dict)
    amount = prune.get("amount")
    if isinstance(amount, bool) or not isinstance(amount, (int, float)) or not 0 <= amount < 1:
        raise Invalid("compression.prune.amount", f"must be a number in [0, 1) (got {json_text(amount)})")
    for name, entry in member(m, "parity", "", dict).items():
        typed(typed(entry, f"parity[{name!r}]", dict).get("passed"), f"parity[{name!r}].passed", bool)
    check_targets(m)


def validate_manifest(data: Any, path: Path) -> dict:
    """data if it follows the schema, else ManifestError naming the first bad field."""
    try:
        check_manifest(data)
    except Invalid as exc:
        raise ManifestError(f"{path}: malformed manifest: {exc}; re-export the folder with mobilegen-export") from None
    return data
