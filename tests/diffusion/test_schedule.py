"""The noise schedule: the original linear one in float64, and what a manifest's may not be."""

from __future__ import annotations

import numpy as np
import pytest
from closed_form import S

from mobilegen.diffusion.schedule import schedule_from_alphas_cumprod


def test_schedule_is_the_original_linear_one_in_float64():
    assert S.T == 1000 and S.betas.dtype == np.float64
    assert S.betas[0] == pytest.approx(1e-4) and S.betas[-1] == pytest.approx(0.02)
    assert np.all(np.diff(S.alphas_cumprod) < 0)
    assert np.allclose(schedule_from_alphas_cumprod(S.alphas_cumprod).betas, S.betas, rtol=1e-9, atol=1e-12)


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
