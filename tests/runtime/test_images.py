"""uint8 tensors -> image files (runtime/images.py): the grid, and the format the extension names."""

from __future__ import annotations

import io

import pytest
import torch
from PIL import Image

from mobilegen.errors import InvalidInput
from mobilegen.runtime.images import grid, image_bytes, image_format, save_image


def images(n: int) -> torch.Tensor:
    return torch.stack([torch.full((3, 4, 4), 10 * (i + 1), dtype=torch.uint8) for i in range(n)])


def test_one_image_is_itself_and_several_make_a_padded_near_square_grid():
    assert grid(images(1)).shape == (4, 4, 3)
    g = grid(images(3))  # 2 columns, 2 rows, 2 px of white around and between
    assert g.shape == (2 * 6 + 2, 2 * 6 + 2, 3)
    assert (g[2:6, 2:6] == 10).all() and (g[2:6, 8:12] == 20).all() and (g[8:12, 2:6] == 30).all()
    assert (g[8:12, 8:12] == 255).all() and (g[0] == 255).all()
    assert grid(images(3), cols=3).shape == (6 + 2, 3 * 6 + 2, 3)


def test_the_extension_names_the_format():
    assert [image_format(n) for n in ("a.png", "b.JPG", "c.jpeg", "d.webp")] == ["PNG", "JPEG", "JPEG", "WEBP"]
    for bad in ("a.gif", "noext"):
        with pytest.raises(InvalidInput, match="cannot tell the image format"):
            image_format(bad)


def test_png_is_lossless_and_files_are_written_in_their_format(tmp_path):
    decoded = Image.open(io.BytesIO(image_bytes(images(2))))
    assert decoded.format == "PNG" and (decoded.width, decoded.height) == (2 * 6 + 2, 6 + 2)
    path = save_image(images(1), tmp_path / "x.webp")
    assert Image.open(path).format == "WEBP" and sorted(p.name for p in tmp_path.iterdir()) == ["x.webp"]
