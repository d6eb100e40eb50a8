"""Data-free distillation: what the teacher sees while it samples, cached in the run folder.

    teacher -> seeded DDIM runs -> OUT/teacher/<run>.pt + index.json -> TeacherPool -> one batch per step

Runs: every DDIM step count x every guidance scale x every seed. A guided run samples the
ten classes (the unconditional half of each guided call is recorded too); an unguided run
samples the ten classes and the unconditional label. Every denoiser call's inputs
(x_t, t, y) are recorded with the teacher's eps on them, and each run's final samples
are kept. One shard per run, written atomically; index.json names the teacher (sha256)
and every finished run (with its shard's sha256) and is rewritten after each run, so an
interrupted generation continues where it stopped. Each run is seeded by itself, so its
shard is the same whether or not the generation was interrupted.

Training step k draws every item from a generator seeded with (seed, k), as the loop
does: with probability data_fraction a real image (with --data) through the forward
process; else with probability forward_fraction one of the teacher's final samples
through the forward process at a random t; else a recorded trajectory input with its
recorded eps. The forward-process items get their teacher eps in the step itself
(float32, outside autocast). With x0 = (x_t - sqrt(1-ab) eps) / sqrt(ab), the loss is
    w_teacher MSE(eps_s, eps_T) + w_x0 MSE(x0_s, x0_T) [+ w_noise MSE(eps_s, eps) on the forward-process items]
and x0_s - x0_T = -sqrt((1-ab)/ab) (eps_s - eps_T): the x0 term weighs an eps error by
(1-ab)/ab, about 2e-4 at t=1 and 2.5e4 at t=999, so it stresses the noisy end.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mobilegen.compress.heads import eps_of
from mobilegen.diffusion import SamplerConfig, linear_schedule, run_sampler
from mobilegen.diffusion.cases import forward_process_cases
from mobilegen.errors import InvalidInput, MobileGenError
from mobilegen.files import atomic_write, check_output_file, sha256_file, write_json
from mobilegen.verify.parity import PSNR_IDENTICAL, psnr

log = logging.getLogger(__name__)

FOLDER = "teacher"  # inside the run folder
INDEX = "index.json"
FORMAT = "mobilegen-teacher-trajectories"
FORMAT_VERSION = 1
NUM_CLASSES = 10


@dataclass(frozen=True)
class TeacherRun:
    """One seeded DDIM run of the teacher."""

    steps: int
    guidance: float
    seed: int

    @property
    def name(self) -> str:
        return f"ddim{self.steps}-g{self.guidance:g}-seed{self.seed}"

    @property
    def labels(self) -> list[int]:
        return list(range(NUM_CLASSES)) + ([] if self.guidance else [-1])

    @property
    def inputs(self) -> int:
        """Denoiser inputs the run records: a guided call holds the conditional and the unconditional half."""
        return len(self.labels) * self.steps * (2 if self.guidance else 1)


def planned_runs(steps: tuple[int, ...], guidance: tuple[float, ...], seeds: int) -> list[TeacherRun]:
    """Every step count x guidance x seed 0..seeds-1, in that order (the order of the pool)."""
    if not steps or not guidance:
        raise InvalidInput("teacher trajectories need at least one DDIM step count and one guidance scale")
    if any(not 1 <= s <= 999 for s in steps):
        raise InvalidInput(f"teacher DDIM step counts must be in 1..999, got {list(steps)}")
    if any(not math.isfinite(g) or g < 0 for g in guidance):
        raise InvalidInput(f"teacher guidance scales must be finite and >= 0 (0 = unguided), got {list(guidance)}")
    if seeds < 1:
        raise InvalidInput(f"teacher seeds must be >= 1, got {seeds}")
    return [
        TeacherRun(int(s), float(g), seed) for seed in range(seeds) for g in dict.fromkeys(guidance) for s in dict.fromkeys(steps)
    ]


@dataclass
class TeacherPool:
    """Every recorded trajectory input with the teacher's eps, and the runs' final samples."""

    x: torch.Tensor  # [N,3,64,64] x_t
    t: torch.Tensor  # [N] float32
    y: torch.Tensor  # [N] int64, -1 = unconditional
    eps: torch.Tensor  # [N,3,64,64] the teacher's eps at (x_t, t, y)
    finals: torch.Tensor  # [M,3,64,64] final samples in [-1, 1] (not clamped)
    final_y: torch.Tensor  # [M] int64
    generated: list[str] = field(default_factory=list)  # runs computed by this call
    reused: list[str] = field(default_factory=list)  # runs read from the cache

    def __len__(self) -> int:
        return len(self.t)


@torch.no_grad()
def record_run(teacher: nn.Module, run: TeacherRun, device: torch.device) -> dict:
    """The run's every denoiser input with the teacher's eps, and its final samples (CPU tensors)."""
    seen: list[tuple[torch.Tensor, ...]] = []

    def recording(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        eps = teacher(x, t, y).float()
        seen.append((x.cpu(), t.cpu(), y.cpu(), eps.cpu()))
        return eps

    labels = torch.tensor(run.labels)
    final = run_sampler(
        recording, labels, linear_schedule(), SamplerConfig(steps=run.steps, guidance=run.guidance, seed=run.seed), device
    )
    x, t, y, eps = (torch.cat(parts) for parts in zip(*seen))
    return {
        "x": x,
        "t": t.float(),
        "y": y.long(),
        "eps": eps,
        "finals": final,
        "final_y": labels.long(),
        "run": {"steps": run.steps, "guidance": run.guidance, "seed": run.seed},
    }


def shard_path(folder: Path, entry: dict) -> Path:
    return folder / Path(str(entry.get("file", ""))).name  # a file of the folder, whatever the index says


def open_index(folder: Path, sha256: str, source: str, overwrite: bool) -> dict:
    """The folder's index, or a fresh one; a cache of another teacher is refused (replaced with overwrite)."""
    path = folder / INDEX
    fresh = {"format": FORMAT, "format_version": FORMAT_VERSION, "teacher": {"sha256": sha256, "source": source}, "runs": {}}
    if folder.exists() and not folder.is_dir():
        raise MobileGenError(f"{folder} is not a folder; the teacher trajectories go there: remove it or choose another -o")
    if not path.is_file():
        return fresh
    import json

    try:
        index = json.loads(path.read_text())
        theirs = index["teacher"]["sha256"]
        runs = dict(index["runs"])
        ok = index.get("format") == FORMAT
    except (ValueError, KeyError, TypeError, AttributeError):
        ok = False
    if not ok:
        raise MobileGenError(
            f"{path} is not an index of teacher trajectories (format {FORMAT}); remove {folder} or choose another -o"
        )
    if theirs == sha256:
        return index
    if not overwrite:
        raise MobileGenError(
            f"{folder} holds trajectories of another teacher ({index['teacher'].get('source')}, sha256 {theirs[:12]}), "
            f"not of {source} (sha256 {sha256[:12]}): pass --overwrite to regenerate them, or choose another -o"
        )
    for entry in runs.values():  # only the shards the index names: nothing else in the folder is ours
        shard_path(folder, entry).unlink(missing_ok=True)
    path.unlink()
    return fresh


def read_shard(folder: Path, entry: dict) -> dict:
    path = shard_path(folder, entry)
    if sha256_file(path) != entry["sha256"]:
        raise MobileGenError(
            f"{path}: its sha256 differs from the one {folder / INDEX} recorded (a damaged or replaced file); "
            "delete it and run again to regenerate it"
        )
    return torch.load(path, map_location="cpu", weights_only=True)


def teacher_pool(
    teacher: nn.Module,
    sha256: str,
    source: str,
    folder: Path,
    runs: list[TeacherRun],
    device: torch.device,
    overwrite: bool = False,
    inputs: tuple[Path | None, ...] = (),
    on_run: Callable[[int, int, str], None] | None = None,
) -> TeacherPool:
    """Load the runs from folder, generating (and caching) those it lacks; on_run(done, total, name) after each."""
    index = open_index(folder, sha256, source, overwrite)
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / INDEX).is_file():  # a new cache: the index names its teacher from the start
        write_json(folder / INDEX, index)
    shards, generated, reused = [], [], []
    for i, run in enumerate(runs):
        entry = index["runs"].get(run.name)
        if entry is not None and shard_path(folder, entry).is_file():
            shards.append(read_shard(folder, entry))
            reused.append(run.name)
        else:
            start = time.perf_counter()
            shard = record_run(teacher, run, device)
            path = check_output_file(folder / f"{run.name}.pt", True, inputs)
            atomic_write(path, lambda tmp, shard=shard: torch.save(shard, tmp))
            index["runs"][run.name] = {
                "file": path.name,
                "sha256": sha256_file(path),
                "inputs": len(shard["t"]),
                "device": str(device),
                "seconds": round(time.perf_counter() - start, 2),
            }
            write_json(folder / INDEX, index)
            log.info("teacher run %s: %d inputs in %.1f s", run.name, len(shard["t"]), time.perf_counter() - start)
            shards.append(shard)
            generated.append(run.name)
        if on_run is not None:
            on_run(i + 1, len(runs), run.name)
    parts = {k: torch.cat([s[k] for s in shards]) for k in ("x", "t", "y", "eps", "finals", "final_y")}
    return TeacherPool(**parts, generated=generated, reused=reused)


@dataclass
class TeacherBatch:
    x: torch.Tensor  # x_t
    t: torch.Tensor  # float32
    y: torch.Tensor  # int64
    target: torch.Tensor  # the teacher's eps; rows with needs_teacher are filled in by teacher_targets
    noise: torch.Tensor  # the forward process's eps where it made x_t, 0 elsewhere
    needs_teacher: torch.Tensor  # bool: a forward-process item (a final sample or a real image)

    def __len__(self) -> int:
        return len(self.t)

    def to(self, device: torch.device) -> TeacherBatch:
        return TeacherBatch(*(getattr(self, k).to(device) for k in ("x", "t", "y", "target", "noise", "needs_teacher")))


def draw_batch(
    pool: TeacherPool,
    gen: torch.Generator,
    batch: int,
    data_fraction: float = 0.0,
    forward_fraction: float = 0.25,
    label_dropout: float = 0.1,
    images=None,
    image_seed: int = 0,
) -> TeacherBatch:
    """One step's items, every draw from gen (images: an ImageFolder when real images are mixed in)."""
    schedule = linear_schedule()
    u = torch.rand(batch, generator=gen)
    pick = torch.randint(len(pool), (batch,), generator=gen)
    final = torch.randint(len(pool.final_y), (batch,), generator=gen)
    t_new = torch.randint(1, schedule.T, (batch,), generator=gen)
    eps = torch.randn((batch, 3, 64, 64), generator=gen)
    drop = torch.rand(batch, generator=gen) < label_dropout
    fraction = data_fraction if images is not None else 0.0
    real = u < fraction
    traj = ~real & (u >= fraction + (1 - fraction) * forward_fraction)
    x0, y_new = pool.finals[final].clone(), pool.final_y[final].clone()
    if real.any():
        image = torch.randint(len(images), (batch,), generator=gen)
        for j in torch.nonzero(real).flatten().tolist():
            x0[j], y_new[j] = images.load(int(image[j]), image_seed + j)
    y_new = torch.where(drop, torch.full_like(y_new, -1), y_new)
    keep = traj[:, None, None, None]
    return TeacherBatch(
        x=torch.where(keep, pool.x[pick], schedule.q_sample(x0, t_new, eps)),
        t=torch.where(traj, pool.t[pick], t_new.float()),
        y=torch.where(traj, pool.y[pick], y_new),
        target=torch.where(keep, pool.eps[pick], torch.zeros_like(eps)),
        noise=torch.where(keep, torch.zeros_like(eps), eps),
        needs_teacher=~traj,
    )


@torch.no_grad()
def teacher_targets(teacher: nn.Module, batch: TeacherBatch) -> torch.Tensor:
    """The batch's targets with the forward-process rows computed by the teacher (float32)."""
    target, m = batch.target.clone(), batch.needs_teacher
    if m.any():
        target[m] = teacher(batch.x[m], batch.t[m], batch.y[m]).float()
    return target


def x0_factor(t: torch.Tensor) -> torch.Tensor:
    """(1 - ab_t) / ab_t per item: MSE of x0 predictions = this x MSE of the eps predictions."""
    ab = torch.as_tensor(linear_schedule().alphas_cumprod, dtype=torch.float64)[t.long().cpu()]
    return ((1 - ab) / ab).to(device=t.device, dtype=torch.float32)


def distillation_loss(
    pred: torch.Tensor, batch: TeacherBatch, target: torch.Tensor, teacher_weight: float, x0_weight: float, noise_weight: float
) -> torch.Tensor:
    per_item = ((pred - target) ** 2).mean(dim=(1, 2, 3))
    loss = teacher_weight * per_item.mean()
    if x0_weight:
        loss = loss + x0_weight * (x0_factor(batch.t) * per_item).mean()
    if noise_weight and batch.needs_teacher.any():
        loss = loss + noise_weight * F.mse_loss(pred[batch.needs_teacher], batch.noise[batch.needs_teacher])
    return loss


class Fidelity:
    """Teacher fidelity of a student on the 77 parity cases (every parity timestep x class and none)."""

    def __init__(self, teacher: nn.Module) -> None:
        cases = forward_process_cases(linear_schedule())
        self.inputs = (torch.from_numpy(cases.x), torch.from_numpy(cases.t), torch.from_numpy(cases.y).long())
        self.reference = eps_of(teacher, *self.inputs).numpy().astype(np.float64)

    def __call__(self, model: nn.Module) -> dict[str, float]:
        """{mse, psnr_min, psnr_mean}: per-case eps PSNR against the teacher (verify.parity.psnr)."""
        out = eps_of(model, *self.inputs).numpy()
        per_case = [min(psnr(r, o), PSNR_IDENTICAL) for r, o in zip(self.reference, out)]
        mse = float(np.mean((out.astype(np.float64) - self.reference) ** 2))
        return {"mse": mse, "psnr_min": round(min(per_case), 2), "psnr_mean": round(float(np.mean(per_case)), 2)}
