"""The original DDPM sampler against a direct implementation of its formula."""

from __future__ import annotations

import numpy as np
import torch
from closed_form import S, last, oracle

from mobilegen.diffusion.ddpm import ddpm_sample
from mobilegen.diffusion.sampler import seeded_noise


def reference_ddpm(model, x, y, noise):
    """A direct transcription of the conformance README's update, in float64 numpy."""
    betas = np.linspace(1e-4, 0.02, 1000)
    alpha = 1 - betas
    alpha_hat = np.cumprod(alpha)
    x = x.double().numpy()
    for i in range(999, 0, -1):
        eps = model(torch.from_numpy(x).float(), torch.full((x.shape[0],), float(i)), y).double().numpy()
        z = noise(x.shape).double().numpy() if i > 1 else np.zeros_like(x)
        x = 1 / np.sqrt(alpha[i]) * (x - (1 - alpha[i]) / np.sqrt(1 - alpha_hat[i]) * eps) + np.sqrt(betas[i]) * z
    return x


def test_ddpm_matches_a_direct_implementation_of_the_original_formula():
    def model(x, t, y):  # a well-behaved eps that depends on x, t and y
        return oracle(x, t, y) + 0.01 * torch.tanh(x) + y[:, None, None, None].float() * 0.001

    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    y = torch.tensor([1, 8], dtype=torch.int32)
    ours = last(ddpm_sample(model, x, y, S, seeded_noise(7)))
    ref = reference_ddpm(model, x, y, seeded_noise(7))
    assert np.abs(ref).max() < 5, "the trajectory stays bounded, so an absolute tolerance is meaningful"
    assert np.abs(ours.numpy() - ref).max() < 1e-4


def test_ddpm_with_zero_eps_and_zero_noise_is_a_pure_rescaling():
    x = torch.ones(1, 3, 64, 64)
    out = last(ddpm_sample(lambda x, t, y: torch.zeros_like(x), x, torch.zeros(1), S, lambda shape: torch.zeros(shape)))
    expected = np.prod(1 / np.sqrt(S.alphas[1:]))
    assert torch.allclose(out, torch.full_like(out, float(expected)), rtol=1e-5)


def test_ddpm_runs_every_step_and_updates_x():
    seen = []

    def model(x, t, y):
        seen.append((int(t[0]), float(x.abs().sum())))
        return torch.zeros_like(x)

    last(ddpm_sample(model, torch.ones(1, 3, 64, 64), torch.zeros(1), S, lambda shape: torch.zeros(shape)))
    assert [t for t, _ in seen] == list(range(999, 0, -1))
    assert len({s for _, s in seen}) == len(seen), "x changes at every step (the original's forgotten update is not copied)"
