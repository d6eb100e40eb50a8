"""Compression that changes the network itself: structured (channel) pruning and its cost model."""

from mobilegen.compress.structured import count_macs, count_params, prune_channels

__all__ = ["count_macs", "count_params", "prune_channels"]
