"""Loading and saving checkpoints, in one place.

Reads what the original MobileGen code wrote (a plain ``state_dict``, possibly
wrapped in a dict and possibly carrying ``module.``/``_orig_mod.`` prefixes) and
what we write (a self-describing dict). Never executes pickled code: ``.pt`` files
are read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import functools
import logging
import math
import pickle
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mobilegen.errors import CheckpointError
from mobilegen.files import atomic_write, sha256_file
from mobilegen.models import ARCHS, UNet, UNetConfig

log = logging.getLogger(__name__)

FORMAT = "mobilegen-checkpoint"
FORMAT_VERSION = 1
SUFFIXES = (".pt", ".pth", ".ckpt", ".safetensors")
# Wrapper keys, most preferred first: an EMA copy samples better than raw weights.
WRAPPER_KEYS = ("ema", "ema_model", "model_ema", "ema_state_dict", "state_dict", "model", "model_state_dict", "net")
PREFIXES = ("module.", "_orig_mod.")
DEFAULT_SEED = 0
# What one .pt archive may declare, in multiples of the largest architecture's float32
# weights: a training checkpoint holds weights, EMA and two Adam moments, float64 at most.
ZIP_TOTAL_SLACK = 8
ZIP_OTHER_RECORD_BYTES = 64 << 20  # data.pkl, version, ...: kilobytes in a real checkpoint


@dataclass
class LoadedModel:
    model: UNet
    source: str  # a path, or a description of the default model
    sha256: str | None
    detail: str  # where in the file the weights came from
    meta: dict = field(default_factory=dict)

    @property
    def arch(self) -> str:
        return self.model.arch

    @property
    def path(self) -> Path | None:
        """The checkpoint file (absolute); None for the default model."""
        return Path(self.source) if self.sha256 is not None else None


def expected_shapes(arch: str, config: UNetConfig | None = None) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        model = UNet(config or UNetConfig(arch=arch))
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def seeded_model(arch: str = "student_v2", seed: int = DEFAULT_SEED) -> LoadedModel:
    """Deterministic untrained weights (PyTorch's default init from a fixed seed)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = UNet(UNetConfig(arch=arch)).eval()
    return LoadedModel(
        model=model,
        source=f"default: untrained {arch} (seed {seed}), NOT a trained model",
        sha256=None,
        detail="deterministic random initialisation",
        meta={"seed": seed},
    )


def default_model() -> LoadedModel:
    """The clearly labelled stand-in used when no checkpoint is given: untrained v2, seed 0."""
    return seeded_model("student_v2", DEFAULT_SEED)


@functools.lru_cache(maxsize=1)
def largest_weights() -> tuple[str, int]:
    """(arch, bytes of its float32 state_dict) of the largest architecture."""
    sizes = {arch: 4 * sum(math.prod(s) for s in expected_shapes(arch).values()) for arch in ARCHS}
    return max(sizes.items(), key=lambda kv: kv[1])


def check_zip_sizes(path: Path) -> None:
    """Refuse a torch zip archive whose records declare more bytes than a checkpoint of ours
    can hold, from the zip directory alone: torch.load would inflate every record first."""
    try:
        with zipfile.ZipFile(path) as archive:
            records = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return  # not a zip archive (or a broken one): torch.load reports it without inflating anything
    arch, weights = largest_weights()
    total_limit, record_limit = ZIP_TOTAL_SLACK * weights, 2 * weights  # one storage: a whole model in float64
    data = [r for r in records if "/data/" in r.filename]
    biggest = max(records, key=lambda r: r.file_size, default=None)
    total = sum(r.file_size for r in data)
    too_big = [r for r in records if r.file_size > (record_limit if r in data else ZIP_OTHER_RECORD_BYTES)]
    if too_big or total > total_limit:
        raise CheckpointError(
            f"{path}: refused before reading any tensor: its zip records declare {total / 1e6:,.0f} MB of tensor data "
            f"(largest record {biggest.filename}: {biggest.file_size / 1e6:,.0f} MB), more than any MobileGen checkpoint "
            f"holds (at most {total_limit / 1e6:,.0f} MB in all and {record_limit / 1e6:,.0f} MB per tensor record; the "
            f"largest architecture, {arch}, has {weights / 1e6:,.0f} MB of float32 weights). The file is corrupt or a zip bomb"
        )


def _read_file(path: Path) -> tuple[Any, dict]:
    """Raw object from disk, plus safetensors metadata (empty for torch files)."""
    if not path.is_file():
        if path.is_symlink():
            raise CheckpointError(f"{path}: a symbolic link that leads to no file (dangling, or a loop of links)")
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.suffix not in SUFFIXES:
        raise CheckpointError(f"{path}: unsupported extension {path.suffix!r}; expected one of {', '.join(SUFFIXES)}")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file, safe_open

        try:
            with safe_open(str(path), framework="pt") as fh:
                meta = dict(fh.metadata() or {})
            return load_file(str(path)), meta
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None
    check_zip_sizes(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True), {}
    except pickle.UnpicklingError as exc:
        needed = re.search(r"GLOBAL (\S+)", str(exc))
        if needed is None:
            raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (corrupt pickle data)") from None
        raise CheckpointError(
            f"{path}: refused to load: unpickling it would execute code ({needed.group(1)}), which "
            "weights_only loading never does. Re-save it as a plain state_dict "
            "(torch.save(model.state_dict(), path)) or as .safetensors"
        ) from None
    except Exception as exc:  # a truncated or foreign file fails in many ways inside torch.load
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (truncated or not a checkpoint?): {first}") from None


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def _unwrap(obj: Any) -> tuple[dict[str, torch.Tensor], str]:
    if _is_state_dict(obj):
        return obj, "top-level state_dict"
    if isinstance(obj, dict):
        for key in WRAPPER_KEYS:
            if _is_state_dict(obj.get(key)):
                return obj[key], f"key {key!r}"
    kind = type(obj).__name__
    keys = f" with keys {sorted(map(str, obj))[:8]}" if isinstance(obj, dict) else ""
    raise CheckpointError(
        f"no UNet weights found (a {kind}{keys}); expected a state_dict of tensors, "
        f"possibly under one of: {', '.join(WRAPPER_KEYS)}"
    )


def _strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        while key.startswith(PREFIXES):
            key = key.split(".", 1)[1]
        out[key] = value
    return out


def _match_arch(state: dict[str, torch.Tensor], arch: str | None, config: UNetConfig | None) -> str:
    got = {k: tuple(v.shape) for k, v in state.items()}
    candidates = [arch] if arch else list(ARCHS)
    scores = []
    for name in candidates:
        want = expected_shapes(name, config if config and config.arch == name else None)
        if got == want:
            return name
        same = sum(1 for k, s in want.items() if got.get(k) == s)
        scores.append((same / max(len(want), len(got)), name, want))
    _, nearest, want = max(scores)
    missing = sorted(set(want) - set(got))
    unexpected = sorted(set(got) - set(want))
    wrong = sorted(k for k in set(want) & set(got) if want[k] != got[k])

    def show(keys: list[str]) -> str:
        return ", ".join(keys[:5]) + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "")

    parts = [
        f"missing {len(missing)}: {show(missing)}" if missing else "",
        f"unexpected {len(unexpected)}: {show(unexpected)}" if unexpected else "",
        f"wrong shape {len(wrong)}: {show(wrong)}" if wrong else "",
    ]
    what = f"do not match architecture {arch!r}" if arch else f"match no architecture; nearest is {nearest!r}"
    raise CheckpointError(f"the weights {what}: " + "; ".join(p for p in parts if p))


def float32_weights(state: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """The weights as float32, refusing what would be silently wrong: integer or boolean
    tensors (a cast would publish nonsense as a model) and NaN/Inf values (black images)."""
    out = {}
    for key, value in state.items():
        if not value.is_floating_point():
            raise CheckpointError(
                f"{path}: tensor {key!r} has dtype {str(value.dtype).removeprefix('torch.')}; UNet weights "
                "must be floating point (float32, float16, bfloat16 or float64)"
            )
        value = value.float()
        bad = int((~torch.isfinite(value)).sum())
        if bad:
            raise CheckpointError(
                f"{path}: tensor {key!r} holds {bad} NaN/Inf value(s) (as float32); these weights cannot give a valid image"
            )
        out[key] = value
    return out


def load_checkpoint(path: str | Path, arch: str | None = None) -> LoadedModel:
    """Read a checkpoint safely and return the model in eval mode on the CPU."""
    if arch is not None and arch not in ARCHS:
        raise CheckpointError(f"unknown architecture {arch!r}; expected one of {', '.join(ARCHS)}")
    path = Path(path)
    obj, st_meta = _read_file(path)
    config: UNetConfig | None = None
    meta: dict = {}
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        if obj.get("format_version", 0) > FORMAT_VERSION:
            raise CheckpointError(f"{path}: written by a newer MobileGen (format {obj['format_version']}); upgrade")
        config = UNetConfig(**obj["config"])
        meta = {k: v for k, v in obj.items() if k not in ("weights", "ema", "optimizer")}
    elif st_meta.get("format") == FORMAT:
        import json

        config = UNetConfig(**json.loads(st_meta["config"]))
        meta = dict(st_meta)
    state, detail = _unwrap(
        obj
        if not (isinstance(obj, dict) and obj.get("format") == FORMAT)
        else {"ema": obj.get("ema"), "state_dict": obj.get("weights")}
    )
    state = _strip_prefixes(state)
    if config is not None and arch and arch != config.arch:
        raise CheckpointError(f"{path}: describes itself as {config.arch!r}, but --arch {arch!r} was given")
    name = _match_arch(state, arch or (config.arch if config else None), config)
    model = UNet(config or UNetConfig(arch=name))
    model.load_state_dict(float32_weights(state, path), strict=True)
    log.info("loaded %s from %s (%s)", name, path, detail)
    return LoadedModel(model.eval(), str(path.resolve()), sha256_file(path), detail, meta)


def load_or_default(path: str | Path | None, arch: str | None = None) -> LoadedModel:
    return default_model() if path is None else load_checkpoint(path, arch)


def save_checkpoint(path: str | Path, model: UNet, ema: UNet | None = None, **extra: Any) -> Path:
    """Write a self-describing checkpoint: format, version, arch, config, weights (+ EMA)."""
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "arch": model.arch,
        "config": model.config.to_dict(),
        "weights": model.state_dict(),
        **({"ema": ema.state_dict()} if ema is not None else {}),
        **extra,
    }
    return atomic_write(path, lambda tmp: torch.save(payload, tmp))
