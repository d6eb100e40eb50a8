"""Model zoo: the three original MobileGen UNets."""

from mobilegen.models.unet import ARCHS, UNet, UNetConfig, build_unet

__all__ = ["ARCHS", "UNet", "UNetConfig", "build_unet"]
