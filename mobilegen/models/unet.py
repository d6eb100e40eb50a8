"""The three MobileGen UNets: teacher, student v1 and student v2.

All three are built from the same blocks; they differ in whether Down/Up carry a
residual DoubleConv, in the bottleneck widths, and in which modules the forward
pass applies. Modules that an architecture never applies are still created,
because the original checkpoints contain them (strict loading needs them).

A structurally pruned UNet has narrower layers. ``UNetConfig.widths`` describes
them, layer by layer, as the constructor arguments that differ from the
architecture's defaults (``{"inc.double_conv.0": [3, 48], "sa1.mha": [128, 2, 32], ...}``;
attention is (embed, heads) or, with heads removed inside it, (embed, heads, head_dim));
the model is built at the default widths and those layers are rebuilt at theirs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace

import torch
from torch import nn

from mobilegen.contract.spec import ARCHS
from mobilegen.errors import InvalidInput
from mobilegen.models.blocks import (
    ATTENTION_IMPLS,
    AttentionImpl,
    DoubleConv,
    Down,
    SelfAttention,
    Up,
    attention_layer,
    timestep_embedding,
)

Widths = tuple[tuple[str, tuple[int, ...]], ...]
RESIZABLE = (nn.Conv2d, nn.Linear, nn.GroupNorm, nn.LayerNorm, nn.MultiheadAttention)


def layer_dims(module: nn.Module) -> tuple[int, ...]:
    """The widths a layer is built from: (in, out) for conv/linear, (embed, heads[, head_dim]) for attention, (channels,) for norms."""
    if isinstance(module, nn.Conv2d):
        return (module.in_channels, module.out_channels)
    if isinstance(module, nn.Linear):
        return (module.in_features, module.out_features)
    if isinstance(module, nn.GroupNorm):
        return (module.num_channels,)
    if isinstance(module, nn.LayerNorm):
        return tuple(module.normalized_shape)
    # nn.MultiheadAttention (its out_proj follows it); head_dim only once heads were removed inside it
    if module.num_heads * module.head_dim == module.embed_dim:
        return (module.embed_dim, module.num_heads)
    return (module.embed_dim, module.num_heads, module.head_dim)


def resized_layer(module: nn.Module, dims: tuple[int, ...]) -> nn.Module:
    """A fresh layer like `module` (kernel, bias, groups kept) with the widths `dims`."""
    if isinstance(module, nn.Conv2d):
        return nn.Conv2d(dims[0], dims[1], module.kernel_size, padding=module.padding, bias=module.bias is not None)
    if isinstance(module, nn.Linear):
        return nn.Linear(dims[0], dims[1], bias=module.bias is not None)
    if isinstance(module, nn.GroupNorm):
        return nn.GroupNorm(module.num_groups, dims[0], eps=module.eps)
    if isinstance(module, nn.LayerNorm):
        return nn.LayerNorm(list(dims), eps=module.eps)
    if len(dims) not in (2, 3):
        raise InvalidInput(f"attention widths must be (embed, heads) or (embed, heads, head_dim), got {list(dims)}")
    return attention_layer(*dims, batch_first=module.batch_first)


def resizable_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Every layer whose width a pruned model may change (out_proj belongs to its attention)."""
    return {name: m for name, m in model.named_modules() if isinstance(m, RESIZABLE) and not name.endswith("mha.out_proj")}


@dataclass(frozen=True)
class UNetConfig:
    arch: str = "student_v2"
    num_classes: int = 10
    time_dim: int = 256
    image_size: int = 64
    widths: Widths = ()  # pruned layers: name -> dims (see layer_dims); () = the original widths

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise InvalidInput(f"unknown architecture {self.arch!r}; expected one of {', '.join(ARCHS)}")
        if self.image_size != 64:
            raise InvalidInput("the MobileGen UNets are defined for 64x64 images only")
        # Accept the dict that to_dict writes (and JSON reads back) as well as pairs.
        pairs = self.widths.items() if isinstance(self.widths, Mapping) else self.widths
        widths = tuple(sorted((str(name), tuple(int(d) for d in dims)) for name, dims in pairs))
        if any(d < 1 for _, dims in widths for d in dims):
            raise InvalidInput(f"layer widths must be >= 1: {dict(widths)}")
        object.__setattr__(self, "widths", widths)

    def to_dict(self) -> dict:
        out = asdict(self)
        out.pop("widths")
        if self.widths:  # unpruned configs stay exactly as before
            out["widths"] = {name: list(dims) for name, dims in self.widths}
        return out


class UNet(nn.Module):
    """eps = UNet(x, t, y): x [N,3,64,64], t [N] timestep index, y [N] class (-1: none)."""

    def __init__(self, config: UNetConfig = UNetConfig()):
        super().__init__()
        self.config = config
        teacher = config.arch == "teacher"
        bot_mid = 512 if teacher else 256
        bot3_out = {"teacher": 256, "student_v1": 256, "student_v2": 128}[config.arch]
        e = config.time_dim
        self.inc = DoubleConv(3, 64)
        self.down1 = Down(64, 128, e, teacher)
        self.sa1 = SelfAttention(128, 32)
        self.down2 = Down(128, 256, e, teacher)
        self.sa2 = SelfAttention(256, 16)
        self.down3 = Down(256, 256, e, teacher)
        self.sa3 = SelfAttention(256, 8)
        self.bot1 = DoubleConv(256, bot_mid)
        if teacher:
            self.bot2 = DoubleConv(512, 512)
        self.bot3 = DoubleConv(bot_mid, bot3_out)
        self.up1 = Up(512, 128, e, teacher)
        self.sa4 = SelfAttention(128, 16)
        self.up2 = Up(256, 64, e, teacher)
        self.sa5 = SelfAttention(64, 32)
        self.up3 = Up(128, 64, e, teacher)
        self.sa6 = SelfAttention(64, 64)
        self.outc = nn.Conv2d(64, 3, kernel_size=1)
        self.label_emb = nn.Embedding(config.num_classes, e)
        self._resize(dict(config.widths))

    def _resize(self, widths: dict[str, tuple[int, ...]]) -> None:
        layers = resizable_layers(self)
        unknown = sorted(set(widths) - set(layers))
        if unknown:
            raise InvalidInput(f"widths name layers that {self.arch} does not have: {', '.join(unknown)}")
        for name, dims in widths.items():
            parent, _, child = name.rpartition(".")
            self.get_submodule(parent).register_module(child, resized_layer(layers[name], dims))

    def widths(self) -> Widths:
        """The layers whose widths differ from the architecture's defaults (what UNetConfig.widths holds)."""
        with torch.device("meta"):
            original = UNet(replace(self.config, widths=()))
        default = {name: layer_dims(m) for name, m in resizable_layers(original).items()}
        return tuple((name, layer_dims(m)) for name, m in resizable_layers(self).items() if layer_dims(m) != default[name])

    @property
    def arch(self) -> str:
        return self.config.arch

    def set_attention(self, impl: AttentionImpl) -> "UNet":
        """Choose how attention is computed; all three give the same numbers."""
        if impl not in ATTENTION_IMPLS:
            raise InvalidInput(f"unknown attention {impl!r}; expected one of {', '.join(ATTENTION_IMPLS)}")
        for module in self.modules():
            if isinstance(module, SelfAttention):
                module.impl = impl
        return self

    def embed(self, t: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        emb = timestep_embedding(t, self.config.time_dim)
        if y is None:
            return emb
        # y = -1 means "no label" (the unconditional pass of guidance). A gather at a
        # clamped index times a 0/1 mask keeps the graph free of data-dependent shapes.
        y = y.long()
        has_label = (y >= 0).to(emb.dtype)[:, None]
        return emb + self.label_emb(y.clamp(min=0)) * has_label

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        emb = self.embed(t, y)
        x1 = self.inc(x)
        x2 = self.sa1(self.down1(x1, emb))
        x3 = self.sa2(self.down2(x2, emb))
        if self.arch == "student_v2":
            h = self.bot3(self.bot1(x3))
            h = self.sa5(self.up2(h, x2, emb))
        else:
            x4 = self.sa3(self.down3(x3, emb))
            h = self.bot1(x4)
            if self.arch == "teacher":
                h = self.bot3(self.bot2(h))
            h = self.sa4(self.up1(h, x3, emb))
            h = self.sa5(self.up2(h, x2, emb))
        h = self.sa6(self.up3(h, x1, emb))
        return self.outc(h)


def build_unet(arch: str, **overrides) -> UNet:
    return UNet(UNetConfig(arch=arch, **overrides))
