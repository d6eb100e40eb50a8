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
