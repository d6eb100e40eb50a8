"""Which heads to remove (compress/heads.py): ablation ranks a silenced head least important."""

from __future__ import annotations

import copy

import pytest
import torch

from mobilegen.compress.heads import head_ablation_scores, heads_to_drop, weakest_heads
from mobilegen.compress.structured import prune_channels


@pytest.mark.slow  # seconds: the quick suite stays under 3 minutes; CI runs it
def test_ablation_ranks_a_silenced_head_least_important(v2_model):
    model = copy.deepcopy(v2_model)
    with torch.no_grad():
        sa6 = model.sa6.mha
        d = sa6.head_dim
        sa6.out_proj.weight[:, 2 * d : 3 * d] = 0  # head 2 of the 64x64 block adds nothing any more
    gen = torch.Generator().manual_seed(3)
    x, t, y = torch.randn(2, 3, 64, 64, generator=gen), torch.tensor([10.0, 600.0]), torch.tensor([4, -1])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    scores = head_ablation_scores(model, x, t, y)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), "the caller's model is untouched"
    assert list(scores) == ["sa1", "sa2", "sa5", "sa6"]  # the blocks v2 applies, in call order
    assert scores["sa6"][2] == 0.0 and min(scores["sa6"][h] for h in (0, 1, 3)) > 0
    choice = weakest_heads(scores, heads_to_drop(model, 0.25))
    assert choice["sa6"] == [2] and all(len(h) == 1 for h in choice.values())
    pruned = prune_channels(model, 0.0, 0.25, heads=choice)
    assert pruned.sa6.mha.num_heads == 3 and pruned.sa6.mha.out_proj.weight.shape == (64, 3 * d)  # the width stays
    with torch.no_grad():  # removing the silenced head changes nothing else: sa6's eps contribution is the same
        silenced_rest = copy.deepcopy(model)
        for name, heads in choice.items():
            block = silenced_rest.get_submodule(name).mha
            for h in heads:
                block.out_proj.weight[:, h * block.head_dim : (h + 1) * block.head_dim] = 0
        assert torch.allclose(pruned(x, t, y), silenced_rest(x, t, y), atol=1e-5)
    with pytest.raises(ValueError, match="removes 1 of its 4 heads"):
        prune_channels(model, 0.0, 0.25, heads={**choice, "sa6": [0, 1]})
