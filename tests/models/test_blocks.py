"""The UNet's blocks (models/blocks.py) on tiny widths: the embedding, the concatenation tree,
attention with removed heads, and chunked attention equal to the whole."""

from __future__ import annotations

import pytest
import torch

from mobilegen.errors import InvalidInput
from mobilegen.models.blocks import CONCAT_FANIN, SelfAttention, attention_layer, concat, timestep_embedding


def test_timestep_embedding_is_sin_then_cos():
    emb = timestep_embedding(torch.tensor([0.0, 1.0, 999.0]), 8)
    assert emb.shape == (3, 8)
    assert torch.equal(emb[0], torch.tensor([0.0] * 4 + [1.0] * 4))  # t = 0
    assert emb[1, 0] == pytest.approx(torch.sin(torch.tensor(1.0)).item())  # the first frequency is 1
    assert torch.allclose(emb[:, :4] ** 2 + emb[:, 4:] ** 2, torch.ones(3, 4))


def test_concat_is_a_tree_of_small_cats_with_the_same_values():
    parts = [torch.full((1, 2), float(i)) for i in range(CONCAT_FANIN * 2 + 1)]
    assert torch.equal(concat(parts, dim=0), torch.cat(parts, dim=0))
    assert concat(parts[:1], dim=1) is parts[0]


def test_attention_widths_are_checked_and_removed_heads_shrink_only_the_inside():
    with pytest.raises(InvalidInput, match="divisible by heads"):
        attention_layer(10, 4)
    with pytest.raises(InvalidInput, match="heads x head_dim <= embed"):
        attention_layer(8, 3, head_dim=4)
    mha = attention_layer(8, 1, head_dim=4)  # one head of 4 left in an 8-wide stream
    assert mha.in_proj_weight.shape == (12, 8) and mha.out_proj.weight.shape == (8, 4)
    assert (mha.num_heads, mha.head_dim, mha.embed_dim) == (1, 4, 8)


@pytest.mark.parametrize("impl", ["sdpa", "math"])
def test_chunked_attention_computes_the_same_rows(impl):
    torch.manual_seed(0)
    block = SelfAttention(8, 4).eval()  # 8 channels, 4x4 = 16 positions, 4 heads
    block.impl = impl
    x = torch.randn(2, 8, 4, 4)
    with torch.no_grad():
        whole = block(x)
        block.query_chunk, block.head_group = 3, 2
        chunked = block(x)
        block.impl = "original"
        original = block(x)
    assert torch.allclose(chunked, whole, atol=1e-6) and torch.allclose(original, whole, atol=1e-5)
    assert chunked.shape == x.shape and not torch.equal(chunked, x)
