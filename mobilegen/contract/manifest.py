"""manifest.json: everything an app developer or CI needs, and nothing that varies by run
except the latency section."""

from __future__ import annotations

import gzip
import json
from importlib import metadata
from pathlib import Path

from mobilegen.contract.labels import CIFAR10_LABELS
from mobilegen.contract.schema import SCHEMA_VERSION, validate_manifest
from mobilegen.contract.defaults import LABELS_FILE, MANIFEST_FILE
from mobilegen.contract.spec import DenoiserSpec
from mobilegen.diffusion import SamplerConfig, Schedule
from mobilegen.errors import ManifestError
from mobilegen.files import DuplicateKey, loads_strict, sha256_file, write_json  # noqa: F401  mf.write_json: strict JSON (no NaN/Infinity), atomic

MANIFEST = MANIFEST_FILE
LABELS = LABELS_FILE
LIBRARIES = ("mobilegen", "torch", "onnx", "onnxruntime", "onnxsim", "onnx2tf", "ai-edge-litert", "numpy")


def versions() -> dict[str, str]:
    out = {}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def gzip_size(path: Path) -> int:
    # mtime=0 keeps the number independent of when it was computed.
    return len(gzip.compress(path.read_bytes(), compresslevel=9, mtime=0))


def file_entry(path: Path, precision: str, ops: list[str]) -> dict:
    return {
        "sha256": sha256_file(path),
        "bytes": path.stat().st_size,
        "gzip_bytes": gzip_size(path),
        "precision": precision,
        "op_types": ops,
    }


def sampler_defaults(schedule: Schedule) -> dict:
    cfg = SamplerConfig()
    return {
        "sampler": cfg.sampler,
        "steps": cfg.steps,
        "guidance": cfg.guidance,
        "eta": cfg.eta,
        "timesteps": cfg.timesteps(schedule),
        "guidance_rule": "eps = eps_uncond + guidance * (eps_cond - eps_uncond); y = -1 gives eps_uncond",
        "image_from_x": "uint8 = floor((clamp(x, -1, 1) + 1) / 2 * 255)",
    }


def build_manifest(
    model: dict,
    source: dict,
    spec: DenoiserSpec,
    schedule: Schedule,
    files: dict[str, dict],
    compression: dict,
    parity: dict,
    status: str,
) -> dict:
    return {
        "schema_version": SCHEMA_VERSION,
        "status": status,
        "model": model,
        "source": source,
        "versions": versions(),
        "compression": compression,
        "io": spec.to_dict(),
        "schedule": schedule.to_dict(),
        "sampler_defaults": sampler_defaults(schedule),
        "labels": list(CIFAR10_LABELS),
        "files": files,
        "parity": parity,
    }


def read_manifest(directory: Path) -> dict:
    path = directory / MANIFEST
    if not path.is_file():
        raise ManifestError(f"{directory}: no {MANIFEST}; expected a folder written by mobilegen-export")
    try:
        data = loads_strict(path.read_text())
    except DuplicateKey as exc:
        raise ManifestError(f"{path}: refused: {exc}; a manifest must have one reading (re-export the folder)") from None
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise ManifestError(f"{path}: not valid JSON ({str(exc)[:120]})") from None
    return validate_manifest(data, path)


def spec_from_manifest(manifest: dict) -> DenoiserSpec:
    io = manifest["io"]
    return DenoiserSpec(
        batch=io["batch"],
        layout=io["layout"],
        image_size=io["image_size"],
        channels=io["channels"],
        num_classes=io["num_classes"],
        opset=io["opset"],
    )
