"""The thin module that is exported: (x, t, y) -> eps in the spec's layout."""

from __future__ import annotations

import copy

import torch
from torch import nn

from mobilegen.contract.defaults import ATTENTION_SPLIT
from mobilegen.contract.spec import DenoiserSpec
from mobilegen.export.fp16safe import group_norm_peaks, scale_group_norms
from mobilegen.models import UNet
from mobilegen.models.budget import set_bounded_attention


class ExportedDenoiser(nn.Module):
    def __init__(self, unet: UNet, spec: DenoiserSpec, max_tensor_mb: float | None = None, split: str = ATTENTION_SPLIT):
        super().__init__()
        # A private copy: export switches attention to its explicit form, bounded to
        # max_tensor_mb per tensor, split per head or across all heads (models/budget.py; None:
        # every block at once).
        # GroupNorms whose inputs would overflow float16 divide them first (export/fp16safe.py).
        self.unet = copy.deepcopy(unet).eval().set_attention("sdpa")
        self.group_norm_scales = scale_group_norms(self.unet, group_norm_peaks(self.unet))
        self.unet.set_attention("math")
        self.attention_plan = set_bounded_attention(self.unet, spec.batch, max_tensor_mb, split)
        self.nhwc = spec.layout == "NHWC"

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.nhwc:
            x = x.permute(0, 3, 1, 2)
        eps = self.unet(x, t, y)
        return eps.permute(0, 2, 3, 1) if self.nhwc else eps
