"""The model runners the server calls."""

from __future__ import annotations

import pytest
import torch

from mobilegen.models.checkpoint import seeded_model
from mobilegen.serve.models import TorchRunner


@pytest.mark.slow  # seconds: the quick suite stays under 3 minutes; CI runs it
def test_fixed_rows_runner_pads_and_splits_without_changing_a_row():
    """What serve does on CUDA (every call exactly `rows` rows), run on the CPU here:
    5 rows as chunks of 4 (the last padded) give the rows of one plain call."""
    model = seeded_model("student_v2").model
    x, t, y = torch.randn(5, 3, 64, 64), torch.tensor([1.0, 300, 999, 20, 500]), torch.tensor([0, -1, 9, 3, -1])
    fixed = TorchRunner(model, torch.device("cpu"), rows=4)
    plain = TorchRunner(seeded_model("student_v2").model, torch.device("cpu"))
    assert torch.equal(fixed(x, t, y), plain(x, t, y))
    assert torch.equal(fixed(x[:1], t[:1], y[:1]), plain(x[:1], t[:1], y[:1]))
    with pytest.raises(ValueError, match="at least 2"):
        TorchRunner(model, torch.device("cpu"), rows=1)
