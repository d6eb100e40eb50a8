"""Structured pruning: narrower layers and whole heads leave, the network still agrees with itself,
and MACs drop."""

from __future__ import annotations

import copy

import pytest
import torch

from mobilegen.compress import count_macs, count_params, prune_channels
from mobilegen.errors import CheckpointError
from mobilegen.models import UNet, UNetConfig
from mobilegen.models.checkpoint import expected_shapes, load_checkpoint, save_checkpoint

UNUSED_BY_V2 = ("down3.", "sa3.", "up1.", "sa4.")


def inputs():
    gen = torch.Generator().manual_seed(1)
    return torch.randn(3, 3, 64, 64, generator=gen), torch.tensor([1.0, 500.0, 999.0]), torch.tensor([3, -1, 8])


def test_pruned_model_runs_and_the_three_attention_impls_agree(pruned):
    outs = {}
    with torch.no_grad():
        for impl in ("sdpa", "math", "original"):
            outs[impl] = pruned.set_attention(impl)(*inputs())
    pruned.set_attention("sdpa")
    scale = outs["sdpa"].abs().max()
    assert outs["sdpa"].shape == (3, 3, 64, 64) and torch.isfinite(outs["sdpa"]).all()
    for impl in ("math", "original"):
        assert (outs[impl] - outs["sdpa"]).abs().max() <= 1e-5 * scale, impl
    assert [pruned.get_submodule(n).mha.num_heads for n in ("sa1", "sa2", "sa5", "sa6")] == [2, 2, 2, 2]


def test_modules_v2_never_applies_keep_their_widths(pruned):
    original = expected_shapes("student_v2")
    shapes = {k: tuple(v.shape) for k, v in pruned.state_dict().items()}
    unused = [k for k in original if k.startswith(UNUSED_BY_V2)]
    assert unused and all(shapes[k] == original[k] for k in unused)
    assert not any(name.startswith(UNUSED_BY_V2) for name, _ in pruned.config.widths)


def test_whole_heads_leave_inside_the_attention_and_cost_what_silencing_them_costs(v2_model):
    choice = {"sa1": [0, 3], "sa2": [1, 2], "sa5": [2, 3], "sa6": [1, 3]}
    heads_only = prune_channels(v2_model, 0.0, head_ratio=0.5, heads=choice)
    silenced = copy.deepcopy(v2_model)
    with torch.no_grad():
        for name, heads in choice.items():
            mha = silenced.get_submodule(name).mha
            for h in heads:
                mha.out_proj.weight[:, h * mha.head_dim : (h + 1) * mha.head_dim] = 0
        assert torch.allclose(heads_only(*inputs()), silenced(*inputs()), atol=1e-5)
    for name, heads in choice.items():
        a, b = v2_model.get_submodule(name).mha, heads_only.get_submodule(name).mha
        d, kept = a.head_dim, [h for h in range(4) if h not in heads]
        cols = [h * d + i for h in kept for i in range(d)]
        assert (b.embed_dim, b.num_heads, b.head_dim) == (a.embed_dim, 2, d)  # the residual stream keeps its width
        assert dict(heads_only.config.widths)[f"{name}.mha"] == (a.embed_dim, 2, d)
        big, small = a.in_proj_weight.view(3, a.embed_dim, -1), b.in_proj_weight.view(3, 2 * d, -1)
        assert torch.equal(small, big[:, cols]) and torch.equal(b.out_proj.weight, a.out_proj.weight[:, cols])
        assert torch.equal(b.out_proj.bias, a.out_proj.bias)
    with pytest.raises(ValueError, match="already removed"):
        prune_channels(heads_only, 0.25)


@pytest.mark.slow  # seconds: the quick suite stays under 3 minutes; CI runs it
def test_macs_count_attention_and_drop_with_pruning(v2_model):
    # Golden: convolutions, linear layers and the attention matmuls of one v2 step at batch 1.
    assert count_macs(v2_model) == 4_768_530_432
    sa6 = 2 * 4096 * 4096 * 64  # QK^T and attention x V of the 64x64 block alone
    assert count_macs(v2_model) > sa6 + 2_000_000_000
    half = prune_channels(v2_model, 0.5)
    assert 2.4 < count_macs(v2_model) / count_macs(half) < 2.8  # convs ~1/4, attention matmuls ~1/2
    heads = prune_channels(v2_model, 0.0, head_ratio=0.5)
    assert 1.35 < count_macs(v2_model) / count_macs(heads) < 1.5  # attention's projections and matmuls; convs untouched
    assert count_macs(v2_model) / count_macs(prune_channels(v2_model, 0.0, head_ratio=0.75)) > 1.7  # 1.79: sa6 is most of it
    assert count_params(half) < count_params(v2_model) / 3
    assert count_params(v2_model, only_used=False) > count_params(v2_model)  # v2 carries unused modules


def test_pruned_checkpoint_describes_its_widths_and_loads_strictly(tmp_path, pruned):
    assert "widths" not in UNetConfig().to_dict()  # unpruned configs unchanged
    path = save_checkpoint(tmp_path / "pruned.pt", pruned)
    loaded = load_checkpoint(path)  # weights_only, strict
    assert loaded.model.config == pruned.config and loaded.model.widths() == pruned.widths()
    with torch.no_grad():
        assert torch.equal(loaded.model(*inputs()), pruned(*inputs()))
    torch.save(pruned.state_dict(), tmp_path / "plain.pt")  # no description: the usual clear error
    with pytest.raises(CheckpointError, match="wrong shape"):
        load_checkpoint(tmp_path / "plain.pt")
    with pytest.raises(ValueError, match="does not have"):
        UNet(UNetConfig(widths={"nonsense.layer": [1, 2]}))
    with pytest.raises(ValueError, match="divisible by heads"):
        UNet(UNetConfig(widths={"sa6.mha": [30, 4]}))
    with pytest.raises(ValueError, match="heads x head_dim <= embed"):
        UNet(UNetConfig(widths={"sa6.mha": [64, 3, 32]}))


def test_ratio_out_of_range_is_refused(v2_model):
    with pytest.raises(ValueError, match="in \\[0, 1\\)"):
        prune_channels(v2_model, 1.0)


def test_real_v2_chosen_setting_cuts_macs(real_v2):
    model = load_checkpoint(real_v2).model
    pruned = prune_channels(model, 0.1, head_ratio=0.5)
    assert count_macs(model) / count_macs(pruned) >= 1.5
