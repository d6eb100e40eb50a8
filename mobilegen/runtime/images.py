"""uint8 image tensors -> image files (a grid when there are several), in the format the
file name's extension names: PNG (lossless, the default everywhere), JPEG or WebP."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import torch

from mobilegen.errors import InvalidInput
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


FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}


def image_format(path: str | Path) -> str:
    """The PIL format the extension names; InvalidInput for any other extension (or none)."""
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise InvalidInput(
            f"{path}: cannot tell the image format from {suffix or 'no extension'!r}; "
            f"name the file with one of {', '.join(FORMATS)}"
        )
    return FORMATS[suffix]


def image_bytes(images: torch.Tensor, image_format: str = "PNG", cols: int | None = None) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    options = {"quality": 95} if image_format in ("JPEG", "WEBP") else {}
    Image.fromarray(grid(images, cols=cols)).save(buf, format=image_format, **options)
    return buf.getvalue()


def png_bytes(images: torch.Tensor, cols: int | None = None) -> bytes:
    return image_bytes(images, "PNG", cols)


def save_image(images: torch.Tensor, path: str | Path, cols: int | None = None) -> Path:
    """An image file of the format its extension names (image_format)."""
    data = image_bytes(images, image_format(path), cols)
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))
