"""Structured pruning: whole channels leave the UNet, so every later kernel does less work.

torch-pruning builds the dependency graph (which channels must go together: a conv's
outputs, the GroupNorm after it, the next conv's inputs, the skip concatenations,
the time-embedding projections added to them, the attention blocks on the same
stream) and removes the lowest-ranked channels of each group by L2 magnitude.

Attention heads go after the channels (remove_heads: head_ratio of each block's heads, the
lowest by summed magnitude or those a caller chose, e.g. by ablation in compress/heads.py).
On a CPU the attention of the 64x64 block is bound by its heads x 4096 x 4096 score
matrix, which narrower heads do not shrink; so a head leaves inside its attention, and
the block's width, the residual stream, stays: removing a head this way costs exactly what
silencing it costs (on the real v2, half the heads by ablation: per-step PSNR min 37.1 dB,
where also taking the channels they live on gave 14.1 dB; docs/pruning.md). In the channel step each
nn.MultiheadAttention is told its head count as a channel grouping, so every head loses
the same channels at the same offsets and the width stays divisible by the head count.
The time-embedding width (shared
by the sinusoidal embedding, the label embedding and every emb_layer) and the
image channels are never pruned. Modules an architecture never applies (v2's
down3, sa3, up1, sa4) are not in the traced graph and keep their widths.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from mobilegen.compress.heads import applied_blocks
from mobilegen.errors import InvalidInput
from mobilegen.models import UNet, UNetConfig
from mobilegen.models.blocks import attention_layer

log = logging.getLogger(__name__)


def example_inputs(batch: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return torch.randn(batch, 3, 64, 64, generator=gen), torch.full((batch,), 500.0), torch.zeros(batch, dtype=torch.long)


def count_params(model: nn.Module, only_used: bool = True) -> int:
    """Parameters; with only_used, those the forward pass touches (v2 carries unused modules)."""
    if not only_used:
        return sum(p.numel() for p in model.parameters())
    used: set[int] = set()
    hooks = [
        m.register_forward_hook(lambda mod, *_: used.update(id(p) for p in mod.parameters(recurse=False)))
        for m in model.modules()
    ]
    try:
        with torch.no_grad():
            model(*example_inputs())
    finally:
        for h in hooks:
            h.remove()
    return sum(p.numel() for p in model.parameters() if id(p) in used)


def count_macs(model: UNet) -> int:
    """Multiply-accumulates of one denoiser step at batch 1, attention matmuls included.

    Counted by PyTorch's FlopCounterMode on the explicit-matmul attention (the form the
    ONNX/TFLite graphs contain): convolutions, linear layers, QK^T and attention x V.
    Normalisation, activations and softmax are not multiply-accumulates and not counted.
    """
    from torch.utils.flop_counter import FlopCounterMode

    was = [m.impl for m in model.modules() if hasattr(m, "impl")]
    model.set_attention("math")
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(*example_inputs())
    finally:
        for m, impl in zip([m for m in model.modules() if hasattr(m, "impl")], was):
            m.impl = impl
    return counter.get_total_flops() // 2


def remove_heads(model: UNet, head_ratio: float, choice: Mapping[str, Sequence[int]] | None = None) -> dict[str, list[int]]:
    """Remove round(head_ratio x heads) whole heads (at least one kept) from every applied attention block:
    the heads `choice` names per block (compress/heads.py), else the lowest by summed L2 magnitude.
    A head goes inside its attention only: its query, key and value rows of the input projection and
    its columns of the output projection; the block's width, the residual stream every other layer
    reads, stays (models/blocks.attention_layer). The model keeps what the removed heads did not
    do exactly: silencing those heads and removing them give the same eps.
    Returns block name -> the heads removed (indices in the block as it was)."""
    removed: dict[str, list[int]] = {}
    for name, block in applied_blocks(model).items():
        mha = block.mha
        heads, d = mha.num_heads, mha.head_dim
        inner = heads * d
        drop = min(round(head_ratio * heads), heads - 1)
        if drop == 0:
            continue
        if choice is not None:
            weakest = sorted(int(h) for h in choice.get(name, ()))
            if len(weakest) != drop or len(set(weakest)) != drop or not all(0 <= h < heads for h in weakest):
                raise InvalidInput(
                    f"{name}: --head-ratio {head_ratio:g} removes {drop} of its {heads} heads, but the choice names {weakest}"
                )
        else:
            weakest = sorted(head_magnitudes(mha).argsort()[:drop].tolist())
        kept = [h for h in range(heads) if h not in weakest]
        cols = [h * d + i for h in kept for i in range(d)]
        rows = [part * inner + c for part in range(3) for c in cols]
        weight = mha.in_proj_weight
        new = attention_layer(mha.embed_dim, len(kept), d, mha.batch_first).to(weight.device, weight.dtype)
        with torch.no_grad():
            new.in_proj_weight.copy_(weight[rows])
            new.in_proj_bias.copy_(mha.in_proj_bias[rows])
            new.out_proj.weight.copy_(mha.out_proj.weight[:, cols])
            new.out_proj.bias.copy_(mha.out_proj.bias)
        block.mha = new
        removed[name] = weakest
    return removed


def head_magnitudes(mha: nn.MultiheadAttention) -> torch.Tensor:
    """Per head: the L2 norms of its query, key and value rows and of its output-projection columns, summed."""
    heads, d = mha.num_heads, mha.head_dim
    qkv = mha.in_proj_weight.detach().view(3, heads, d, -1)
    out = mha.out_proj.weight.detach().view(-1, heads, d)
    return qkv.pow(2).sum((2, 3)).sqrt().sum(0) + out.pow(2).sum((0, 2)).sqrt()


def magnitude_heads(unet: UNet, head_ratio: float) -> dict[str, list[int]]:
    """Block name -> the heads remove_heads takes by magnitude (what prune_channels removes without a choice)."""
    return remove_heads(copy.deepcopy(unet).float().eval(), head_ratio)


def prune_channels(unet: UNet, ratio: float, head_ratio: float = 0.0, heads: Mapping[str, Sequence[int]] | None = None) -> UNet:
    """A pruned copy: `ratio` of the channels of every group, then `head_ratio` of every attention
    block's heads (those `heads` names per block, else the lowest by magnitude)."""
    for name, value in (("channel pruning ratio", ratio), ("head pruning ratio", head_ratio)):
        if not 0.0 <= value < 1.0:
            raise InvalidInput(f"{name} must be in [0, 1), got {value}")
    model = copy.deepcopy(unet).float().eval()
    if ratio:
        prune_all_channels(model, ratio)
    if head_ratio:
        remove_heads(model, head_ratio, heads)
    model.config = UNetConfig(**{**model.config.to_dict(), "widths": model.widths()})
    return model


def prune_all_channels(model: UNet, ratio: float) -> None:
    """Remove `ratio` of the channels of every group, in place (torch-pruning, L2 magnitude)."""
    import torch_pruning as tp

    blocks = {m.mha for m in applied_blocks(model).values()}
    if any(m.num_heads * m.head_dim != m.embed_dim for m in blocks):
        raise InvalidInput(
            "this model's attention heads were already removed; prune channels and heads in one call, "
            "from the unpruned checkpoint"
        )
    impls = {name: m.impl for name, m in model.named_modules() if hasattr(m, "impl")}
    model.set_attention("original")  # nn.MultiheadAttention: a module torch-pruning knows
    heads = {m: m.num_heads for m in model.modules() if isinstance(m, nn.MultiheadAttention)}
    pruner = tp.pruner.MagnitudePruner(
        model,
        example_inputs=example_inputs(),
        importance=tp.importance.MagnitudeImportance(p=2),
        pruning_ratio=ratio,
        ignored_layers=[model.label_emb, model.outc],
        in_channel_groups=heads,
        out_channel_groups=heads,
    )
    pruner.step()
    for name, impl in impls.items():
        model.get_submodule(name).impl = impl
