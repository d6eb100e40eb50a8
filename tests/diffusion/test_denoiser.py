"""Classifier-free guidance: one batch of 2N, lerp(uncond, cond, scale), off at 0."""

from __future__ import annotations

import pytest
import torch
from closed_form import Recorder

from mobilegen.diffusion.denoiser import guided


@pytest.mark.parametrize("scale", [1.0, 3.0, 7.5])
def test_guidance_is_one_batch_of_two_and_lerps(scale):
    rec = Recorder()
    out = guided(rec, scale)(torch.zeros(1, 3, 64, 64), torch.tensor([10.0]), torch.tensor([4], dtype=torch.int32))
    assert rec.batches == [[4, -1]]
    assert torch.allclose(out, torch.full_like(out, -1 + scale * 2))  # lerp(-1, 1, s)


def test_guidance_zero_is_off():
    rec = Recorder()
    guided(rec, 0.0)(torch.zeros(2, 3, 64, 64), torch.tensor([10.0, 10.0]), torch.tensor([4, 5], dtype=torch.int32))
    assert rec.batches == [[4, 5]]
