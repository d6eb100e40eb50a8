"""The exported module (export/wrapper.py): (x, t, y) -> eps in the spec's layout, on a private copy."""

from __future__ import annotations

import pytest
import torch

from mobilegen.contract.spec import DenoiserSpec
from mobilegen.export.wrapper import ExportedDenoiser


@pytest.mark.slow  # seconds: the quick suite stays under 3 minutes; CI runs it
def test_nhwc_in_and_out_around_the_same_network(v2_model):
    gen = torch.Generator().manual_seed(0)
    x, t, y = torch.randn(1, 3, 64, 64, generator=gen), torch.tensor([300.0]), torch.tensor([5])
    nchw = ExportedDenoiser(v2_model, DenoiserSpec(layout="NCHW"))
    nhwc = ExportedDenoiser(v2_model, DenoiserSpec(layout="NHWC"))
    with torch.no_grad():
        ref = v2_model.eval()(x, t, y)
        a = nchw(x, t, y)
        b = nhwc(x.permute(0, 2, 3, 1), t, y)
    assert torch.allclose(a, ref, atol=1e-5)
    assert b.shape == (1, 64, 64, 3) and torch.allclose(b.permute(0, 3, 1, 2), a, atol=1e-6)


def test_the_callers_model_is_untouched(v2_model):
    impls = {m.impl for m in v2_model.modules() if hasattr(m, "impl")}
    wrapped = ExportedDenoiser(v2_model, DenoiserSpec(), max_tensor_mb=3.0)
    assert wrapped.unet is not v2_model and {m.impl for m in wrapped.unet.modules() if hasattr(m, "impl")} == {"math"}
    assert {m.impl for m in v2_model.modules() if hasattr(m, "impl")} == impls
    assert wrapped.attention_plan and all(m.query_chunk == 0 for m in v2_model.modules() if hasattr(m, "query_chunk"))
