"""Images from any backend: a checkpoint (PyTorch) or an exported ONNX/TFLite file.

For artifacts, the schedule, labels and IO contract come from the manifest beside
the file, exactly as an app on a phone would read them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from mobilegen.contract.labels import CIFAR10_LABELS, parse_label
from mobilegen.contract.manifest import MANIFEST, read_manifest, spec_from_manifest
from mobilegen.diffusion import SamplerConfig, Schedule, linear_schedule, run_sampler, to_uint8
from mobilegen.diffusion.schedule import schedule_from_alphas_cumprod
from mobilegen.errors import InvalidInput
from mobilegen.files import check_output_file
from mobilegen.models.checkpoint import load_or_default
from mobilegen.runtime.backends import OnnxBackend, TFLiteBackend, TorchBackend, open_artifact
from mobilegen.runtime.images import image_format, save_image

ARTIFACT_SUFFIXES = (".onnx", ".tflite")


@dataclass(frozen=True)
class Generated:
    images: torch.Tensor  # uint8 [N,3,64,64]
    backend: str
    model: str  # what produced the images, e.g. "student_v2 from ckpt.pt"
    label_name: str
    seconds: float


@dataclass(frozen=True)
class OpenedModel:
    backend: TorchBackend | OnnxBackend | TFLiteBackend
    arch: str
    description: str  # e.g. "student_v2 from ckpt.pt"
    schedule: Schedule
    labels: tuple[str, ...]


def artifact_manifest(model_path: Path | None) -> dict | None:
    """The manifest beside an ONNX/TFLite file; None for a checkpoint or the default model."""
    if model_path is not None and model_path.suffix in ARTIFACT_SUFFIXES:
        return read_manifest(model_path.parent)
    return None


def open_file(model_path: Path, spec, target: str | None):
    """An artifact on x86 (ONNX Runtime / LiteRT), or a .tflite file on a phone target (runtime/targets.py)."""
    if target is None:
        return open_artifact(model_path, spec)
    from mobilegen.runtime.targets import open_target

    return open_target(model_path, spec, target)


def open_backend(
    model_path: Path | None,
    device: str,
    arch: str | None,
    manifest: dict | None = None,
    bounded: tuple[int, float] | None = None,
    target: str | None = None,
) -> OpenedModel:
    """A checkpoint (or the default model) on PyTorch, or an artifact described by its manifest
    (a .tflite file on a phone target if given). bounded = (rows per call, max tensor MB):
    PyTorch runs attention in chunks (models/budget.py)."""
    manifest = manifest or artifact_manifest(model_path)
    if target is not None and (model_path is None or model_path.suffix != ".tflite"):
        raise InvalidInput(f"--target runs an exported .tflite file on a phone path; got {model_path or 'no model file'}")
    if manifest is not None:
        schedule = schedule_from_alphas_cumprod(manifest["schedule"]["alphas_cumprod"])
        arch_name = manifest["model"]["arch"]
        return OpenedModel(
            open_file(model_path, spec_from_manifest(manifest), target),
            arch_name,
            f"{arch_name} exported from {manifest['source']['checkpoint']}",
            schedule,
            tuple(manifest["labels"]),
        )
    loaded = load_or_default(model_path, arch)
    if bounded is not None:
        from mobilegen.models.budget import bound_heap, set_bounded_attention

        set_bounded_attention(loaded.model, *bounded)
        bound_heap()
    return OpenedModel(
        TorchBackend(loaded.model, device), loaded.arch, f"{loaded.arch} from {loaded.source}", linear_schedule(), CIFAR10_LABELS
    )


@dataclass(frozen=True)
class Generation:
    """A sampling run with every input checked and the model open: nothing is left that can
    fail on bad input once ``run`` starts (the CLI starts its progress bar only then)."""

    opened: OpenedModel
    label: int
    n: int
    config: SamplerConfig
    out: Path | None

    @property
    def steps(self) -> int:
        return len(self.config.timesteps(self.opened.schedule))

    def run(self, on_step: Callable[[int, torch.Tensor], None] | None = None) -> Generated:
        backend = self.opened.backend
        start = time.perf_counter()
        x = run_sampler(
            backend.torch_denoise,
            torch.full((self.n,), self.label),
            self.opened.schedule,
            self.config,
            getattr(backend, "device", "cpu"),
            on_step,
        )
        seconds = time.perf_counter() - start
        images = to_uint8(x)
        if self.out is not None:
            save_image(images, self.out)
        name = "unconditional" if self.label < 0 else self.opened.labels[self.label]
        return Generated(images, backend.name, self.opened.description, name, seconds)


def prepare(
    model_path: Path | None,
    label: str,
    n: int,
    config: SamplerConfig,
    device: str = "auto",
    arch: str | None = None,
    out: Path | None = None,
    overwrite: bool = False,
    max_tensor_mb: float | None = None,
    target: str | None = None,
) -> Generation:
    """Check the output path, the label and the model, and open the model (on target, if given)."""
    manifest = artifact_manifest(model_path)
    if out is not None:  # the input, and for an artifact every file of its export, is never overwritten
        folder = model_path.parent if manifest else None
        inputs = [model_path] + ([folder / MANIFEST] + [folder / name for name in manifest["files"]] if manifest else [])
        check_output_file(out, overwrite, inputs)
        image_format(out)
    y = parse_label(label, tuple(manifest["labels"]) if manifest else CIFAR10_LABELS)  # before loading anything
    rows = n * (2 if config.guidance else 1)  # a guided step runs both passes as one batch
    opened = open_backend(model_path, device, arch, manifest, (rows, max_tensor_mb) if max_tensor_mb else None, target)
    return Generation(opened, y, n, config, out)


def generate(
    model_path: Path | None,
    label: str,
    n: int,
    config: SamplerConfig,
    device: str = "auto",
    arch: str | None = None,
    out: Path | None = None,
    on_step: Callable[[int, torch.Tensor], None] | None = None,
    overwrite: bool = False,
    max_tensor_mb: float | None = None,
    target: str | None = None,
) -> Generated:
    """prepare, then run."""
    return prepare(model_path, label, n, config, device, arch, out, overwrite, max_tensor_mb, target).run(on_step)
