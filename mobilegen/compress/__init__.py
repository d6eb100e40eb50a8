"""Compression that changes the network itself: structured (channel and head) pruning and its cost model."""

from mobilegen.compress.heads import HEAD_IMPORTANCE, applied_blocks, head_ablation_scores, heads_to_drop, weakest_heads
from mobilegen.compress.structured import count_macs, count_params, prune_channels

__all__ = [
    "HEAD_IMPORTANCE",
    "applied_blocks",
    "count_macs",
    "count_params",
    "head_ablation_scores",
    "heads_to_drop",
    "prune_channels",
    "weakest_heads",
]
