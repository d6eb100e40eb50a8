"""Structured pruning followed by a short distillation fine-tune from the unpruned model.

    checkpoint -> prune_channels -> OUT/pruned.pt -> train(init=pruned.pt, teacher=checkpoint) -> OUT/ema.pt

The fine-tune is the ordinary training loop with the unpruned model as teacher, so
OUT/ema.pt and OUT/last.pt are the usual self-describing checkpoints; they carry
the pruned widths in their config, and mobilegen-export takes OUT/ema.pt as it is.
Every input is checked before anything is written. Under torchrun every rank
prunes (the same, deterministic result), rank 0 alone writes pruned.pt, and the
fine-tune is the data-parallel training loop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from mobilegen.compress import count_macs, count_params, prune_channels
from mobilegen.errors import MobileGenError
from mobilegen.files import check_output_file
from mobilegen.models.checkpoint import load_checkpoint, save_checkpoint
from mobilegen.runtime.backends import resolve_device
from mobilegen.train.data import scan_split, steps_per_epoch
from mobilegen.train.distributed import barrier, init_world
from mobilegen.train.loop import EMA, LAST, TrainConfig, TrainResult, train

PRUNED = "pruned.pt"  # the pruned weights before the fine-tune


@dataclass(frozen=True)
class PruneResult:
    pruned: Path
    params: tuple[int, int]  # before, after (parameters the forward pass uses)
    macs: tuple[int, int]  # before, after, per denoiser step at batch 1
    heads: tuple[int, int]  # attention heads over the applied blocks, before, after
    train: TrainResult | None


def _heads(model) -> int:
    from torch import nn

    return sum(m.num_heads for m in model.modules() if isinstance(m, nn.MultiheadAttention))


def prune_and_distill(checkpoint: Path, ratio: float, head_ratio: float, steps: int, config: TrainConfig,
                      on_step: Callable[[int, int, float, float], None] | None = None) -> PruneResult:  # fmt: skip
    """Prune `checkpoint`, write OUT/pruned.pt, then fine-tune it for `steps` steps (0: no fine-tune)."""
    for name, value in (("--ratio", ratio), ("--head-ratio", head_ratio)):
        if not 0.0 <= value < 1.0:
            raise MobileGenError(f"{name} must be in [0, 1), got {value}")
    if ratio == 0 and head_ratio == 0:
        raise MobileGenError("nothing to prune: give --ratio and/or --head-ratio above 0")
    if steps < 0:
        raise MobileGenError(f"--steps must be >= 0, got {steps}")
    images = len(scan_split(Path(config.data) / "train")) if steps else 0  # layout errors before any work
    world, _ = init_world(resolve_device(config.device))  # a plain run: World(0, 1), nothing to join
    for name in (PRUNED, LAST, EMA):  # the fine-tune's teacher is the input: never overwritten
        check_output_file(config.out / name, config.overwrite, [checkpoint])
    barrier(world)  # every rank has checked -o before rank 0 writes into it
    loaded = load_checkpoint(checkpoint)
    pruned = prune_channels(loaded.model, ratio, head_ratio)
    path = config.out / PRUNED
    if world.main:
        save_checkpoint(path, pruned, source=str(checkpoint), source_sha256=loaded.sha256,
                        prune={"ratio": ratio, "head_ratio": head_ratio, "method": "torch-pruning L2 magnitude"})  # fmt: skip
    barrier(world)  # the other ranks start the fine-tune from the file rank 0 wrote
    result = PruneResult(
        pruned=path,
        params=(count_params(loaded.model), count_params(pruned)),
        macs=(count_macs(loaded.model), count_macs(pruned)),
        heads=(_heads(loaded.model), _heads(pruned)),
        train=None,
    )
    if not steps:
        return result
    epochs = math.ceil(steps / steps_per_epoch(images, config.batch_size))  # the LR schedule spans the fine-tune
    finetune = replace(config, arch=pruned.arch, init=path, teacher=Path(checkpoint), epochs=epochs, max_steps=steps)
    return replace(result, train=train(finetune, on_step))
