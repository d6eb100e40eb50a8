"""Samplers against closed-form expectations, with fake models whose eps is known."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mobilegen.diffusion import (
    SamplerConfig,
    ddim_sample,
    ddim_timesteps,
    ddpm_sample,
    guided,
    linear_schedule,
    run_sampler,
    seeded_noise,
    to_uint8,
)
from mobilegen.diffusion.schedule import schedule_from_alphas_cumprod

S = linear_schedule()
X0 = torch.linspace(-0.9, 0.9, 3 * 64 * 64).reshape(1, 3, 64, 64)


def oracle(x, t, y):
    """The exact eps for data that is always X0: eps = (x_t - sqrt(ab) x0) / sqrt(1 - ab)."""
    ab = torch.as_tensor(S.alphas_cumprod, dtype=torch.float64)[t.long()][:, None, None, None]
    return ((x.double() - ab.sqrt() * X0.double()) / (1 - ab).sqrt()).float()


def last(loop):
    for _, x in loop:
        pass
    return x


def test_schedule_is_the_original_linear_one_in_float64():
    assert S.T == 1000 and S.betas.dtype == np.float64
    assert S.betas[0] == pytest.approx(1e-4) and S.betas[-1] == pytest.approx(0.02)
    assert np.all(np.diff(S.alphas_cumprod) < 0)
    assert np.allclose(schedule_from_alphas_cumprod(S.alphas_cumprod).betas, S.betas, rtol=1e-9, atol=1e-12)


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


class Recorder:
    def __init__(self):
        self.batches = []

    def __call__(self, x, t, y):
        self.batches.append(y.tolist())
        # conditional: +1, unconditional: -1, so the guided value is known in closed form
        return torch.where(y[:, None, None, None] >= 0, 1.0, -1.0).expand_as(x).clone()


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


def test_guided_sampling_calls_the_model_with_batch_2_every_step():
    rec = Recorder()
    run_sampler(rec, torch.tensor([3]), S, SamplerConfig(steps=10, guidance=3.0))
    assert len(rec.batches) == 10 and all(b == [3, -1] for b in rec.batches)


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


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda ab: ab.__setitem__(500, np.nan), "NaN/Inf"),
        (lambda ab: ab.__setitem__(3, 1.5), "outside"),
        (lambda ab: ab.__setitem__(999, 0.0), "outside"),
        (lambda ab: ab.__setitem__(10, ab[9] + 1e-9), "not strictly decreasing"),
    ],
    ids=["nan", "above-1", "zero", "rising"],
)
def test_malformed_alphas_cumprod_is_refused(edit, message):
    ab = S.alphas_cumprod.copy()
    edit(ab)
    with pytest.raises(ValueError, match=message):
        schedule_from_alphas_cumprod(ab)


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
