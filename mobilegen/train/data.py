"""The CIFAR-10 64x64 folder layout the original trained on, checked, through a torch Dataset.

    DATA/train/<class>/*.png     (and optionally DATA/test/<class>/*.png)

Class folders must be exactly CIFAR-10's ten names; index order is CIFAR-10's
(airplane=0 ... truck=9), never the filesystem's. Augmentation as the original:
resize the short side to 80, random resized crop to 64 with scale 0.8-1.0, map to
[-1, 1]. Randomness comes from a per-item seed, so an item is the same on any
worker and after a resume.
"""

from __future__ import annotations

import json
import logging
import math
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from mobilegen.contract.labels import CIFAR10_LABELS
from mobilegen.diffusion import linear_schedule
from mobilegen.errors import MobileGenError
from mobilegen.files import check_output_folder, make_staging, publish_folder

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
OnBadImage = Literal["skip", "stop"]
DEMO_MARKER = "mobilegen-demo-data.json"  # what tells a demo-data folder from a real data set
DEMO_IMAGE = re.compile(r"^\d{4}\.png$")
VAL_TIMESTEPS = (50, 250, 500, 750, 950)


class DataError(MobileGenError):
    """The data folder does not have the expected layout or contents."""


def scan_split(root: Path) -> list[tuple[Path, int]]:
    """(file, class index) for every image under root/<class>/, with layout checks."""
    if not root.is_dir():
        raise DataError(f"{root}: not a folder; expected {root}/<class>/*.png for the ten CIFAR-10 classes")
    found = {p.name for p in root.iterdir() if p.is_dir()}
    missing = [c for c in CIFAR10_LABELS if c not in found]
    extra = sorted(found - set(CIFAR10_LABELS))
    if missing or extra:
        parts = ([f"missing class folders: {', '.join(missing)}"] if missing else []) + (
            [f"unexpected folders: {', '.join(extra)}"] if extra else []
        )
        raise DataError(f"{root}: {'; '.join(parts)}. Expected exactly: {', '.join(CIFAR10_LABELS)}")
    items = []
    for index, name in enumerate(CIFAR10_LABELS):
        files = sorted(p for p in (root / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DataError(f"{root / name}: no images ({', '.join(IMAGE_SUFFIXES)})")
        items += [(f, index) for f in files]
    return items


def _resized_crop(img, rng: np.random.Generator, size: int, scale=(0.8, 1.0), ratio=(3 / 4, 4 / 3)):
    """torchvision's RandomResizedCrop, written out (torchvision is not installable beside our torch)."""
    from PIL import Image

    w, h = img.size
    for _ in range(10):
        area = w * h * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        cw, ch = int(round(math.sqrt(area * aspect))), int(round(math.sqrt(area / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            return img.resize((size, size), Image.BILINEAR, box=(x0, y0, x0 + cw, y0 + ch))
    side = min(w, h)
    box = ((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side)
    return img.resize((size, size), Image.BILINEAR, box=box)


@dataclass
class ImageFolder(Dataset):
    """Items are (index, seed) pairs so augmentation is reproducible anywhere."""

    root: Path
    augment: bool = True
    on_bad_image: OnBadImage = "skip"
    size: int = 64
    items: list[tuple[Path, int]] = field(init=False)
    skipped: list[str] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        self.items = scan_split(self.root)
        self.items = [it for it in self.items if self._readable(it[0])]
        if not self.items:
            raise DataError(f"{self.root}: none of the images could be read")
        if self.skipped:
            log.warning("%s: skipped %d unreadable images (first: %s)", self.root, len(self.skipped), self.skipped[0])

    def _readable(self, path: Path) -> bool:
        from PIL import Image

        try:
            with Image.open(path) as img:
                img.verify()
            return True
        except Exception as exc:  # PIL raises many types for broken files
            if self.on_bad_image == "stop":
                raise DataError(f"{path}: unreadable image ({exc}); fix or remove it, or use --on-bad-image skip") from None
            self.skipped.append(str(path))
            return False

    def __len__(self) -> int:
        return len(self.items)

    def load(self, index: int, seed: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        path, label = self.items[index]
        with Image.open(path) as img:
            img = img.convert("RGB")
        short = self.size + self.size // 4  # 80 for 64, as the original's Resize(80)
        w, h = img.size
        img = img.resize((max(short, round(w * short / min(w, h))), max(short, round(h * short / min(w, h)))), Image.BILINEAR)
        if self.augment:
            img = _resized_crop(img, np.random.default_rng(seed), self.size)
        else:
            img = _resized_crop(img, np.random.default_rng(0), self.size, scale=(1.0, 1.0), ratio=(1.0, 1.0))
        x = torch.from_numpy(np.asarray(img, dtype=np.float32)).permute(2, 0, 1) / 127.5 - 1
        return x, label

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, int]:
        return self.load(*key)


class StepSampler(torch.utils.data.Sampler):
    """Batches for global steps start..end: a fresh seeded permutation each epoch.

    Batch k is a function of (seed, k) only, so a resumed run sees exactly the
    batches the uninterrupted run would have.
    """

    def __init__(self, n: int, batch_size: int, seed: int, start: int, end: int):
        self.n, self.batch_size, self.seed, self.start, self.end = n, batch_size, seed, start, end
        self.per_epoch = max(1, n // batch_size)

    def __len__(self) -> int:
        return self.end - self.start

    def __iter__(self):
        perm_epoch, perm = -1, None
        for step in range(self.start, self.end):
            epoch, k = divmod(step, self.per_epoch)
            if epoch != perm_epoch:
                perm_epoch, perm = (
                    epoch,
                    torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 100003 + epoch)),
                )
            idx = perm[k * self.batch_size : (k + 1) * self.batch_size].tolist()
            yield [(i, self.seed * 1_000_003 + step * 1009 + j) for j, i in enumerate(idx)]


@torch.no_grad()
def validation_loss(model: torch.nn.Module, data: ImageFolder, device: torch.device, limit: int = 64) -> float:
    """eps MSE on held-out images at fixed timesteps with fixed noise."""
    schedule = linear_schedule()
    gen = torch.Generator().manual_seed(1234)
    n = min(limit, len(data))
    x0 = torch.stack([data.load(i, 0)[0] for i in range(n)])
    y = torch.tensor([data.items[i][1] for i in range(n)])
    total = 0.0
    for t_val in VAL_TIMESTEPS:
        t = torch.full((n,), t_val)
        eps = torch.randn(x0.shape, generator=gen)
        x_t = schedule.q_sample(x0, t, eps)
        total += float(torch.nn.functional.mse_loss(model(x_t.to(device), t.float().to(device), y.to(device)).float().cpu(), eps))
    return total / len(VAL_TIMESTEPS)


def steps_per_epoch(n: int, batch_size: int) -> int:
    return max(1, n // batch_size)


def write_demo_folder(root: Path, per_class: int = 8, seed: int = 0, size: int = 64) -> Path:
    """A tiny CIFAR-10-layout folder of coloured shapes, one colour/shape per class (for tests and demos)."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    colours = [
        (230, 25, 75),
        (60, 180, 75),
        (255, 225, 25),
        (0, 130, 200),
        (245, 130, 48),
        (145, 30, 180),
        (70, 240, 240),
        (240, 50, 230),
        (210, 245, 60),
        (128, 128, 128),
    ]
    for split, count in (("train", per_class), ("test", max(2, per_class // 4))):
        for c, name in enumerate(CIFAR10_LABELS):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                bg = tuple(int(v) for v in rng.integers(0, 80, 3))
                img = Image.new("RGB", (size, size), bg)
                draw = ImageDraw.Draw(img)
                r = int(rng.integers(size // 5, size // 3))
                cx, cy = (int(v) for v in rng.integers(r, size - r, 2))
                box = (cx - r, cy - r, cx + r, cy + r)
                if c % 3 == 0:
                    draw.ellipse(box, fill=colours[c])
                elif c % 3 == 1:
                    draw.rectangle(box, fill=colours[c])
                else:
                    draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colours[c])
                img.save(folder / f"{i:04d}.png")
    return root


def demo_folder_problem(root: Path) -> str | None:
    """None when root holds only what demo-data writes (its marker, train/ and test/ of
    class folders of NNNN.png); else what else it holds."""
    if not (root / DEMO_MARKER).is_file():
        return f"no {DEMO_MARKER}"
    for path in sorted(root.rglob("*")):
        parts = path.relative_to(root).parts
        ours = parts == (DEMO_MARKER,) or (
            parts[0] in ("train", "test")
            and (len(parts) < 2 or parts[1] in CIFAR10_LABELS)
            and (len(parts) < 3 or (len(parts) == 3 and bool(DEMO_IMAGE.match(parts[2]))))
        )
        if not ours or path.is_symlink():
            return f"it also holds {path.relative_to(root)}, which demo-data does not write"
    return None


def write_demo_data(out: Path, per_class: int, seed: int = 0, overwrite: bool = False) -> Path:
    """write_demo_folder into a staging folder, moved into place whole; an existing OUT is
    replaced only with overwrite and only if demo-data wrote it."""
    check_output_folder(out, overwrite, [], "a demo-data folder", demo_folder_problem)
    stage = make_staging(out)
    try:
        write_demo_folder(stage, per_class, seed)
        (stage / DEMO_MARKER).write_text(
            json.dumps({"written_by": "mobilegen demo-data", "per_class": per_class, "seed": seed}) + "\n"
        )
        return publish_folder(
            stage, out, lambda: check_output_folder(out, overwrite, [], "a demo-data folder", demo_folder_problem)
        )
    finally:
        shutil.rmtree(stage, ignore_errors=True)
