"""One entry point for sampling: config in, final x (and optionally the trajectory) out.

Noise is drawn on the CPU from one seeded generator (initial x first, then each
step's z in order), so every backend and device sees identical noise. Several
requests sampled as one batch (``stacked_noise``) each keep their own generator, so a
request's rows draw exactly what they draw alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Literal, Sequence

import torch

from mobilegen.diffusion.ddim import ddim_sample, ddim_timesteps
from mobilegen.diffusion.ddpm import Noise, ddpm_sample, ddpm_timesteps
from mobilegen.diffusion.denoiser import Denoiser, guided
from mobilegen.diffusion.schedule import Schedule
from mobilegen.errors import InvalidInput, NonFiniteError

SAMPLERS = ("ddim", "ddpm")
# Seeds of torch.Generator.manual_seed, the one rule for the CLI and the server: 0..2^63-1.
MAX_SEED = 2**63 - 1


@dataclass(frozen=True)
class SamplerConfig:
    sampler: Literal["ddim", "ddpm"] = "ddim"
    steps: int = 50  # DDIM only; DDPM always runs T-1 steps
    guidance: float = 3.0
    eta: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise InvalidInput(f"unknown sampler {self.sampler!r}; expected one of {', '.join(SAMPLERS)}")
        if not (math.isfinite(self.guidance) and math.isfinite(self.eta)):
            raise InvalidInput(f"guidance and eta must be finite numbers, got guidance={self.guidance}, eta={self.eta}")
        if self.guidance < 0:
            raise InvalidInput(f"guidance must be >= 0 (0 turns it off), got {self.guidance}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed <= MAX_SEED:
            raise InvalidInput(f"seed must be an integer in 0..{MAX_SEED} (2^63-1), got {str(self.seed)[:40]}")

    def timesteps(self, schedule: Schedule) -> list[int]:
        return ddpm_timesteps(schedule) if self.sampler == "ddpm" else ddim_timesteps(schedule, self.steps)


def seeded_noise(seed: int) -> Noise:
    gen = torch.Generator(device="cpu").manual_seed(seed)
    return lambda shape: torch.randn(shape, generator=gen, dtype=torch.float32)


def stacked_noise(parts: Sequence[tuple[int, int]]) -> Noise:
    """Noise for (seed, rows) parts stacked in one batch: each part's rows from its own seeded generator."""
    noises = [(seeded_noise(seed), rows) for seed, rows in parts]
    total = sum(rows for _, rows in noises)

    def draw(shape: tuple[int, ...]) -> torch.Tensor:
        if shape[0] != total:
            raise ValueError(f"stacked noise for {total} rows asked for {shape[0]}")
        return torch.cat([noise((rows, *shape[1:])) for noise, rows in noises])

    return draw


def run_sampler(
    denoise: Denoiser,
    labels: torch.Tensor,
    schedule: Schedule,
    config: SamplerConfig,
    device: torch.device | str = "cpu",
    on_step: Callable[[int, torch.Tensor], None] | None = None,
    noise: Noise | None = None,
) -> torch.Tensor:
    """Generate len(labels) images in [-1, 1] (float32, NCHW, on the CPU).

    ``noise``: instead of ``seeded_noise(config.seed)`` (several requests in one batch: ``stacked_noise``).
    """
    noise = noise or seeded_noise(config.seed)
    x = noise((len(labels), 3, 64, 64)).to(device)
    y = labels.to(device=device, dtype=torch.int32)
    step = guided(denoise, config.guidance)
    if config.sampler == "ddpm":
        loop = ddpm_sample(step, x, y, schedule, noise)
    else:
        loop = ddim_sample(step, x, y, schedule, config.steps, noise, config.eta)
    for t, x in loop:
        # One reduction per step (cheap next to a model call): a NaN/Inf state would
        # only turn into a black image, so the run stops here instead.
        if not bool(torch.isfinite(x).all()):
            raise NonFiniteError(
                f"the sampler state turned NaN/Inf at timestep {t} (the denoiser returned non-finite or "
                "overflowing values); no image was written"
            )
        if on_step is not None:
            on_step(t, x)
    return x.cpu()


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> uint8 exactly as the original: ((x.clamp(-1,1)+1)/2*255) truncated."""
    return ((x.clamp(-1, 1) + 1) / 2 * 255).to(torch.uint8)
