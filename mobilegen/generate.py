"""Images from any backend: a checkpoint (PyTorch) or an exported ONNX/TFLite file.

For artifacts, the schedule, labels and IO contract come from the manifest beside
the file, exactly as an app on a phone would read them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from mobilegen.backends import TorchBackend, open_artifact
from mobilegen.checkpoint import load_or_default
from mobilegen.diffusion import SamplerConfig, linear_schedule, run_sampler, to_uint8
from mobilegen.diffusion.schedule import schedule_from_alphas_cumprod
from mobilegen.exporter.manifest import read_manifest, spec_from_manifest
from mobilegen.images import save_png
from mobilegen.labels import CIFAR10_LABELS, parse_label

ARTIFACT_SUFFIXES = (".onnx", ".tflite")


@dataclass(frozen=True)
class Generated:
    images: torch.Tensor  # uint8 [N,3,64,64]
    backend: str
    model: str  # what produced the images, e.g. "student_v2 from ckpt.pt"
    label_name: str
    seconds: float


def open_backend(model_path: Path | None, device: str, arch: str | None):
    """-> (backend, description, schedule, labels)."""
    if model_path is not None and model_path.suffix in ARTIFACT_SUFFIXES:
        manifest = read_manifest(model_path.parent)
        spec = spec_from_manifest(manifest)
        schedule = schedule_from_alphas_cumprod(manifest["schedule"]["alphas_cumprod"])
        described = f"{manifest['model']['arch']} exported from {manifest['source']['checkpoint']}"
        return open_artifact(model_path, spec), described, schedule, tuple(manifest["labels"])
    loaded = load_or_default(model_path, arch)
    backend = TorchBackend(loaded.model, device)
    return backend, f"{loaded.arch} from {loaded.source}", linear_schedule(), CIFAR10_LABELS


def generate(
    model_path: Path | None,
    label: str,
    n: int,
    config: SamplerConfig,
    device: str = "auto",
    arch: str | None = None,
    out: Path | None = None,
    on_step: Callable[[int, torch.Tensor], None] | None = None,
) -> Generated:
    is_artifact = model_path is not None and model_path.suffix in ARTIFACT_SUFFIXES
    y = parse_label(label, tuple(read_manifest(model_path.parent)["labels"]) if is_artifact else CIFAR10_LABELS)  # before loading
    backend, described, schedule, labels = open_backend(model_path, device, arch)
    start = time.perf_counter()
    x = run_sampler(backend.torch_denoise, torch.full((n,), y), schedule, config,
                    getattr(backend, "device", "cpu"), on_step)  # fmt: skip
    seconds = time.perf_counter() - start
    images = to_uint8(x)
    if out is not None:
        save_png(images, out)
    name = "unconditional" if y < 0 else labels[y]
    return Generated(images, backend.name, described, name, seconds)
