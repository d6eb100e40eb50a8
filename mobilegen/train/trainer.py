"""One training or distillation step, the EMA and the run's checkpoints (loop.py runs the steps)."""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from mobilegen.diffusion import SamplerConfig, linear_schedule, run_sampler, to_uint8
from mobilegen.errors import InvalidInput, MobileGenError
from mobilegen.models import UNet
from mobilegen.models.checkpoint import check_zip_sizes, load_checkpoint, save_checkpoint, seeded_model
from mobilegen.runtime.images import save_image
from mobilegen.train.distributed import (
    World,
    mean_over_ranks,
    wrap_ddp,
)
from mobilegen.train.teacher_data import (
    TeacherBatch,
    distillation_loss,
    teacher_targets,
)

if TYPE_CHECKING:
    from mobilegen.train.loop import TrainConfig

log = logging.getLogger(__name__)

LAST = "last.pt"  # everything needed to resume
EMA = "ema.pt"  # the EMA weights alone: what mobilegen-export takes
SAMPLE_CLASSES = (0, 3, 8)

# The settings a resumed run must share with the run it continues.
RESUME_KEYS = (
    "arch",
    "epochs",
    "batch_size",
    "lr",
    "weight_decay",
    "ema_beta",
    "ema_start",
    "label_dropout",
    "grad_clip",
    "seed",
    "qat_every",
    "noise_weight",
    "teacher_weight",
    "init",
    "x0_weight",
    "data_fraction",
    "forward_fraction",
    "teacher_steps",
    "teacher_guidance",
    "teacher_seeds",
)


@torch.no_grad()
def round_to_fp16_(model: torch.nn.Module) -> None:
    for p in model.parameters():
        p.copy_(p.half().float())


@torch.no_grad()
def ema_update_(ema: UNet, model: UNet, step: int, beta: float, start: int) -> None:
    if step < start:
        ema.load_state_dict(model.state_dict())
        return
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p, 1 - beta)


def diffusion_batch(x0: torch.Tensor, y: torch.Tensor, gen: torch.Generator, label_dropout: float, world: World = World()):
    """(x_t, t, eps, y with dropout) for one step, all drawn from gen; this rank's share of the global batch."""
    schedule = linear_schedule()
    n, r, size = x0.shape[0] * world.size, world.rank, world.size
    t = torch.randint(1, schedule.T, (n,), generator=gen)[r::size]
    eps = torch.randn((n, *x0.shape[1:]), generator=gen)[r::size]
    drop = torch.rand(n, generator=gen)[r::size] < label_dropout
    y = torch.where(drop, torch.full_like(y, -1), y)
    return schedule.q_sample(x0, t, eps), t.float(), eps, y


def step_generator(seed: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 7919 + step)


@dataclass
class Trainer:
    """Model, EMA, optimizer, schedule and (optional) teacher: one training step at a time."""

    config: TrainConfig
    total_steps: int
    device: torch.device
    world: World = field(default_factory=World)
    model: UNet = field(init=False)
    ema: UNet = field(init=False)
    teacher: UNet | None = field(init=False, default=None)
    teacher_sha256: str | None = field(init=False, default=None)
    step: int = 0

    def __post_init__(self) -> None:
        cfg = self.config
        start = load_checkpoint(cfg.init).model if cfg.init is not None else seeded_model(cfg.arch, cfg.seed).model
        if start.arch != cfg.arch:
            raise InvalidInput(
                f"--init {cfg.init} holds a {start.arch}, but the run is for {cfg.arch} (--arch): "
                f"pass --arch {start.arch} or a {cfg.arch} checkpoint"
            )
        self.model = start.to(self.device).train()
        self.ema = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.net = wrap_ddp(self.model, self.world, self.device)  # DDP averages the ranks' gradients in backward()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.OneCycleLR(self.optimizer, max_lr=cfg.lr, total_steps=self.total_steps)
        self.amp = cfg.amp and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        if cfg.teacher is not None:
            # Loaded once, in eval mode, without gradients.
            loaded = load_checkpoint(cfg.teacher)
            self.teacher = loaded.model.to(self.device).eval().requires_grad_(False)
            self.teacher_sha256 = loaded.sha256

    def train_step(self, x0: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> float:
        cfg = self.config
        x_t, t, eps, y = (a.to(self.device) for a in diffusion_batch(x0, y, gen, cfg.label_dropout, self.world))
        with torch.autocast("cuda", dtype=torch.float16, enabled=self.amp):
            pred = self.net(x_t, t, y)
            loss = cfg.noise_weight * F.mse_loss(pred.float(), eps)
            if self.teacher is not None:
                with torch.no_grad():
                    target = self.teacher(x_t, t, y).float()
                loss = loss + cfg.teacher_weight * F.mse_loss(pred.float(), target)
        return self._optimize(loss)

    def distill_step(self, batch: TeacherBatch) -> float:
        """One data-free step: the teacher's eps on the batch's inputs is the target (train/teacher_data.py)."""
        cfg, batch = self.config, batch.to(self.device)
        target = teacher_targets(self.teacher, batch)  # float32, outside autocast
        with torch.autocast("cuda", dtype=torch.float16, enabled=self.amp):
            pred = self.net(batch.x, batch.t, batch.y)
        return self._optimize(distillation_loss(pred.float(), batch, target, cfg.teacher_weight, cfg.x0_weight, cfg.noise_weight))

    def _optimize(self, loss: torch.Tensor) -> float:
        cfg = self.config
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        scale = self.scaler.get_scale()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.scaler.get_scale() >= scale:  # float16 gradients overflowed: no optimizer step, so the LR waits too
            self.scheduler.step()
        self.step += 1
        if cfg.qat_every and self.step % cfg.qat_every == 0:
            round_to_fp16_(self.model)
        ema_update_(self.ema, self.model, self.step, cfg.ema_beta, cfg.ema_start)
        return mean_over_ranks(loss.item(), self.world, self.device)

    def state(self) -> dict:
        return {
            "step": self.step,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "train_config": self.config.to_dict(),
        }

    def save(self, **extra) -> None:
        out = self.config.out
        save_checkpoint(out / LAST, self.model, ema=self.ema, **self.state(), **extra)
        ema = copy.deepcopy(self.ema)
        if self.config.qat_every:
            round_to_fp16_(ema)
        save_checkpoint(out / EMA, ema, step=self.step, train_config=self.config.to_dict())

    def restore(self) -> None:
        path = self.config.out / LAST
        if not path.is_file():
            raise MobileGenError(f"--resume: {path} not found; nothing to resume")
        check_zip_sizes(path)
        state = torch.load(path, map_location="cpu", weights_only=True)
        saved = state["train_config"]
        changed = [k for k in RESUME_KEYS if saved.get(k) != self.config.to_dict()[k]]
        if changed:
            raise MobileGenError(f"--resume: settings differ from the run in {path}: {', '.join(changed)}")
        self.model.load_state_dict(state["weights"])
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.step = state["step"]


@torch.no_grad()
def sample_grid(model: UNet, path: Path, device: torch.device, steps: int = 20) -> Path:
    labels = torch.tensor(SAMPLE_CLASSES)
    x = run_sampler(lambda x, t, y: model(x, t, y), labels, linear_schedule(), SamplerConfig(steps=steps), device)
    return save_image(to_uint8(x), path)
