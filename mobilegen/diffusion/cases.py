"""Denoiser inputs drawn from the forward process of the schedule.

x_t = sqrt(ab_t) x_0 + sqrt(1-ab_t) eps with x_0 a smooth synthetic image in [-1, 1]
(low-frequency noise, the statistics of natural images rather than white noise),
so small t gives image-like inputs and large t gives nearly pure noise, as in sampling.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from mobilegen.diffusion import Schedule
from mobilegen.errors import InvalidInput

PARITY_TIMESTEPS: tuple[int, ...] = (1, 10, 100, 250, 500, 750, 999)


@dataclass(frozen=True)
class Cases:
    x: np.ndarray  # float32 [N,3,64,64] NCHW
    t: np.ndarray  # float32 [N]
    y: np.ndarray  # int32 [N]

    def __len__(self) -> int:
        return len(self.t)

    def describe(self, i: int) -> str:
        return f"t={int(self.t[i])}, y={int(self.y[i])}"


def smooth_images(n: int, gen: torch.Generator, size: int = 64) -> torch.Tensor:
    coarse = torch.randn((n, 3, 8, 8), generator=gen)
    img = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    return (img / img.abs().amax(dim=(1, 2, 3), keepdim=True)).clamp(-1, 1)


def forward_process_cases(
    schedule: Schedule,
    timesteps: tuple[int, ...] = PARITY_TIMESTEPS,
    labels: tuple[int, ...] = tuple(range(10)) + (-1,),
    seed: int = 0,
) -> Cases:
    """Every timestep x every label (-1 = unconditional): one x_t per pair."""
    gen = torch.Generator().manual_seed(seed)
    pairs = [(t, y) for t in timesteps for y in labels]
    t = torch.tensor([p[0] for p in pairs])
    x0 = smooth_images(len(pairs), gen)
    x = schedule.q_sample(x0, t, torch.randn(x0.shape, generator=gen))
    return Cases(
        x=x.numpy().astype(np.float32),
        t=t.numpy().astype(np.float32),
        y=np.array([p[1] for p in pairs], dtype=np.int32),
    )


def trajectory_cases(denoise, schedule: Schedule, config, labels: tuple[int, ...] = tuple(range(10))) -> Cases:
    """Every input the denoiser sees while sampling labels (guided: the unconditional
    pass included), recorded from a real run with the reference model."""
    from mobilegen.diffusion import run_sampler

    seen: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def recording(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        seen.append((x.detach().cpu(), t.detach().cpu(), y.detach().cpu()))
        return denoise(x, t, y)

    run_sampler(recording, torch.tensor(labels), schedule, config)
    x, t, y = (torch.cat(parts) for parts in zip(*seen))
    return Cases(x=x.numpy().astype(np.float32), t=t.numpy().astype(np.float32), y=y.numpy().astype(np.int32))


def calibration_cases(denoise, schedule: Schedule, size: int = 320, seed: int = 0) -> Cases:
    """Up to half forward-process x_t (10 timesteps spread over the schedule x every
    class and the unconditional pass: 110), the rest real DDIM-20 guided sampling
    inputs of every class (up to 400), deterministically subsampled to `size`.
    Seeded: the same model gives the same set."""
    from mobilegen.diffusion import SamplerConfig

    if size < 22:
        raise InvalidInput(f"calibration needs at least 22 samples (every class and the unconditional pass, twice), got {size}")
    spread = tuple(int(t) for t in np.linspace(1, schedule.T - 1, 10).round())
    forward = forward_process_cases(schedule, timesteps=spread, seed=seed + 1)
    sampled = trajectory_cases(denoise, schedule, SamplerConfig(sampler="ddim", steps=20, guidance=3.0, seed=seed))
    n_forward = min(size // 2, len(forward))
    picks = []
    for cases, n in ((forward, n_forward), (sampled, size - n_forward)):
        idx = np.random.default_rng(seed).permutation(len(cases))[: min(n, len(cases))]
        picks.append((cases, np.sort(idx)))
    return Cases(
        x=np.concatenate([c.x[i] for c, i in picks]),
        t=np.concatenate([c.t[i] for c, i in picks]),
        y=np.concatenate([c.y[i] for c, i in picks]),
    )
