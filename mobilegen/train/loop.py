"""Training and distillation at the source, in one loop.

Loss (eps-prediction DDPM, Ho et al. 2020): with t ~ U{1..T-1}, eps ~ N(0, I),
x_t = sqrt(ab_t) x_0 + sqrt(1 - ab_t) eps:
    loss = w_noise * MSE(model(x_t, t, y), eps) [+ w_teacher * MSE(model(x_t, t, y), teacher(x_t, t, y))]
The second term is the original project's knowledge distillation (1:1 by default).
Labels are dropped to -1 (unconditional) per sample with probability label_dropout,
so the model learns the unconditional pass guidance needs.

Data-free distillation (a teacher and no --data, or --data with data_fraction): the
inputs are the teacher's own sampling trajectories and its final samples through the
forward process, cached in OUT/teacher/ (train/teacher_data.py has the loss); an epoch
is as many items as the trajectories hold.

fp16 quantization-aware training (QAT), precisely: every `qat_every` optimizer
steps the trained weights are rounded to the nearest float16 value and training
continues from the rounded values (the original's "intermittent shifts to the
float16 weight space"); the optimizer's moments are kept. The EMA weights written
to ema.pt are rounded the same way, so the weights the exporter sees are exactly
representable in float16 and the fp16 artifact (float16 weights, float32 compute)
computes the same function as the fp32 one.

Every random draw of step k (batch order, augmentation, t, eps, label dropout)
comes from generators seeded with (seed, k), so `--resume` continues exactly where
an uninterrupted run would be. Under torchrun (train/distributed.py) every rank
draws the whole global batch's t, eps and dropout and keeps its own share, so N
ranks x batch B follow the single-process run with batch N*B.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch

from mobilegen.errors import InvalidInput, MobileGenError
from mobilegen.files import check_output_file
from mobilegen.runtime.backends import resolve_device
from mobilegen.train.data import ImageFolder, OnBadImage, StepSampler, steps_per_epoch, validation_loss
from mobilegen.train.distributed import (
    DistributedStepSampler,
    World,
    close_world,
    init_world,
    ranks_agree,
)
from mobilegen.train.teacher_data import (
    FOLDER,
    Fidelity,
    draw_batch,
    planned_runs,
    teacher_pool,
)

from mobilegen.train.trainer import (  # noqa: F401  re-exported: the package's names
    EMA,
    LAST,
    RESUME_KEYS,
    Trainer,
    diffusion_batch,
    ema_update_,
    round_to_fp16_,
    sample_grid,
    step_generator,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    out: Path
    data: Path | None = None  # None: data-free, from the teacher's own trajectories
    arch: str = "student_v2"
    epochs: int = 100
    batch_size: int = 64
    lr: float = 3e-4
    weight_decay: float = 0.01
    ema_beta: float = 0.995
    ema_start: int = 2000  # EMA copies the weights until this step (warm start), then averages
    label_dropout: float = 0.1
    grad_clip: float = 1.0
    seed: int = 0
    qat_every: int = 0  # K; 0 = off
    max_steps: int | None = None  # stop at this global step; the LR schedule still spans all epochs
    sample_every: int = 0
    val_every: int = 0
    checkpoint_every: int = 500
    device: str = "auto"
    amp: bool = True  # float16 autocast, CUDA only
    num_workers: int = 0
    on_bad_image: OnBadImage = "skip"
    resume: bool = False
    overwrite: bool = False  # start over in a run folder that holds a run (never with resume)
    teacher: Path | None = None
    init: Path | None = None  # start from this checkpoint (its weights and widths) instead of a seeded init
    noise_weight: float | None = None  # None: 1 on real data alone, 0 from the teacher's trajectories
    teacher_weight: float = 1.0
    x0_weight: float = 0.0  # data-free: weight of MSE(x0 of the student, x0 of the teacher)
    data_fraction: float | None = None  # with data: this share of real images mixed into the teacher's inputs
    forward_fraction: float = 0.25  # data-free: share of the teacher's final samples through the forward process
    teacher_steps: tuple[int, ...] = (10, 20, 50)  # data-free: the teacher's DDIM runs (x guidance x seeds)
    teacher_guidance: tuple[float, ...] = (0.0, 3.0)
    teacher_seeds: int = 1

    @property
    def from_teacher(self) -> bool:
        """Data-free distillation: no --data, or --data mixed into the teacher's trajectories."""
        return self.data is None or self.data_fraction is not None

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise InvalidInput(f"{name} must be >= 1")
        if not 0 <= self.label_dropout < 1:
            raise InvalidInput("label_dropout must be in [0, 1)")
        if self.qat_every < 0:
            raise InvalidInput("qat_every must be >= 0 (0 = off)")
        if self.resume and self.overwrite:
            raise MobileGenError("--resume continues the run in --out and --overwrite starts it over: give one of them")
        if self.from_teacher and self.teacher is None:
            raise InvalidInput(
                "no --data: training from scratch needs a CIFAR-10 layout folder (--data DATA); learning "
                "without data works from a teacher: mobilegen distill --teacher T, or mobilegen prune CKPT"
            )
        if self.data_fraction is not None and (self.data is None or not 0 <= self.data_fraction < 1):
            raise InvalidInput(f"--data-fraction {self.data_fraction:g}: a share in [0, 1) of real images, so it needs --data")
        if not (0 <= self.forward_fraction <= 1 and self.x0_weight >= 0):
            raise InvalidInput("forward_fraction must be in [0, 1] and x0_weight >= 0")
        if self.from_teacher:
            planned_runs(self.teacher_steps, self.teacher_guidance, self.teacher_seeds)  # refuses bad settings
        if self.noise_weight is None:
            object.__setattr__(self, "noise_weight", 0.0 if self.from_teacher else 1.0)

    def to_dict(self) -> dict:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}


@dataclass
class TrainResult:
    out: Path
    step: int
    losses: list[float] = field(default_factory=list)
    val_losses: dict[int, float] = field(default_factory=dict)
    images_per_second: float = 0.0
    skipped_images: int = 0
    world: World = field(default_factory=World)
    val_psnr: dict[int, tuple[float, float]] = field(default_factory=dict)  # data-free: eps PSNR min/mean vs the teacher
    teacher_runs: tuple[list[str], list[str]] = ([], [])  # data-free: runs generated, runs read from OUT/teacher
    teacher_inputs: int = 0


def check_run_folder(config: TrainConfig) -> None:
    """last.pt and ema.pt are replaced only by --resume (the same run) or --overwrite, and never
    when one is an input (the teacher, the starting weights)."""
    if config.resume and not (config.out / LAST).is_file():
        raise MobileGenError(f"--resume: {config.out / LAST} not found; nothing to resume")
    hint = "pass --resume to continue the run, --overwrite to start it over, or choose another -o"
    for name in (LAST, EMA):
        check_output_file(config.out / name, config.overwrite or config.resume, [config.teacher, config.init], hint)


def train(
    config: TrainConfig,
    on_step: Callable[[int, int, float, float], None] | None = None,
    on_teacher_run: Callable[[int, int, str], None] | None = None,
) -> TrainResult:
    """Run (or resume) training; on_step(step, end, loss, images_per_second) drives a progress bar,
    on_teacher_run(done, total, name) the data-free generation of the teacher's trajectories.

    Under torchrun every rank runs this; rank 0 alone writes files and calls on_step.
    """
    world, device = init_world(resolve_device(config.device))
    try:
        return _train(config, on_step, on_teacher_run, world, device)
    finally:
        close_world(world)


def _train(config: TrainConfig, on_step, on_teacher_run, world: World, device: torch.device) -> TrainResult:
    if config.from_teacher and world.distributed:
        raise MobileGenError(
            "data-free distillation (no --data, or --data-fraction) runs in one process: run it without "
            "torchrun, or give --data alone for the data-parallel loop"
        )
    data = ImageFolder(config.data / "train", on_bad_image=config.on_bad_image) if config.data is not None else None
    val = (
        ImageFolder(config.data / "test", augment=False, on_bad_image=config.on_bad_image)
        if data is not None and not config.from_teacher and (config.data / "test").is_dir()
        else None
    )
    runs = planned_runs(config.teacher_steps, config.teacher_guidance, config.teacher_seeds) if config.from_teacher else []
    items = sum(r.inputs for r in runs) if config.from_teacher else len(data)
    total = config.epochs * steps_per_epoch(items, config.batch_size * world.size)  # global batches
    end = min(total, config.max_steps or total)
    check_run_folder(config)
    trainer = Trainer(config, total, device, world)
    if config.resume:
        trainer.restore()
    config.out.mkdir(parents=True, exist_ok=True)
    result = TrainResult(config.out, trainer.step, skipped_images=len(data.skipped) if data else 0, world=world)
    validate = None
    try:
        if config.from_teacher:  # inside the try: Ctrl-C during the generation saves step 0, and --resume continues it
            batches, run_step, validate = distill_plan(config, trainer, result, runs, data, device, end, on_teacher_run)
        else:
            batches, run_step, validate = data_plan(config, trainer, data, val, world, device, end)
        run_steps(config, trainer, result, batches, run_step, validate, on_step, end)
    except KeyboardInterrupt:
        if world.main:
            trainer.save()  # atomic: an interrupted run resumes from the last finished step
        raise
    if world.distributed:  # at the end, every rank proves it holds the same weights, bit for bit
        digests = ranks_agree(world, trainer.model, trainer.ema)
    if world.main:  # rank 0 alone writes; the others only train
        trainer.save(**({"ranks_sha256": digests} if world.distributed else {}))
        if validate is not None and trainer.step not in result.val_losses:
            result.val_losses[trainer.step] = validate()
    result.step = trainer.step
    return result


def distill_plan(config: TrainConfig, trainer: Trainer, result: TrainResult, runs, data, device, end: int, on_teacher_run):
    """Data-free (or mixed) distillation: the teacher's pool of sampling runs, then batches drawn from it."""
    pool = teacher_pool(
        trainer.teacher,
        trainer.teacher_sha256,
        str(config.teacher),
        config.out / FOLDER,
        runs,
        device,
        config.overwrite,
        (config.teacher, config.init),
        on_teacher_run,
    )
    result.teacher_runs, result.teacher_inputs = (pool.generated, pool.reused), len(pool)
    fidelity = Fidelity(trainer.teacher) if config.val_every else None
    validate = (lambda: record_fidelity(result, trainer.step, fidelity(trainer.ema))) if fidelity else None
    batches = (
        draw_batch(
            pool,
            step_generator(config.seed, k),
            config.batch_size,
            config.data_fraction or 0.0,
            config.forward_fraction,
            config.label_dropout,
            data,
            config.seed * 1_000_003 + k * 1009,
        )
        for k in range(trainer.step, end)
    )
    return batches, trainer.distill_step, validate


def data_plan(config: TrainConfig, trainer: Trainer, data, val, world: World, device, end: int):
    """Training on an image folder: a seeded sampler per step (one shard per rank under torchrun)."""
    sampler = (
        DistributedStepSampler(len(data), config.batch_size, config.seed, trainer.step, end, world)
        if world.distributed
        else StepSampler(len(data), config.batch_size, config.seed, trainer.step, end)
    )
    batches = torch.utils.data.DataLoader(data, batch_sampler=sampler, num_workers=config.num_workers)
    validate = (lambda: validation_loss(trainer.ema, val, device)) if val is not None else None
    return batches, lambda batch: trainer.train_step(*batch, step_generator(config.seed, trainer.step)), validate


def run_steps(config: TrainConfig, trainer: Trainer, result: TrainResult, batches, run_step, validate, on_step, end: int) -> None:
    """The steps, with validation, sample grids and checkpoints at their intervals (rank 0 only)."""
    busy, seen, writes = 0.0, 0, trainer.world.main
    for batch in batches:
        start = time.perf_counter()
        loss = run_step(batch)
        busy += time.perf_counter() - start
        result.losses.append(loss)
        seen += config.batch_size * trainer.world.size
        result.images_per_second = seen / busy  # training steps only: not loading, sampling or validation
        if on_step and writes:
            on_step(trainer.step, end, loss, result.images_per_second)
        if not writes:
            continue
        if config.val_every and validate and trainer.step % config.val_every == 0:
            result.val_losses[trainer.step] = validate()
            log.info("step %d: validation eps-MSE %.4f", trainer.step, result.val_losses[trainer.step])
        if config.sample_every and trainer.step % config.sample_every == 0:
            sample_grid(trainer.ema, config.out / "samples" / f"step_{trainer.step:07d}.png", trainer.device)
        if config.checkpoint_every and trainer.step % config.checkpoint_every == 0:
            trainer.save()


def record_fidelity(result: TrainResult, step: int, fidelity: dict[str, float]) -> float:
    """Data-free validation: eps PSNR against the teacher on the parity cases; returns the eps-MSE."""
    result.val_psnr[step] = (fidelity["psnr_min"], fidelity["psnr_mean"])
    return fidelity["mse"]
