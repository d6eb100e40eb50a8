"""Checks on a published export folder (verify/folder.py): the source checkpoint found by its
sha256, files kept inside the folder and of their slot's kind."""

from __future__ import annotations

import pytest

from mobilegen.errors import ManifestError, MobileGenError
from mobilegen.files import sha256_file
from mobilegen.verify.folder import find_checkpoint, inside, slot_problem


def test_the_checkpoint_is_found_by_sha256_beside_a_moved_folder(tmp_path):
    ckpt = tmp_path / "ema.pt"
    ckpt.write_bytes(b"weights")
    manifest = {"source": {"checkpoint": str(tmp_path / "gone" / "ema.pt"), "sha256": sha256_file(ckpt)}}
    (tmp_path / "out").mkdir()
    assert find_checkpoint(manifest, directory=tmp_path / "out") == ckpt
    other = tmp_path / "other.pt"
    other.write_bytes(b"other weights")
    with pytest.raises(MobileGenError, match="--checkpoint .*other.pt has sha256"):
        find_checkpoint(manifest, other)
    ckpt.unlink()
    with pytest.raises(MobileGenError, match="pass --checkpoint PATH"):
        find_checkpoint(manifest, directory=tmp_path / "out")


def test_a_file_must_stay_inside_the_folder(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "labels.txt").write_text("cat\n")
    assert inside(folder, "labels.txt") == folder / "labels.txt"
    (folder / "secret.txt").symlink_to(tmp_path / "elsewhere.txt")
    with pytest.raises(ManifestError, match="outside the export folder"):
        inside(folder, "secret.txt")


def test_a_file_is_checked_against_its_slots_kind(tmp_path):
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x08\x07garbage" * 10)
    assert slot_problem(junk, "text") is None
    assert "not a valid ONNX model" in slot_problem(junk, "onnx")
    assert "not a TFLite flatbuffer" in slot_problem(junk, "float32")
