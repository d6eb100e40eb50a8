"""uint8 image tensors -> PNG files (a grid when there are several)."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import torch

from mobilegen.files import atomic_write


def grid(images: torch.Tensor, pad: int = 2, cols: int | None = None) -> np.ndarray:
    """uint8 [N,3,H,W] -> uint8 [H', W', 3]: rows of `cols` images (default: near-square)."""
    n, c, h, w = images.shape
    cols = cols or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    if n == 1:
        return images[0].permute(1, 2, 0).numpy()
    canvas = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), 255, dtype=np.uint8)
    for i in range(n):
        r, k = divmod(i, cols)
        y0, x0 = pad + r * (h + pad), pad + k * (w + pad)
        canvas[y0 : y0 + h, x0 : x0 + w] = images[i].permute(1, 2, 0).numpy()
    return canvas


def png_bytes(images: torch.Tensor, cols: int | None = None) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(grid(images, cols=cols)).save(buf, format="PNG")
    return buf.getvalue()


def save_png(images: torch.Tensor, path: str | Path, cols: int | None = None) -> Path:
    data = png_bytes(images, cols)
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))
