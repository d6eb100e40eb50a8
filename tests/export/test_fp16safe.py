"""Float16-safe GroupNorm (export/fp16safe.py): the same function, inputs bounded before squaring."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mobilegen.contract.spec import DenoiserSpec
from mobilegen.export.fp16safe import LIMIT, ScaledGroupNorm, group_norm_peaks, power_of_two_scale
from mobilegen.export.wrapper import ExportedDenoiser


def test_a_scaled_group_norm_is_the_same_function_in_float64():
    gen = torch.Generator().manual_seed(0)
    plain = nn.GroupNorm(1, 8).double()
    with torch.no_grad():
        plain.weight.copy_(torch.randn(8, generator=gen))
        plain.bias.copy_(torch.randn(8, generator=gen))
    scaled = ScaledGroupNorm(8, 128.0).double()
    scaled.load_state_dict(plain.state_dict())
    for magnitude in (1e-3, 1.0, 300.0):  # eps matters most at the small end
        x = magnitude * torch.randn(2, 8, 5, 5, generator=gen, dtype=torch.float64)
        assert torch.allclose(scaled(x), plain(x), rtol=1e-12, atol=1e-12), magnitude


@pytest.mark.parametrize("peak, scale", [(0.0, 1.0), (LIMIT, 1.0), (LIMIT + 0.1, 2.0), (314.0, 128.0), (1e6, 2.0**18)])
def test_the_scale_is_the_smallest_power_of_two_that_bounds_the_peak(peak, scale):
    assert power_of_two_scale(peak) == scale and peak / scale <= LIMIT and math.log2(scale).is_integer()


@pytest.mark.slow  # seconds: the quick suite stays under 3 minutes; CI runs it
def test_the_export_scales_exactly_the_norms_whose_inputs_reach_past_the_limit(v2_model):
    loud = type(v2_model)(v2_model.config).eval()
    loud.load_state_dict(v2_model.state_dict())
    with torch.no_grad():
        loud.inc.double_conv[0].weight.mul_(1000.0)  # the first GroupNorm now sees |x| in the hundreds
    peaks = group_norm_peaks(loud)
    wrapped = ExportedDenoiser(loud, DenoiserSpec(layout="NCHW"))
    assert wrapped.group_norm_scales == {n: power_of_two_scale(p) for n, p in peaks.items() if p > LIMIT}
    assert wrapped.group_norm_scales["inc.double_conv.1"] >= 64
    assert isinstance(wrapped.unet.inc.double_conv[1], ScaledGroupNorm) and type(loud.inc.double_conv[1]) is nn.GroupNorm
    gen = torch.Generator().manual_seed(0)
    x, t, y = torch.randn(2, 3, 64, 64, generator=gen), torch.tensor([640.0, 10.0]), torch.tensor([3, -1])
    with torch.no_grad():
        assert torch.allclose(wrapped.double()(x.double(), t, y), loud.double()(x.double(), t, y), rtol=1e-10, atol=1e-10)
