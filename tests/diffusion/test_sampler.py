"""The one sampling entry point: guidance every step, seeded noise, uint8, validation, NaN stops."""

from __future__ import annotations

import pytest
import torch
from closed_form import Recorder, S

from mobilegen.diffusion.sampler import SamplerConfig, run_sampler, to_uint8


def test_guided_sampling_calls_the_model_with_batch_2_every_step():
    rec = Recorder()
    run_sampler(rec, torch.tensor([3]), S, SamplerConfig(steps=10, guidance=3.0))
    assert len(rec.batches) == 10 and all(b == [3, -1] for b in rec.batches)


@pytest.mark.slow  # seconds: the quick suite stays under 3 minutes; CI runs it
def test_sampling_is_seeded_and_deterministic(v2_model):
    def denoise(x, t, y):
        with torch.no_grad():
            return v2_model(x, t, y)

    cfg = SamplerConfig(steps=3, guidance=3.0, seed=11)
    a = run_sampler(denoise, torch.tensor([1, 2]), S, cfg)
    b = run_sampler(denoise, torch.tensor([1, 2]), S, cfg)
    c = run_sampler(denoise, torch.tensor([1, 2]), S, SamplerConfig(steps=3, guidance=3.0, seed=12))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_uint8_conversion_matches_the_original():
    x = torch.tensor([-2.0, -1.0, 0.0, 0.999, 1.0, 3.0])
    assert to_uint8(x).tolist() == [0, 0, 127, 254, 255, 255]


def test_sampler_config_is_validated():
    with pytest.raises(ValueError, match="ddim, ddpm"):
        SamplerConfig(sampler="euler")
    with pytest.raises(ValueError, match=">= 0"):
        SamplerConfig(guidance=-1)
    for bad in (dict(guidance=float("nan")), dict(eta=float("nan")), dict(guidance=float("inf"))):
        with pytest.raises(ValueError, match="must be finite"):
            SamplerConfig(**bad)


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_a_state_that_turns_non_finite_stops_the_run(sampler):
    """A denoiser that overflows at t=500 must stop the sampler, not produce a black image."""
    from mobilegen.errors import NonFiniteError

    seen = []

    def overflowing(x, t, y):
        seen.append(int(t[0]))
        return torch.full_like(x, float("inf")) if t[0] <= 500 else torch.zeros_like(x)

    with pytest.raises(NonFiniteError, match="turned NaN/Inf at timestep") as info:
        run_sampler(overflowing, torch.tensor([3]), S, SamplerConfig(sampler=sampler, steps=10, guidance=0))
    assert info.value.exit_code == 1
    assert min(seen) <= 500 < max(seen) and seen.count(min(seen)) == 1, "stopped at the first bad step"
