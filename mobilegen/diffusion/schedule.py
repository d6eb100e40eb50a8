"""The original linear noise schedule, computed in float64 and cast where used.

Legend (DDPM paper, Ho et al. 2020):
    betas[t]          beta_t
    alphas[t]         alpha_t = 1 - beta_t
    alphas_cumprod[t] alpha_bar_t = prod_{s<=t} alpha_s
Index t runs 0..T-1 exactly as in the original code (training draws t from 1..T-1).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mobilegen.errors import InvalidInput


@dataclass(frozen=True)
class Schedule:
    betas: np.ndarray  # float64 [T]

    @property
    def T(self) -> int:
        return len(self.betas)

    @property
    def alphas(self) -> np.ndarray:
        return 1.0 - self.betas

    @property
    def alphas_cumprod(self) -> np.ndarray:
        return np.cumprod(self.alphas)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps (forward process)."""
        ab = torch.as_tensor(self.alphas_cumprod, dtype=torch.float64)[t.long().cpu()]
        ab = ab.to(device=x0.device, dtype=x0.dtype)[:, None, None, None]
        return ab.sqrt() * x0 + (1 - ab).sqrt() * noise

    def to_dict(self) -> dict:
        return {
            "kind": "linear",
            "T": self.T,
            "beta_start": float(self.betas[0]),
            "beta_end": float(self.betas[-1]),
            "alphas_cumprod": [float(v) for v in self.alphas_cumprod],
        }


def alphas_cumprod_problem(alphas_cumprod, T: int | None = None) -> str | None:
    """Why these values are not an alpha_bar schedule (None if they are): finite, in (0, 1),
    strictly decreasing, T of them."""
    try:
        ab = np.asarray(alphas_cumprod, dtype=np.float64)
    except (TypeError, ValueError):
        return "must be a list of numbers"
    if ab.ndim != 1 or len(ab) < 2:
        return f"must be a flat list of at least 2 numbers, got shape {list(ab.shape)}"
    if T is not None and len(ab) != T:
        return f"has {len(ab)} values, expected T = {T}"
    if not np.isfinite(ab).all():
        return f"holds NaN/Inf (first at index {int(np.flatnonzero(~np.isfinite(ab))[0])})"
    outside = np.flatnonzero((ab <= 0) | (ab >= 1))
    if len(outside):
        return f"value {float(ab[outside[0]])!r} at index {int(outside[0])} is outside (0, 1)"
    rising = np.flatnonzero(np.diff(ab) >= 0)
    if len(rising):
        return (
            f"is not strictly decreasing (index {int(rising[0]) + 1}: {float(ab[rising[0] + 1])!r} >= {float(ab[rising[0]])!r})"
        )
    return None


def schedule_from_alphas_cumprod(alphas_cumprod) -> Schedule:
    """Rebuild a schedule from alpha_bar (what a manifest stores); refuses a malformed one."""
    problem = alphas_cumprod_problem(alphas_cumprod)
    if problem:
        raise InvalidInput(f"alphas_cumprod {problem}")
    ab = np.asarray(alphas_cumprod, dtype=np.float64)
    return Schedule(1.0 - ab / np.concatenate([[1.0], ab[:-1]]))


def linear_schedule(T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> Schedule:
    return Schedule(np.linspace(beta_start, beta_end, T, dtype=np.float64))
