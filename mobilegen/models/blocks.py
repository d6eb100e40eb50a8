"""Building blocks of the original MobileGen UNets, written to export cleanly.

Module and parameter names match the original checkpoints (``double_conv``,
``maxpool_conv``, ``emb_layer``, ``mha``, ``ln``, ``ff_self``), so their
``state_dict`` files load with ``strict=True``. The arithmetic follows the
original forward pass; only the formulation is export-friendly: broadcasting
instead of ``repeat`` by runtime shape, and no op whose output shape depends on
data.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from mobilegen.errors import InvalidInput

# "sdpa": fused scaled_dot_product_attention (fastest in PyTorch).
# "math": explicit matmul/softmax, what the ONNX and TFLite graphs contain.
# "original": nn.MultiheadAttention as the original computed it, including the
#             averaged attention weights it returned and then discarded.
AttentionImpl = Literal["sdpa", "math", "original"]
ATTENTION_IMPLS: tuple[str, ...] = ("sdpa", "math", "original")
NUM_HEADS = 4


class DoubleConv(nn.Module):
    """conv3x3 -> GroupNorm(1) -> GELU -> conv3x3 -> GroupNorm(1) [-> residual GELU]."""

    def __init__(self, in_ch: int, out_ch: int, mid_ch: int | None = None, residual: bool = False):
        super().__init__()
        mid_ch = mid_ch or out_ch
        self.residual = residual
        self.double_conv = nn.Sequential(
            nn.Conv2d(in_ch, mid_ch, kernel_size=3, padding=1, bias=False),
            nn.GroupNorm(1, mid_ch),
            nn.GELU(),
            nn.Conv2d(mid_ch, out_ch, kernel_size=3, padding=1, bias=False),
            nn.GroupNorm(1, out_ch),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.residual:
            return F.gelu(x + self.double_conv(x))
        return self.double_conv(x)


def _conv_stack(in_ch: int, out_ch: int, residual: bool, mid_ch: int | None = None) -> list[nn.Module]:
    """The teacher puts a residual DoubleConv before the main one; students do not."""
    main = DoubleConv(in_ch, out_ch, mid_ch)
    return [DoubleConv(in_ch, in_ch, residual=True), main] if residual else [main]


class Down(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, residual: bool):
        super().__init__()
        self.maxpool_conv = nn.Sequential(nn.MaxPool2d(2), *_conv_stack(in_ch, out_ch, residual))
        self.emb_layer = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, out_ch))

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return self.maxpool_conv(x) + self.emb_layer(emb)[:, :, None, None]


class Up(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, residual: bool):
        super().__init__()
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
        self.conv = nn.Sequential(*_conv_stack(in_ch, out_ch, residual, mid_ch=in_ch // 2))
        self.emb_layer = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, out_ch))

    def forward(self, x: torch.Tensor, skip: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        x = torch.cat([skip, self.up(x)], dim=1)
        return self.conv(x) + self.emb_layer(emb)[:, :, None, None]


def attention_layer(embed: int, heads: int, head_dim: int | None = None, batch_first: bool = True) -> nn.MultiheadAttention:
    """nn.MultiheadAttention over `embed` channels with `heads` heads of `head_dim` (embed // heads
    by default). With fewer heads than the width holds (heads x head_dim < embed: heads removed
    by compress/structured.remove_heads, the residual stream kept), the input projection has
    3 x heads x head_dim rows and the output projection heads x head_dim inputs; the state-dict
    keys stay those of nn.MultiheadAttention. Such a layer runs through SelfAttention's own
    attention (sdpa or math), not nn.MultiheadAttention.forward."""
    if head_dim is None:
        if embed % heads:
            raise InvalidInput(f"attention widths must be (embed, heads) with embed divisible by heads, got {[embed, heads]}")
        return nn.MultiheadAttention(embed, heads, batch_first=batch_first)
    if heads * head_dim > embed:
        raise InvalidInput(
            f"attention widths (embed, heads, head_dim) need heads x head_dim <= embed, got {[embed, heads, head_dim]}"
        )
    mha = nn.MultiheadAttention(embed, 1, batch_first=batch_first)
    inner = heads * head_dim
    if inner < embed:
        mha.in_proj_weight = nn.Parameter(torch.empty(3 * inner, embed))
        mha.in_proj_bias = nn.Parameter(torch.zeros(3 * inner))
        mha.out_proj = nn.Linear(inner, embed)
        nn.init.xavier_uniform_(mha.in_proj_weight)
    mha.num_heads, mha.head_dim = heads, head_dim
    return mha


class SelfAttention(nn.Module):
    """Attention over the H*W positions, then a feed-forward block, both residual."""

    def __init__(self, channels: int, size: int):
        super().__init__()
        self.channels, self.size = channels, size
        self.mha = nn.MultiheadAttention(channels, NUM_HEADS, batch_first=True)
        self.ln = nn.LayerNorm([channels])
        self.ff_self = nn.Sequential(
            nn.LayerNorm([channels]),
            nn.Linear(channels, channels),
            nn.GELU(),
            nn.Linear(channels, channels),
        )
        self.impl: AttentionImpl = "sdpa"
        # Bounded attention (models/budget.py chooses these): score rows per chunk and heads
        # per group, 0 = all at once. Each query row's scores are the same numbers either way.
        self.query_chunk = 0
        self.head_group = 0

    def _attend(self, h: torch.Tensor) -> torch.Tensor:
        heads, d = self.mha.num_heads, self.mha.head_dim
        inner = heads * d  # the embedding width, or less once heads were removed (attention_layer)
        if self.impl == "original" and inner == self.mha.embed_dim:
            return self.mha(h, h, h)[0]
        n, seq, _ = h.shape
        qkv = F.linear(h, self.mha.in_proj_weight, self.mha.in_proj_bias)
        # [N, L, 3 inner] -> 3 x [N, heads, L, d]: column slices, then 4-D reshapes and permutes, every
        # shape static (a 5-D split exports as Squeeze ops that TFLite runs as dynamic reshapes,
        # outside XNNPACK, each one a delegate partition boundary).
        q, k, v = (qkv[..., i * inner : (i + 1) * inner].reshape(n, seq, heads, d).permute(0, 2, 1, 3) for i in range(3))
        out = self._bounded(q, k, v)
        out = out.permute(0, 2, 1, 3).reshape(n, seq, inner)
        return self.mha.out_proj(out)

    def _bounded(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Attention of q [N, heads, L, d] by head groups and query chunks, so that no score
        tensor is larger than [N, head_group, query_chunk, L]."""
        heads, seq, d = q.shape[1], q.shape[2], q.shape[3]
        group, chunk = self.head_group or heads, self.query_chunk or seq
        if self.impl == "math":
            q, k = q * d**-0.5, k.transpose(-1, -2)  # once, before the chunks
        if group >= heads and chunk >= seq:
            return self._block(q, k, v)
        groups = []
        for h0 in range(0, heads, group):
            hs = slice(h0, min(h0 + group, heads))
            kh, vh = k[:, hs], v[:, hs]
            rows = [self._block(q[:, hs, s : s + chunk], kh, vh) for s in range(0, seq, chunk)]
            groups.append(concat(rows, dim=2))
        return concat(groups, dim=1)

    def _block(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if self.impl != "math":  # sdpa, or "original" on a block whose heads were removed
            return F.scaled_dot_product_attention(q, k, v)
        return torch.softmax(q @ k, dim=-1) @ v  # q pre-scaled, k pre-transposed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, hgt, wid = x.shape
        tokens = x.reshape(n, c, hgt * wid).transpose(1, 2)
        tokens = self._attend(self.ln(tokens)) + tokens
        tokens = self.ff_self(tokens) + tokens
        return tokens.transpose(1, 2).reshape(n, c, hgt, wid)


CONCAT_FANIN = 4  # XNNPACK's concatenation takes at most a few inputs; a wider one leaves the delegate


def concat(parts: list[torch.Tensor], dim: int) -> torch.Tensor:
    """torch.cat as a tree of at most CONCAT_FANIN inputs per node (the same values)."""
    while len(parts) > 1:
        parts = [
            torch.cat(parts[i : i + CONCAT_FANIN], dim=dim) if len(parts[i : i + CONCAT_FANIN]) > 1 else parts[i]
            for i in range(0, len(parts), CONCAT_FANIN)
        ]
    return parts[0]


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of float timesteps [N] -> [N, dim] (sin half, then cos half)."""
    inv_freq = 1.0 / (10000 ** (torch.arange(0, dim, 2, device=t.device).float() / dim))
    angles = t.float()[:, None] * inv_freq[None, :]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)
