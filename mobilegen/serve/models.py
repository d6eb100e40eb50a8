"""The models a server holds: loaded once, each behind its own micro-batcher.

Batch invariance. Micro-batching must not change a request's image: the same seed
gives the same PNG bytes whether the request ran alone or shared model calls. Plain
PyTorch on the CPU does not give that bit for bit; three kernels pick their
arithmetic by batch size (measured on torch 2.13 CPU, student_v2):
  * the time-embedding Linear layers (M = batch rows): one GEMM kernel below 4 rows,
    another from 4 up;
  * GroupNorm on a channels-last input (what oneDNN convs return for batch >= 2)
    splits the batch*H*W range across threads, so with an odd batch one sample's
    sum is split between two threads;
  * a batch of exactly 1 takes other conv and GroupNorm paths.
``make_batch_invariant`` fixes all three without touching the weights: the
embedding Linear runs in fixed blocks of 4 rows, GroupNorm gets a contiguous input
(its NCHW kernel reduces each sample in one thread), and a single row is padded to 2.
tests/serve/test_app.py checks PNG bytes batched against unbatched; without these
fixes 5 of 8 images (real v2, DDIM 20) differed in 1-8 pixels by one level. The
cost measured 6-8% of a model call on a busy 2-core CPU.

On CUDA the kernels themselves change with the batch: measured on an H200 (torch
2.11, float16 autocast, real v2, `docs/measurements/serve-h200/batch_invariance.py`), rows run in batches
of 2-4 match their lone run bit for bit, but from 8 rows up every row differs (up
to 0.0039), with cuDNN's deterministic mode too; in float32 from 3 rows up. So on
CUDA every model call runs exactly ``rows`` rows (the server's max batch, at least
2): calls are padded to that shape, larger ones split into chunks of it. A lone
request then pays for a full batch (8.4 instead of 4.8 ms per step at 32 rows on
the H200); `--max-batch` trades that latency against throughput. Artifact backends
(ONNX/TFLite) run every row in a call of the file's fixed batch; they are not
covered by the byte-equality test.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from mobilegen.diffusion import Schedule
from mobilegen.errors import MobileGenError
from mobilegen.serve.batcher import MicroBatcher, OnBatch, OnDrop, Run
from mobilegen.serve.config import ModelSource, ServeConfig

log = logging.getLogger(__name__)

LINEAR_BLOCK = 4
SHORT_NAMES = {"student_v1": "v1", "student_v2": "v2", "teacher": "teacher"}


class _BlockedLinear(nn.Module):
    """Linear evaluated in fixed blocks of rows, so a row's result never depends on the batch."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.linear = linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        pad = -n % LINEAR_BLOCK
        if pad:
            x = torch.cat([x, x.new_zeros(pad, *x.shape[1:])])
        return torch.cat([self.linear(block) for block in x.split(LINEAR_BLOCK)])[:n]


class _ContiguousGroupNorm(nn.Module):
    def __init__(self, norm: nn.GroupNorm):
        super().__init__()
        self.norm = norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.contiguous())


def make_batch_invariant(model: nn.Module) -> nn.Module:
    """Wrap the batch-size-dependent layers in place (see the module docstring)."""
    for module in list(model.modules()):
        emb = getattr(module, "emb_layer", None)  # Down/Up: Sequential(SiLU, Linear) on the [N, E] embedding
        if isinstance(emb, nn.Sequential) and isinstance(emb[-1], nn.Linear):
            emb[-1] = _BlockedLinear(emb[-1])
        for name, child in list(module.named_children()):
            if isinstance(child, nn.GroupNorm):
                setattr(module, name, _ContiguousGroupNorm(child))
    return model


class TorchRunner:
    """(x, t, y) -> eps on the model's device; float16 autocast on CUDA, float32 elsewhere.

    ``rows``: run every model call with exactly this many rows (padded, or split into
    chunks), so that no row's result depends on the batch it shares (see the module
    docstring). None: any batch of 2 or more rows (a single row is padded to 2).
    """

    def __init__(self, model: nn.Module, device: torch.device, dtype: str | None = None, rows: int | None = None):
        if rows is not None and rows < 2:
            raise ValueError(f"rows must be at least 2, got {rows}")
        self.model = make_batch_invariant(model).to(device).eval()
        self.device = device
        self.dtype = dtype or ("float16" if device.type == "cuda" else "float32")
        self.rows = rows

    def warm_up(self) -> None:
        """One call at load, so the first request does not pay for kernel selection and JIT."""
        self(torch.zeros(2, 3, 64, 64), torch.full((2,), 500.0), torch.tensor([0, -1], dtype=torch.int32))

    def __call__(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        rows = self.rows or max(n, 2)
        pad = -n % rows
        if pad:  # copies of the last row: a padding row never changes another row's result
            x, t, y = (torch.cat([v, v[-1:].expand(pad, *v.shape[1:])]) for v in (x, t, y))
        half = self.dtype == "float16"
        amp = torch.autocast(self.device.type, dtype=torch.float16) if half else contextlib.nullcontext()
        with torch.inference_mode(), amp:
            x, t, y = x.to(self.device), t.to(self.device), y.to(self.device)
            eps = torch.cat([self.model(*chunk) for chunk in zip(x.split(rows), t.split(rows), y.split(rows))])
        return eps.float()[:n]


@dataclass
class ServedModel:
    name: str
    arch: str
    source: str  # file name, or the description of the default model
    sha256: str | None
    backend: str
    device: torch.device
    dtype: str
    labels: tuple[str, ...]
    schedule: Schedule
    batcher: MicroBatcher

    @property
    def denoise(self) -> Run:
        """The model itself, (x, t, y) -> eps: what the batcher runs each merged call on."""
        return self.batcher.run

    def describe(self, config: ServeConfig) -> dict:
        return {
            "name": self.name,
            "arch": self.arch,
            "source": self.source,
            "checkpoint_sha256": self.sha256,
            "backend": self.backend,
            "device": self.device.type,
            "dtype": self.dtype,
            "labels": list(self.labels),
            "defaults": {"sampler": config.sampler, "steps": config.steps, "guidance": config.guidance, "eta": config.eta},
        }


def load_model(
    source: ModelSource, config: ServeConfig, on_batch: OnBatch | None = None, on_drop: OnDrop | None = None
) -> ServedModel:
    """Load one checkpoint (or ONNX/TFLite artifact with its manifest) and start its batcher."""
    from mobilegen.contract.labels import CIFAR10_LABELS
    from mobilegen.diffusion import linear_schedule
    from mobilegen.files import sha256_file
    from mobilegen.models.checkpoint import load_or_default
    from mobilegen.runtime.backends import resolve_device
    from mobilegen.runtime.generate import ARTIFACT_SUFFIXES, open_backend

    wait = config.max_wait_ms / 1000
    path = source.path
    if path is not None and path.suffix in ARTIFACT_SUFFIXES:
        if not path.is_file():
            raise MobileGenError(f"model file not found: {path}")
        opened = open_backend(path, "cpu", None)
        name = source.name or SHORT_NAMES.get(opened.arch, opened.arch)
        batcher = MicroBatcher(
            opened.backend.torch_denoise, config.max_batch, wait, name, _tag(on_batch, name), _tag(on_drop, name)
        )
        return ServedModel(
            name,
            opened.arch,
            path.name,
            sha256_file(path),
            opened.backend.name,
            torch.device("cpu"),
            "float32",
            opened.labels,
            opened.schedule,
            batcher,
        )
    loaded = load_or_default(path, source.arch)
    if config.max_tensor_mb is not None:  # planned for the largest call, --max-batch rows
        from mobilegen.models.budget import set_bounded_attention

        set_bounded_attention(loaded.model, max(2, config.max_batch), config.max_tensor_mb)
    device = resolve_device(config.device)
    runner = TorchRunner(loaded.model, device, rows=max(2, config.max_batch) if device.type == "cuda" else None)
    try:
        runner.warm_up()  # on CUDA a call of the full --max-batch rows: every later call has this shape
    except torch.OutOfMemoryError as exc:
        raise MobileGenError(f"a model call of {runner.rows} rows does not fit in GPU memory ({exc}); lower --max-batch") from exc
    name = source.name or SHORT_NAMES.get(loaded.arch, loaded.arch)
    batcher = MicroBatcher(runner, config.max_batch, wait, name, _tag(on_batch, name), _tag(on_drop, name))
    shown = Path(loaded.source).name if path is not None else loaded.source
    return ServedModel(
        name,
        loaded.arch,
        shown,
        loaded.sha256,
        f"pytorch-{device.type}",
        device,
        runner.dtype,
        CIFAR10_LABELS,
        linear_schedule(),
        batcher,
    )


def _tag(callback, name: str):
    """A metrics callback for one model: callback(name, *args)."""
    if callback is None:
        return None
    return lambda *args: callback(name, *args)


def load_models(config: ServeConfig, on_batch=None, on_drop=None) -> dict[str, ServedModel]:
    """Every configured model, by name (the untrained default v2 when none is given)."""
    from mobilegen.models.budget import bound_heap

    # Requests of every size make tensors of every size; under glibc's default mmap threshold
    # (it grows to 32 MB) the freed ones stay on the heap, fragmented: measured, a server's RSS
    # grew from 520 MB to 1.9 GB over 300 requests. With large blocks mmapped and returned on
    # free it stays at its working set and returns to it when idle (docs/serving.md, "Memory").
    bound_heap()
    models: dict[str, ServedModel] = {}
    try:
        for source in config.models or (ModelSource(None, "v2"),):
            served = load_model(source, config, on_batch, on_drop)
            if served.name in models:
                served.batcher.close()
                raise MobileGenError(f"two models are named {served.name!r}; name them with --model NAME=PATH")
            models[served.name] = served
            log.info("serving %s: %s from %s on %s (%s)", served.name, served.arch, served.source, served.device, served.dtype)
    except BaseException:
        for served in models.values():
            served.batcher.close()
        raise
    return models


def find_model(models: dict[str, ServedModel], version: str) -> ServedModel | None:
    """The app sends version "2"; models are named "v2": both spellings find it."""
    text = version.strip()
    for key in (text, text.lower(), f"v{text}", text[1:] if text[:1] in "vV" else None):
        if key and key in models:
            return models[key]
    return None
