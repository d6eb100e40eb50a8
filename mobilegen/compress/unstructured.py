"""L1 unstructured pruning of every Conv2d and Linear weight, made permanent.

Zeros in dense kernels do not make them faster: this shrinks compressed (gzip) size
only, and the report says so (weights_gzip_size measures it).
"""

from __future__ import annotations

import copy
import gzip

import torch
from torch import nn
from torch.nn.utils import prune

from mobilegen.errors import InvalidInput
from mobilegen.models import UNet


def prunable(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def prune_l1(unet: UNet, amount: float) -> UNet:
    """A pruned copy: each layer loses the `amount` fraction of its smallest |w| (0 = unchanged copy)."""
    if not 0.0 <= amount < 1.0:
        raise InvalidInput(f"prune amount must be in [0, 1), got {amount}")
    pruned = copy.deepcopy(unet)
    if amount == 0:
        return pruned
    for _, module in prunable(pruned):
        prune.l1_unstructured(module, name="weight", amount=amount)
        prune.remove(module, "weight")
    # nn.MultiheadAttention's input projection is a bare Parameter, not a Linear: prune it too.
    for name, module in pruned.named_modules():
        if isinstance(module, nn.MultiheadAttention):
            prune.l1_unstructured(module, name="in_proj_weight", amount=amount)
            prune.remove(module, "in_proj_weight")
    return pruned.eval()


def sparsity(unet: UNet) -> dict:
    layers = {}
    zeros = total = 0
    weights = [(f"{n}.weight", m.weight) for n, m in prunable(unet)]
    weights += [
        (f"{n}.in_proj_weight", m.in_proj_weight) for n, m in unet.named_modules() if isinstance(m, nn.MultiheadAttention)
    ]
    for name, w in sorted(weights):
        z, n = int((w == 0).sum()), w.numel()
        layers[name] = round(z / n, 4)
        zeros, total = zeros + z, total + n
    return {"global": round(zeros / total, 4), "layers": layers, "parameters_pruned": total}


@torch.no_grad()
def weights_gzip_size(unet: UNet, dtype: str = "float32") -> int:
    """gzip size (level 9) of every weight the network uses, stored in dtype: what pruning's zeros save."""
    raw = b"".join(
        p.detach().to(getattr(torch, dtype)).contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        for _, p in sorted(unet.state_dict().items())
    )
    return len(gzip.compress(raw, compresslevel=9, mtime=0))


@torch.no_grad()
def weights_equal(a: UNet, b: UNet) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
