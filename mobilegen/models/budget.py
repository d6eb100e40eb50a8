"""Bounded attention: split every attention block so that no tensor exceeds a budget.

An attention block over L positions holds its scores, [N, heads, L, L] float32, between
QK^T, softmax and the product with V: for the 64x64 block that is 268 MB at batch 1,
twenty times everything else. Computed for a chunk of query rows and a group of heads
at a time, the scores are [N, group, chunk, L], and each query row gets exactly the
numbers it got before (softmax runs over keys, which are never split).

A block that fits whole stays whole. Otherwise the split decides (every chunk the same
shape: the row chunk is a divisor of L):
- "per-head" (the default): the largest group of heads whose every row fits, else one head
  and the largest chunk of its rows. Each chunk then multiplies against one head's K^T and
  V, which XNNPACK repacks for every BATCH_MATMUL: with 4 MB chunks of the 64x64 block that
  is 16 repacks per head instead of 64, measured 1.15x the speed of a whole step of the real
  v2 (docs/performance.md "Where a step's time goes: `profile`, and the attention split").
- "all-heads": all heads together and the largest chunk of rows; the heads are split only
  when one row of all heads is too large.
A budget smaller than the smallest plan (one row of one head) or than the largest tensor
outside attention is refused.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mobilegen.contract.defaults import ATTENTION_SPLIT, ATTENTION_SPLITS
from mobilegen.errors import InvalidInput
from mobilegen.models.blocks import SelfAttention

FLOAT_BYTES = 4
MB = 1 << 20


@dataclass(frozen=True)
class BlockPlan:
    name: str
    heads: int
    seq: int
    head_group: int
    query_chunk: int
    score_bytes: int  # the largest score tensor of the block under this plan


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def attention_blocks(unet) -> dict[str, SelfAttention]:
    return {name: m for name, m in unet.named_modules() if isinstance(m, SelfAttention)}


def plan_block(name: str, block: SelfAttention, batch: int, budget: int, split: str = ATTENTION_SPLIT) -> BlockPlan | None:
    heads, seq = block.mha.num_heads, block.size * block.size
    if split not in ATTENTION_SPLITS:
        raise InvalidInput(f"attention split {split!r}: use one of {', '.join(ATTENTION_SPLITS)}")
    groups = sorted(divisors(heads), reverse=True)
    if split == "per-head":  # whole rows for the most heads that fit, else one head in row chunks
        order = [(g, seq) for g in groups] + [(1, c) for c in sorted(divisors(seq), reverse=True)]
    else:
        order = [(g, c) for g in groups for c in sorted(divisors(seq), reverse=True)]
    for group, chunk in order:
        size = batch * group * chunk * seq * FLOAT_BYTES
        if size <= budget:
            return BlockPlan(name, heads, seq, group, chunk, size)
    return None


def largest_other_tensor(unet, batch: int) -> int:
    """Bytes of the largest tensor one forward pass makes outside the attention scores
    (measured on the fused-attention path, which never materialises scores)."""
    from torch.overrides import TorchFunctionMode

    class Largest(TorchFunctionMode):
        size = 0

        def __torch_function__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(t, torch.Tensor):
                    self.size = max(self.size, t.numel() * t.element_size())
            return out

    previous = {name: block.impl for name, block in attention_blocks(unet).items()}
    unet.set_attention("sdpa")
    size = unet.config.image_size
    x = torch.zeros(batch, 3, size, size)
    mode = Largest()
    try:
        with torch.inference_mode(), mode:
            unet(x, torch.full((batch,), 500.0), torch.zeros(batch, dtype=torch.int32))
    finally:
        for name, impl in previous.items():
            getattr(unet, name).impl = impl
    return mode.size


def min_budget(unet, batch: int) -> int:
    """The smallest feasible budget in bytes: one score row of one head, or the largest other tensor."""
    rows = [batch * b.size * b.size * FLOAT_BYTES for b in attention_blocks(unet).values()]
    return max(rows + [largest_other_tensor(unet, batch)])


def plan_attention(unet, batch: int, max_tensor_mb: float, split: str = ATTENTION_SPLIT) -> list[BlockPlan]:
    """The plan for every attention block; raises ValueError (with the smallest feasible value) if none fits."""
    budget = int(max_tensor_mb * MB)
    smallest = min_budget(unet, batch)
    if budget < smallest:
        raise InvalidInput(
            f"--max-tensor-mb {max_tensor_mb:g} cannot be met at batch {batch}: the smallest feasible "
            f"budget is {smallest / MB:.3f} MB (one row of attention scores, or the largest tensor "
            "outside attention); pass at least that"
        )
    return [plan_block(name, block, batch, budget, split) for name, block in attention_blocks(unet).items()]


def set_bounded_attention(unet, batch: int, max_tensor_mb: float | None, split: str = ATTENTION_SPLIT) -> list[BlockPlan]:
    """Apply the plan to unet in place (None: unbounded, every block at once)."""
    if max_tensor_mb is None:
        for block in attention_blocks(unet).values():
            block.head_group = block.query_chunk = 0
        return []
    plans = plan_attention(unet, batch, max_tensor_mb, split)
    for p in plans:
        block = unet.get_submodule(p.name)
        block.head_group, block.query_chunk = p.head_group, p.query_chunk
    return plans


def bound_heap(threshold: int = 1 << 20) -> bool:
    """Make glibc serve every allocation >= threshold with its own mmap, returned on free.

    Eager PyTorch frees each chunk's scores before the next chunk, but glibc's default
    (a threshold that grows to 32 MB) puts the 4 MB chunks on the heap, where the small
    outputs kept between chunks fragment it: measured on the real v2, one bounded step
    then grows the process by 280 MB, against 36 MB with this setting. Returns False where
    mallopt is not available (not glibc)."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(-3, threshold))  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return False
