"""Structured pruning followed by a distillation fine-tune from the unpruned model.

    checkpoint -> [teacher trajectories] -> choose heads -> prune_channels -> OUT/pruned.pt
               -> train(init=pruned.pt, teacher=checkpoint) -> OUT/ema.pt

Without --data (the default way to compress a checkpoint you did not train) the
fine-tune is data-free: it learns from the unpruned model's own sampling trajectories
(train/teacher_data.py, cached in OUT/teacher/), and the heads to remove are chosen by
ablation on those trajectories (compress/heads.py); with --data alone it fine-tunes on
the images, and heads go by L2 magnitude unless --head-importance ablation asks for
the trajectories. Whenever both rankings are at hand, both are pruned and their error
before the fine-tune (eps PSNR against the unpruned model on the 77 parity cases) is
reported side by side; the chosen one is written.

The fine-tune is the ordinary training loop with the unpruned model as teacher, so
OUT/ema.pt and OUT/last.pt are the usual self-describing checkpoints; they carry
the pruned widths in their config, and mobilegen-export takes OUT/ema.pt as it is.
Every input is checked before anything is written. --resume continues any stage: the
trajectories, the pruning (pruned.pt is reused when it came from the same checkpoint
and settings) and the fine-tune. Under torchrun (with --data alone) every rank prunes
(the same, deterministic result), rank 0 alone writes pruned.pt, and the fine-tune is
the data-parallel training loop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch

from mobilegen.compress import (
    HEAD_IMPORTANCE,
    applied_blocks,
    count_macs,
    count_params,
    head_ablation_scores,
    heads_to_drop,
    prune_channels,
    weakest_heads,
)
from mobilegen.compress.structured import magnitude_heads
from mobilegen.errors import InvalidInput, MobileGenError
from mobilegen.files import check_output_file
from mobilegen.models.checkpoint import load_checkpoint, save_checkpoint
from mobilegen.runtime.backends import resolve_device
from mobilegen.train.data import scan_split, steps_per_epoch
from mobilegen.train.distributed import barrier, init_world
from mobilegen.train.loop import EMA, LAST, TrainConfig, TrainResult, train
from mobilegen.train.teacher_data import FOLDER, INDEX, Fidelity, TeacherPool, planned_runs, teacher_pool

PRUNED = "pruned.pt"  # the pruned weights before the fine-tune


@dataclass(frozen=True)
class PruneConfig:
    checkpoint: Path
    ratio: float = 0.0  # of the channels of every prunable group
    head_ratio: float = 0.0  # of every applied attention block's heads
    steps: int = 200  # fine-tune steps; 0: prune only
    head_importance: str | None = None  # ablation | magnitude; None: ablation when data-free, else magnitude
    importance_samples: int = 32  # trajectory inputs the ablation runs on

    def __post_init__(self) -> None:
        for name, value in (("--ratio", self.ratio), ("--head-ratio", self.head_ratio)):
            if not 0.0 <= value < 1.0:
                raise InvalidInput(f"{name} must be in [0, 1), got {value}")
        if self.ratio == 0 and self.head_ratio == 0:
            raise InvalidInput("nothing to prune: give --ratio and/or --head-ratio above 0")
        if self.steps < 0:
            raise InvalidInput(f"--steps must be >= 0, got {self.steps}")
        if self.head_importance not in (None, *HEAD_IMPORTANCE):
            raise InvalidInput(f"--head-importance {self.head_importance!r}: expected one of {', '.join(HEAD_IMPORTANCE)}")
        if self.importance_samples < 1:
            raise InvalidInput(f"--importance-samples must be >= 1, got {self.importance_samples}")

    def ranking(self, config: TrainConfig) -> str:
        return self.head_importance or ("ablation" if config.from_teacher else "magnitude")

    def settings(self, config: TrainConfig) -> dict:
        """What pruned.pt records, and what --resume must find there."""
        return {
            "ratio": self.ratio,
            "head_ratio": self.head_ratio,
            "head_importance": self.ranking(config),
            "importance_samples": self.importance_samples,
        }


@dataclass(frozen=True)
class PruneResult:
    pruned: Path
    params: tuple[int, int]  # before, after (parameters the forward pass uses)
    macs: tuple[int, int]  # before, after, per denoiser step at batch 1
    heads: tuple[int, int]  # attention heads over the applied blocks, before, after
    train: TrainResult | None
    head_importance: str | None = None  # the ranking whose heads were removed (None: no heads removed)
    rankings: dict[str, dict] = field(
        default_factory=dict
    )  # ranking -> {heads_removed, psnr_min, psnr_mean} before the fine-tune
    teacher_runs: tuple[list[str], list[str]] = ([], [])  # runs generated, read from OUT/teacher (for the head choice)


def _heads(model) -> int:
    return sum(block.mha.num_heads for block in applied_blocks(model).values())  # v2 never applies sa3, sa4


def importance_inputs(pool: TeacherPool, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """n trajectory inputs, a fixed (seeded) subset spread over the whole pool."""
    idx = torch.randperm(len(pool), generator=torch.Generator().manual_seed(0))[:n].sort().values
    return pool.x[idx], pool.t[idx], pool.y[idx]


def choose_and_prune(model, prune: PruneConfig, ranking: str, pool: TeacherPool | None) -> tuple[torch.nn.Module, dict]:
    """The pruned model by the chosen ranking, and what pruned.pt records (every ranking computed, compared)."""
    choices: dict[str, dict[str, list[int]] | None] = {}
    scores = None
    if prune.head_ratio:
        if pool is not None:
            scores = head_ablation_scores(model, *importance_inputs(pool, prune.importance_samples))
            choices["ablation"] = weakest_heads(scores, heads_to_drop(model, prune.head_ratio))
        choices["magnitude"] = magnitude_heads(model, prune.head_ratio)
    pruned = {name: prune_channels(model, prune.ratio, prune.head_ratio, choice) for name, choice in choices.items()}
    rankings = {name: {"heads_removed": choice} for name, choice in choices.items()}
    if len(pruned) > 1:  # both rankings at hand: what each removal costs, before any fine-tune
        fidelity = Fidelity(model)
        for name, candidate in pruned.items():
            measured = fidelity(candidate)
            rankings[name] |= {"psnr_min": measured["psnr_min"], "psnr_mean": measured["psnr_mean"]}
    chosen = pruned[ranking] if prune.head_ratio else prune_channels(model, prune.ratio)
    meta = {
        "ratio": prune.ratio,
        "head_ratio": prune.head_ratio,
        "head_importance": ranking,
        "importance_samples": prune.importance_samples,
        "rankings": rankings,
        "ablation_scores": scores,
        "method": f"heads removed inside the attention, by {ranking if prune.head_ratio else 'none'}; "
        "channels by L2 magnitude (torch-pruning)",
    }
    return chosen, meta


def resumed_pruning(path: Path, sha256: str, settings: dict) -> tuple[torch.nn.Module, dict]:
    loaded = load_checkpoint(path)
    meta = loaded.meta.get("prune") or {}
    found = {k: meta.get(k) for k in settings}
    if loaded.meta.get("source_sha256") != sha256 or found != settings:
        raise MobileGenError(
            f"--resume: {path} was pruned from another checkpoint or with other settings ({found}, not "
            f"{settings}); pass --overwrite to start over, or choose another -o"
        )
    return loaded.model, meta


def prune_once(prune: PruneConfig, config: TrainConfig, loaded, ranking: str, runs, device, world, on_teacher_run):
    """OUT/pruned.pt: resumed when a run wrote it, else heads chosen (from the teacher's runs where
    the ranking needs them) and pruned. Returns the pruned model, its metadata and the runs' pool."""
    checkpoint, out = Path(prune.checkpoint), config.out
    path, pool = out / PRUNED, None
    if config.resume and path.is_file():
        pruned, meta = resumed_pruning(path, loaded.sha256, prune.settings(config))
    else:
        needs_trajectories = ranking == "ablation" or (
            config.from_teacher and prune.steps
        )  # a data-free fine-tune reads them too
        if prune.head_ratio and needs_trajectories:
            pool = teacher_pool(
                loaded.model.to(device),
                loaded.sha256,
                str(checkpoint),
                out / FOLDER,
                runs,
                device,
                config.overwrite,
                (checkpoint,),
                on_teacher_run,
            )
            loaded.model.cpu()
        pruned, meta = choose_and_prune(loaded.model, prune, ranking, pool)
        if world.main:
            save_checkpoint(path, pruned, source=str(checkpoint), source_sha256=loaded.sha256, prune=meta)
    return pruned, meta, pool


def prune_and_distill(
    prune: PruneConfig,
    config: TrainConfig,
    on_step: Callable[[int, int, float, float], None] | None = None,
    on_teacher_run: Callable[[int, int, str], None] | None = None,
) -> PruneResult:
    """Prune prune.checkpoint, write OUT/pruned.pt, then fine-tune it for prune.steps steps (0: no fine-tune)."""
    checkpoint, out = Path(prune.checkpoint), config.out
    ranking = prune.ranking(config)
    images = len(scan_split(Path(config.data) / "train")) if config.data is not None and prune.steps else 0  # layout errors first
    runs = planned_runs(config.teacher_steps, config.teacher_guidance, config.teacher_seeds)
    device = resolve_device(config.device)
    world, _ = init_world(device)  # a plain run: World(0, 1), nothing to join
    if config.from_teacher and world.distributed:
        raise MobileGenError(
            "data-free pruning (no --data, or --data-fraction) runs in one process: run it without torchrun, "
            "or give --data alone for the data-parallel fine-tune"
        )
    for name in (PRUNED, LAST, EMA):  # the fine-tune's teacher is the input: never overwritten
        check_output_file(out / name, config.overwrite or config.resume, [checkpoint])
    if config.resume and not any(p.is_file() for p in (out / PRUNED, out / LAST, out / FOLDER / INDEX)):
        raise MobileGenError(f"--resume: {out} holds no run to resume (no {PRUNED}, {LAST} or {FOLDER}/{INDEX})")
    barrier(world)  # every rank has checked -o before rank 0 writes into it
    loaded = load_checkpoint(checkpoint)
    path = out / PRUNED
    pruned, meta, pool = prune_once(prune, config, loaded, ranking, runs, device, world, on_teacher_run)
    barrier(world)  # the other ranks start the fine-tune from the file rank 0 wrote
    result = PruneResult(
        pruned=path,
        params=(count_params(loaded.model), count_params(pruned)),
        macs=(count_macs(loaded.model), count_macs(pruned)),
        heads=(_heads(loaded.model), _heads(pruned)),
        train=None,
        head_importance=meta["head_importance"] if prune.head_ratio else None,
        rankings=meta["rankings"],
        teacher_runs=(pool.generated, pool.reused) if pool is not None else ([], []),
    )
    if not prune.steps:
        return result
    items = sum(r.inputs for r in runs) if config.from_teacher else images
    epochs = math.ceil(prune.steps / steps_per_epoch(items, config.batch_size))  # the LR schedule spans the fine-tune
    # A fine-tune starts from trained weights: the EMA averages from its first step (no warm-start copy).
    finetune = replace(
        config,
        arch=pruned.arch,
        init=path,
        teacher=checkpoint,
        epochs=epochs,
        max_steps=prune.steps,
        resume=config.resume and (out / LAST).is_file(),
        ema_start=0,
    )
    tuned = train(finetune, on_step, on_teacher_run)
    generated = result.teacher_runs[0] + tuned.teacher_runs[0]  # the head choice's runs, then the fine-tune's
    runs_seen = (generated, [r for r in tuned.teacher_runs[1] if r not in generated] or result.teacher_runs[1])
    return replace(result, train=tuned, teacher_runs=runs_seen)
