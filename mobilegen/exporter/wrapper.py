"""The thin module that is exported: (x, t, y) -> eps in the spec's layout."""

from __future__ import annotations

import copy

import torch
from torch import nn

from mobilegen.exporter.spec import DenoiserSpec
from mobilegen.models import UNet


class ExportedDenoiser(nn.Module):
    def __init__(self, unet: UNet, spec: DenoiserSpec):
        super().__init__()
        # A private copy: export switches attention to its explicit form.
        self.unet = copy.deepcopy(unet).eval().set_attention("math")
        self.nhwc = spec.layout == "NHWC"

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.nhwc:
            x = x.permute(0, 3, 1, 2)
        eps = self.unet(x, t, y)
        return eps.permute(0, 2, 3, 1) if self.nhwc else eps
