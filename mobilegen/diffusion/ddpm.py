"""The original ancestral DDPM sampler (Ho et al. 2020, Algorithm 2), unchanged.

Legend: x = x_t, eps = eps_theta(x_t, t), a = alpha_t, ab = alpha_bar_t, b = beta_t,
z ~ N(0, I). For i = T-1 .. 1:
    x <- 1/sqrt(a_i) * (x - (1 - a_i)/sqrt(1 - ab_i) * eps) + sqrt(b_i) * z,   z = 0 at i = 1
The integer i is what the network receives as its timestep.
"""

from __future__ import annotations

from typing import Callable, Iterator

import torch

from mobilegen.diffusion.denoiser import Denoiser
from mobilegen.diffusion.schedule import Schedule

Noise = Callable[[tuple[int, ...]], torch.Tensor]


def ddpm_timesteps(schedule: Schedule) -> list[int]:
    return list(range(schedule.T - 1, 0, -1))


def ddpm_sample(
    denoise: Denoiser,
    x: torch.Tensor,
    y: torch.Tensor,
    schedule: Schedule,
    noise: Noise,
) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield (t, x after the step at t) for every step; the last x is the sample."""
    a, ab, b = schedule.alphas, schedule.alphas_cumprod, schedule.betas
    n = x.shape[0]
    for i in ddpm_timesteps(schedule):
        t = torch.full((n,), float(i), dtype=torch.float32, device=x.device)
        eps = denoise(x, t, y)
        z = noise(tuple(x.shape)).to(x.device) if i > 1 else torch.zeros_like(x)
        x = (1 / a[i] ** 0.5) * (x - ((1 - a[i]) / (1 - ab[i]) ** 0.5) * eps) + b[i] ** 0.5 * z
        yield i, x.to(torch.float32)
