"""What a sampler needs from a backend, and classifier-free guidance on top of it.

A denoiser is any callable ``eps = denoise(x, t, y)`` with x float32 [N,3,64,64]
(NCHW torch tensor), t float32 [N] timestep index and y int32 [N] class index,
-1 for the unconditional pass. PyTorch, ONNX and TFLite backends all fit.
"""

from __future__ import annotations

from typing import Callable, Protocol

import torch

UNCONDITIONAL = -1


class Denoiser(Protocol):
    def __call__(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor: ...


def guided(denoise: Denoiser, scale: float) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """Classifier-free guidance with the original convention: lerp(uncond, cond, scale).

    Scale 0 turns guidance off (the conditional prediction is used as is). Otherwise
    the conditional and unconditional passes are evaluated as ONE batch of 2N.
    """
    if scale == 0:
        return denoise

    def step(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        uncond = torch.full_like(y, UNCONDITIONAL)
        eps = denoise(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, uncond]))
        cond, free = eps[:n], eps[n:]
        return torch.lerp(free, cond, scale)

    return step
