"""Which attention heads to remove: by what they do (ablation) or by weight norm (magnitude).

Ablation (Michel et al. 2019, "Are Sixteen Heads Really Better than One?"): a head's
importance is the output error, MSE of eps against the intact model on the given
inputs (the teacher's own sampling trajectories, in practice), when that head alone
is silenced. Silencing head h of a block means zeroing the columns h*d..(h+1)*d of its
output projection: the head's attention output then adds nothing to the residual
stream, whatever its queries, keys and values. The heads with the smallest error go.
Removing a head (structured.remove_heads) takes exactly that away and nothing else (the
block keeps its width), so a head's ablation score is what its removal costs; the scores
of several heads do not add exactly, so the prune summary (train/prune.py) reports what
each choice's removal costs on the parity cases, side by side.

Magnitude: the L2 norms of the head's query, key and value rows of the input projection
and of its output-projection columns, summed (structured.head_magnitudes).
"""

from __future__ import annotations

import copy
from typing import Literal

import torch
from torch import nn

from mobilegen.errors import InvalidInput
from mobilegen.models.blocks import SelfAttention

HeadImportance = Literal["ablation", "magnitude"]
HEAD_IMPORTANCE: tuple[str, ...] = ("ablation", "magnitude")


def applied_blocks(model: nn.Module) -> dict[str, SelfAttention]:
    """The attention blocks the forward pass uses, in call order (v2 never applies sa3, sa4)."""
    called: list[str] = []
    names = {m: name for name, m in model.named_modules() if isinstance(m, SelfAttention)}
    hooks = [m.register_forward_hook(lambda mod, *_: called.append(names[mod])) for m in names]
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, 64, 64), torch.full((1,), 500.0), torch.zeros(1, dtype=torch.long))
    finally:
        for h in hooks:
            h.remove()
    return {name: model.get_submodule(name) for name in dict.fromkeys(called)}


@torch.no_grad()
def eps_of(model: nn.Module, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, batch: int = 16) -> torch.Tensor:
    """The model's eps on every input, in batches (CPU tensors in, CPU tensor out)."""
    device = next(model.parameters()).device
    parts = [
        model(x[i : i + batch].to(device), t[i : i + batch].to(device), y[i : i + batch].to(device)).float().cpu()
        for i in range(0, len(t), batch)
    ]
    return torch.cat(parts)


@torch.no_grad()
def head_ablation_scores(
    model: nn.Module, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, batch: int = 16
) -> dict[str, list[float]]:
    """Block name -> per head, MSE(eps with that head silenced, eps of the intact model) over the inputs."""
    if len(t) == 0:
        raise InvalidInput("head ablation needs at least one input")
    work = copy.deepcopy(model).eval()  # the caller's model is never touched
    reference = eps_of(work, x, t, y, batch)
    scores: dict[str, list[float]] = {}
    for name, block in applied_blocks(work).items():
        weight, d = block.mha.out_proj.weight, block.mha.head_dim
        scores[name] = []
        for h in range(block.mha.num_heads):
            kept = weight[:, h * d : (h + 1) * d].clone()
            weight[:, h * d : (h + 1) * d] = 0
            try:
                scores[name].append(float(torch.mean((eps_of(work, x, t, y, batch) - reference) ** 2)))
            finally:
                weight[:, h * d : (h + 1) * d] = kept
    return scores


def heads_to_drop(model: nn.Module, head_ratio: float) -> dict[str, int]:
    """Block name -> how many whole heads go: round(head_ratio x heads), at least one kept."""
    return {name: min(round(head_ratio * b.mha.num_heads), b.mha.num_heads - 1) for name, b in applied_blocks(model).items()}


def weakest_heads(scores: dict[str, list[float]], drop: dict[str, int]) -> dict[str, list[int]]:
    """Block name -> the `drop[name]` heads of smallest score (ties: the lower index), sorted."""
    return {name: sorted(sorted(range(len(s)), key=lambda h: (s[h], h))[: drop[name]]) for name, s in scores.items()}
