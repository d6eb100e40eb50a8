"""Bounded attention (models/budget.py): chunked rows equal the whole computation, the plan, and a
budget below one row refused; sample and serve use it."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner
from helpers import run

from mobilegen.models.budget import MB, min_budget, plan_attention, set_bounded_attention


@pytest.fixture(scope="module")
def narrow_v2(v2_model):
    """v2 with a tenth of its channels and every head: the attention plans are v2's (they depend
    on heads, rows and keys), the forward passes a fraction of the cost."""
    from mobilegen.compress import prune_channels

    return prune_channels(v2_model, 0.9)


@pytest.mark.parametrize("budget,split", [(16.0, "per-head"), (4.0, "per-head"), (3.0, "per-head"), (4.0, "all-heads")])
def test_bounded_attention_computes_the_same_rows(narrow_v2, budget, split):
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    t, y = torch.tensor([10.0, 900.0]), torch.tensor([3, -1], dtype=torch.int32)
    model = narrow_v2.eval().set_attention("math")
    with torch.inference_mode():
        set_bounded_attention(model, 2, None)
        ref = model(x, t, y)
        plans = set_bounded_attention(model, 2, budget * 2, split)
        bounded = model(x, t, y)
        model.set_attention("sdpa")
        fused = model(x, t, y)
    set_bounded_attention(model, 2, None)
    assert all(p.score_bytes <= budget * 2 * MB for p in plans)
    assert next(p for p in plans if p.name == "sa6").query_chunk < 4096
    assert torch.equal(bounded, ref), "softmax runs over whole key rows: every row is the same number"
    assert (fused - ref).abs().max() < 1e-5


def test_all_heads_splits_heads_only_when_one_row_of_all_heads_is_too_large(v2_model):
    plans = {p.name: p for p in plan_attention(v2_model, 1, 3.0, "all-heads")}
    assert (plans["sa6"].head_group, plans["sa6"].query_chunk) == (4, 32)
    assert min_budget(v2_model, 1) == 3 * MB  # up3's concatenation, [1, 192, 64, 64]


def test_per_head_keeps_whole_rows_for_the_most_heads_that_fit_else_one_head_in_row_chunks(v2_model):
    plan = {p.name: (p.head_group, p.query_chunk) for p in plan_attention(v2_model, 1, 4.0, "per-head")}
    assert plan["sa6"] == (1, 256), "4096 keys x 256 rows x 4 bytes = 4 MB, one head at a time"
    assert plan["sa1"] == (1, 1024), "one head's whole 1024 x 1024 scores are 4 MB"
    assert plan["sa2"] == (4, 256), "a block that fits whole stays whole"
    assert {p.name: (p.head_group, p.query_chunk) for p in plan_attention(v2_model, 1, 8.0)}["sa1"] == (2, 1024)


def test_a_budget_below_one_row_is_refused_before_anything_is_written(tmp_path):
    out = tmp_path / "out"
    res = run("onnx", "-o", out, "--max-tensor-mb", "0.5")
    assert res.exit_code == 2
    assert "smallest feasible budget is 3.000 MB" in res.stderr
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_sample_with_bounded_attention_draws_the_same_image(tmp_path):
    from mobilegen.cli import main_cli

    paths = [tmp_path / "plain.png", tmp_path / "bounded.png"]
    for path, extra in zip(paths, ([], ["--max-tensor-mb", "8"])):
        res = CliRunner().invoke(main_cli, ["sample", "--steps", "2", "--device", "cpu", "-o", str(path), *extra])
        assert res.exit_code == 0, res.output
    assert paths[0].read_bytes() == paths[1].read_bytes()
    res = CliRunner().invoke(main_cli, ["sample", "--steps", "2", "--max-tensor-mb", "1", "-o", str(tmp_path / "x.png")])
    assert res.exit_code == 2 and "smallest feasible" in res.stderr


def test_server_models_get_bounded_attention():
    from mobilegen.serve.config import ModelSource, ServeConfig
    from mobilegen.serve.models import load_model

    served = load_model(ModelSource(None), ServeConfig(device="cpu", max_batch=4, max_tensor_mb=16.0))
    try:
        sa6 = served.batcher.run.model.sa6  # the TorchRunner's model
        assert 0 < sa6.query_chunk < 4096 and 4 * sa6.head_group * sa6.query_chunk * 4096 * 4 <= 16 * MB
    finally:
        served.batcher.close()
