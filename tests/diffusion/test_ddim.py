"""DDIM against closed-form expectations: with the exact eps it returns the data point."""

from __future__ import annotations

import pytest
import torch
from closed_form import X0, S, last, oracle

from mobilegen.diffusion.ddim import ddim_sample, ddim_timesteps
from mobilegen.diffusion.sampler import seeded_noise


@pytest.mark.parametrize("steps", [1, 7, 50, 999])
def test_ddim_timesteps_are_evenly_spaced_from_T_minus_1_to_1(steps):
    ts = ddim_timesteps(S, steps)
    assert len(ts) == len(set(ts)) == steps and ts[0] == 999 and (steps == 1 or ts[-1] == 1)
    assert ts == sorted(ts, reverse=True)


def test_ddim_steps_out_of_range():
    with pytest.raises(ValueError, match="1..999"):
        ddim_timesteps(S, 1000)


@pytest.mark.parametrize("steps", [1, 10, 50])
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_with_exact_eps_returns_the_data_point(steps, eta):
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    out = last(ddim_sample(oracle, x, torch.zeros(1, dtype=torch.int32), S, steps, seeded_noise(0), eta))
    assert torch.allclose(out, X0, atol=1e-4)


def test_ddim_intermediate_states_follow_the_marginals():
    """With exact eps and eta = 0, x after the step to t' is sqrt(ab') x0 + sqrt(1-ab') eps_0."""
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    eps0 = oracle(x, torch.tensor([999.0]), None)
    ts = ddim_timesteps(S, 5)
    states = list(ddim_sample(oracle, x, torch.zeros(1, dtype=torch.int32), S, 5, seeded_noise(0)))
    ab_next = S.alphas_cumprod[ts[1]]
    assert torch.allclose(states[0][1], (ab_next**0.5 * X0 + (1 - ab_next) ** 0.5 * eps0), atol=1e-4)
