"""DDIM sampler (Song et al. 2021, eq. 12) on the original schedule.

Legend: x = x_t, ab = alpha_bar_t, ab_prev = alpha_bar at the next (smaller)
timestep, x0 = predicted x_0, sigma = eta * sqrt((1-ab_prev)/(1-ab)) * sqrt(1 - ab/ab_prev).
    x0     = (x - sqrt(1 - ab) eps) / sqrt(ab)
    x_prev = sqrt(ab_prev) x0 + sqrt(1 - ab_prev - sigma^2) eps + sigma z
Timestep spacing: ``steps`` integers evenly spaced from T-1 down to 1, both ends
included (round(linspace(T-1, 1, steps))), the same range the original DDPM loop
visits; after the last one (t=1) the sampler jumps to alpha_bar = 1, i.e. returns x0.
eta = 0 is deterministic; eta = 1 adds DDPM-like noise.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from mobilegen.diffusion.ddpm import Noise
from mobilegen.diffusion.denoiser import Denoiser
from mobilegen.diffusion.schedule import Schedule
from mobilegen.errors import InvalidInput


def ddim_timesteps(schedule: Schedule, steps: int) -> list[int]:
    if not 1 <= steps <= schedule.T - 1:
        raise InvalidInput(f"DDIM steps must be in 1..{schedule.T - 1}, got {steps}")
    if steps == 1:
        return [schedule.T - 1]
    return [int(v) for v in np.round(np.linspace(schedule.T - 1, 1, steps))]


def ddim_sample(
    denoise: Denoiser,
    x: torch.Tensor,
    y: torch.Tensor,
    schedule: Schedule,
    steps: int,
    noise: Noise,
    eta: float = 0.0,
) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield (t, x after the step at t) for every step; the last x is the sample."""
    ts = ddim_timesteps(schedule, steps)
    abar = schedule.alphas_cumprod
    n = x.shape[0]
    for k, i in enumerate(ts):
        ab = abar[i]
        ab_prev = abar[ts[k + 1]] if k + 1 < len(ts) else 1.0
        t = torch.full((n,), float(i), dtype=torch.float32, device=x.device)
        eps = denoise(x, t, y)
        x0 = (x - (1 - ab) ** 0.5 * eps) / ab**0.5
        sigma = eta * ((1 - ab_prev) / (1 - ab)) ** 0.5 * (1 - ab / ab_prev) ** 0.5
        x = ab_prev**0.5 * x0 + max(1 - ab_prev - sigma**2, 0.0) ** 0.5 * eps
        if sigma > 0:
            x = x + sigma * noise(tuple(x.shape)).to(x.device)
        yield i, x.to(torch.float32)
