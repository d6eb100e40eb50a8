"""Float16-safe GroupNorm in the exported graph (issue 23, item 5).

LiteRT's GPU accelerator computes in float16 by default. GroupNorm(1) as exported squares
its input to get the variance, and real v2 feeds values up to ~314 into up3's first
GroupNorm: 314^2 overflows float16 (max 65504), the variance is inf and the step is lost.
GroupNorm(1) is the same function of x / s with eps / s^2 for any s > 0, so each GroupNorm
whose input reaches more than LIMIT on calibration inputs first multiplies by 1 / s, s a
power of two (exact in float32), with eps / s^2 as its epsilon. The scales are measured at
export on forward-process inputs (seed 1, not the parity gate's seed 0).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

LIMIT = 4.0  # the largest |input| a GroupNorm should see after its scale on calibration inputs
CALIBRATION_TIMESTEPS = (999, 640, 250, 1)
CALIBRATION_LABELS = (1, 5, 9, -1)


class ScaledGroupNorm(nn.GroupNorm):
    """GroupNorm(1, C) of x / scale with eps / scale^2: the same function, float16-safe."""

    def __init__(self, num_channels: int, scale: float, eps: float = 1e-5, affine: bool = True) -> None:
        super().__init__(1, num_channels, eps=eps, affine=affine)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.group_norm(x * (1.0 / self.scale), 1, self.weight, self.bias, self.eps / self.scale**2)


def power_of_two_scale(peak: float) -> float:
    """The smallest power of two s >= 1 with peak / s <= LIMIT."""
    return float(2 ** max(0, math.ceil(math.log2(peak / LIMIT)))) if peak > LIMIT else 1.0


def group_norm_peaks(unet: nn.Module, batch: int = 8) -> dict[str, float]:
    """max |input| of every GroupNorm(1) of unet over the calibration inputs (float32)."""
    from mobilegen.diffusion import linear_schedule
    from mobilegen.diffusion.cases import forward_process_cases

    cases = forward_process_cases(linear_schedule(), CALIBRATION_TIMESTEPS, CALIBRATION_LABELS, seed=1)
    peaks: dict[str, float] = {}
    norms = {name: m for name, m in unet.named_modules() if type(m) is nn.GroupNorm and m.num_groups == 1}

    def record(name):
        return lambda module, inputs, output: peaks.__setitem__(name, max(peaks.get(name, 0.0), float(inputs[0].abs().max())))

    hooks = [m.register_forward_hook(record(name)) for name, m in norms.items()]
    try:
        with torch.no_grad():
            for i in range(0, len(cases.t), batch):
                s = slice(i, i + batch)
                unet(torch.from_numpy(cases.x[s]), torch.from_numpy(cases.t[s]), torch.from_numpy(cases.y[s]).long())
    finally:
        for h in hooks:
            h.remove()
    return peaks


def scale_group_norms(unet: nn.Module, peaks: dict[str, float]) -> dict[str, float]:
    """Replace (in place) each GroupNorm(1) of unet whose peak needs it by a ScaledGroupNorm
    with the same parameters; returns {module name: scale} of those replaced."""
    scales = {name: power_of_two_scale(peak) for name, peak in peaks.items()}
    scales = {name: s for name, s in scales.items() if s > 1}
    for name, s in scales.items():
        parent_name, _, child = name.rpartition(".")
        parent = unet.get_submodule(parent_name)
        old = getattr(parent, child)
        scaled = ScaledGroupNorm(old.num_channels, s, eps=old.eps, affine=old.affine)
        scaled.load_state_dict(old.state_dict())
        setattr(parent, child, scaled)
    return scales
