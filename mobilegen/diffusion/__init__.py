"""Diffusion maths, independent of any model or backend."""

from mobilegen.diffusion.ddim import ddim_sample, ddim_timesteps
from mobilegen.diffusion.ddpm import ddpm_sample, ddpm_timesteps
from mobilegen.diffusion.denoiser import UNCONDITIONAL, Denoiser, guided
from mobilegen.diffusion.sampler import SamplerConfig, run_sampler, seeded_noise, stacked_noise, to_uint8
from mobilegen.diffusion.schedule import Schedule, linear_schedule

__all__ = [
    "UNCONDITIONAL",
    "Denoiser",
    "SamplerConfig",
    "Schedule",
    "ddim_sample",
    "ddim_timesteps",
    "ddpm_sample",
    "ddpm_timesteps",
    "guided",
    "linear_schedule",
    "run_sampler",
    "seeded_noise",
    "stacked_noise",
    "to_uint8",
]
