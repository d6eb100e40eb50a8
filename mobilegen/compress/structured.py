"""Structured pruning: whole channels leave the UNet, so every later kernel does less work.

torch-pruning builds the dependency graph (which channels must go together: a conv's
outputs, the GroupNorm after it, the next conv's inputs, the skip concatenations,
the time-embedding projections added to them, the attention blocks on the same
stream) and removes the lowest-ranked channels of each group by L2 magnitude.

Attention, in two steps. First whole heads go (head_ratio of each block's heads:
the lowest by summed magnitude, or those a caller chose, e.g. by ablation in
compress/heads.py): on a CPU the attention of the 64x64 block is bound by its
heads x 4096 x 4096 score matrix, which narrower heads do not shrink. Then,
in the channel step, each nn.MultiheadAttention is told its head count as a channel
grouping, so every head loses the same channels at the same offsets: the heads stay
aligned and the width stays divisible by the head count. The time-embedding width (shared
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

from mobilegen.errors import InvalidInput
from mobilegen.models import UNet, UNetConfig

log = logging.getLogger(__name__)


def example_inputs(batch: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return torch.randn(batch, 3, 64, 64, generator=gen), torch.full((batch,), 500.0), torch.zeros(batch, dtype=torch.long)


def count_params(model: nn.Module, only_used: bool = True) -> int:
    """Parameters; with only_used, those the forward pass touches (v2 carries unused modules)."""
    if not only_used:
        return sum(p.numel() for p in model.parameters())
    used: set[int] = set()
    hooks = [m.register_forward_hook(lambda mod, *_: used.update(id(p) for p in mod.parameters(recurse=False)))
             for m in model.modules()]  # fmt: skip
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
    Returns block name -> the heads removed (indices in the unpruned block)."""
    import torch_pruning as tp

    graph = tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs())
    importance = tp.importance.MagnitudeImportance(p=2)
    removed: dict[str, list[int]] = {}
    for name, mha in [(n, m) for n, m in model.named_modules() if isinstance(m, nn.MultiheadAttention) and m in graph.module2node]:
        block = name.removesuffix(".mha")
        drop = min(round(head_ratio * mha.num_heads), mha.num_heads - 1)
        if drop == 0:
            continue
        d = mha.head_dim
        if choice is not None:
            weakest = sorted(int(h) for h in choice.get(block, ()))
            if len(weakest) != drop or len(set(weakest)) != drop or not all(0 <= h < mha.num_heads for h in weakest):
                raise InvalidInput(f"{block}: --head-ratio {head_ratio:g} removes {drop} of its {mha.num_heads} heads, "
                                   f"but the choice names {weakest}")  # fmt: skip
        else:
            scores = importance(graph.get_pruning_group(mha, tp.prune_multihead_attention_out_channels, list(range(mha.embed_dim))))
            weakest = sorted(scores.view(mha.num_heads, d).sum(1).argsort()[:drop].tolist())
        idxs = [h * d + i for h in weakest for i in range(d)]
        graph.get_pruning_group(mha, tp.prune_multihead_attention_out_channels, idxs).prune()
        mha.num_heads -= drop  # torch-pruning keeps the head count and narrows the heads; we removed heads
        mha.head_dim = mha.embed_dim // mha.num_heads
        removed[block] = weakest
    return removed


def magnitude_heads(unet: UNet, head_ratio: float) -> dict[str, list[int]]:
    """Block name -> the heads remove_heads takes by magnitude (what prune_channels removes without a choice)."""
    model = copy.deepcopy(unet).float().eval().set_attention("original")
    return remove_heads(model, head_ratio)


def prune_channels(unet: UNet, ratio: float, head_ratio: float = 0.0, heads: Mapping[str, Sequence[int]] | None = None) -> UNet:
    """A pruned copy: `head_ratio` of every attention block's heads (those `heads` names per block,
    else the lowest by magnitude), then `ratio` of the channels of every group."""
    for name, value in (("channel pruning ratio", ratio), ("head pruning ratio", head_ratio)):
        if not 0.0 <= value < 1.0:
            raise InvalidInput(f"{name} must be in [0, 1), got {value}")
    import torch_pruning as tp

    model = copy.deepcopy(unet).float().eval()
    if ratio == 0 and head_ratio == 0:
        return model
    impls = {name: m.impl for name, m in model.named_modules() if hasattr(m, "impl")}
    model.set_attention("original")  # nn.MultiheadAttention: a module torch-pruning knows
    if head_ratio:
        remove_heads(model, head_ratio, heads)
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
    if ratio:
        pruner.step()
    for name, impl in impls.items():
        model.get_submodule(name).impl = impl
    model.config = UNetConfig(**{**model.config.to_dict(), "widths": model.widths()})
    return model
