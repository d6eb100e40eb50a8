"""The image-folder dataset: CIFAR-10 class order, normalised seeded augmentation, and bad
folders or images named."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from mobilegen.cli import main_cli
from mobilegen.train import DataError, ImageFolder, write_demo_folder


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_demo_folder(tmp_path_factory.mktemp("data") / "cifar", per_class=2)


def test_class_order_is_cifar10s_and_images_are_normalised(data):
    ds = ImageFolder(data / "train")
    assert [ds.items[i][1] for i in range(0, len(ds), 2)] == list(range(10))
    assert ds.items[0][0].parent.name == "airplane" and ds.items[-1][0].parent.name == "truck"
    x, y = ds[(0, 123)]
    assert x.shape == (3, 64, 64) and -1 <= x.min() and x.max() <= 1
    assert torch.equal(x, ds[(0, 123)][0]) and not torch.equal(x, ds[(0, 124)][0]), "augmentation is seeded per item"


@pytest.mark.parametrize(
    "break_it, message",
    [
        (lambda root: shutil.rmtree(root / "train" / "cat"), "missing class folders: cat"),
        (lambda root: (root / "train" / "unicorn").mkdir(), "unexpected folders: unicorn"),
        (lambda root: [p.unlink() for p in (root / "train" / "dog").iterdir()], "dog: no images"),
    ],
    ids=["missing", "extra", "empty"],
)
def test_bad_class_folders_are_named(data, tmp_path, break_it, message):
    root = tmp_path / "d"
    shutil.copytree(data, root)
    break_it(root)
    with pytest.raises(DataError, match=message):
        ImageFolder(root / "train")
    res = CliRunner().invoke(main_cli, ["train", "--data", str(root), "-o", str(tmp_path / "run"), "--max-steps", "1"])
    assert res.exit_code == 2 and message in res.stderr and not (tmp_path / "run").exists()


def test_unreadable_images_skip_and_count_or_stop(data, tmp_path):
    root = tmp_path / "d"
    shutil.copytree(data, root)
    (root / "train" / "frog" / "broken.png").write_bytes(b"\x89PNG not really")
    ds = ImageFolder(root / "train", on_bad_image="skip")
    assert len(ds.skipped) == 1 and len(ds) == 20
    with pytest.raises(DataError, match="broken.png: unreadable image"):
        ImageFolder(root / "train", on_bad_image="stop")
