"""The one rule every writer follows: no existing output replaced without --overwrite, no input
ever, folders only when ours, and nothing half-written or left behind by a killed run."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from helpers import dead_pid

from mobilegen.errors import OutputError
from mobilegen.files import (
    DuplicateKey,
    check_output_file,
    check_output_folder,
    host_tag,
    loads_strict,
    make_staging,
    publish_folder,
    remove_leftovers,
    write_json,
)


def test_an_input_is_never_overwritten_even_through_links(tmp_path):
    ckpt = tmp_path / "ckpt.pt"
    ckpt.write_bytes(b"weights")
    (tmp_path / "link.pt").symlink_to(ckpt)
    os.link(ckpt, tmp_path / "hard.pt")
    for out in (ckpt, tmp_path / "link.pt", tmp_path / "hard.pt", tmp_path / "." / "ckpt.pt"):
        with pytest.raises(OutputError, match="is an input of this command.*with or without --overwrite"):
            check_output_file(out, True, [ckpt])
    with pytest.raises(OutputError, match="already exists; pass --overwrite"):
        check_output_file(tmp_path / "link.pt", False, [])
    assert check_output_file(tmp_path / "new.png", False, [ckpt]) == tmp_path / "new.png"
    assert ckpt.read_bytes() == b"weights"


def test_a_folder_is_replaced_only_when_ours_and_never_when_it_holds_an_input(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "notes.txt").write_text("precious")
    ours = lambda f: None  # noqa: E731
    with pytest.raises(OutputError, match="already exists; pass --overwrite"):
        check_output_folder(folder, False, [], "ours", ours)
    with pytest.raises(OutputError, match="refusing to replace .*not ours \\(why\\)"):
        check_output_folder(folder, True, [], "ours", lambda f: "why")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "ckpt.pt").symlink_to(folder / "notes.txt")
    with pytest.raises(OutputError, match="contains the input"):
        check_output_folder(folder, True, [tmp_path / "elsewhere" / "ckpt.pt"], "ours", ours)  # resolved through the link
    (tmp_path / "alias").symlink_to(folder)
    with pytest.raises(OutputError, match="contains the input"):
        check_output_folder(tmp_path / "alias", True, [folder / "notes.txt"], "ours", ours)
    check_output_folder(folder, True, [tmp_path / "other.pt"], "ours", ours)  # ours, no input inside: allowed
    assert (folder / "notes.txt").read_text() == "precious"


def test_leftovers_of_dead_processes_of_this_host_are_removed_and_nothing_else(tmp_path):
    dead, host = dead_pid(), host_tag()
    stale = tmp_path / f".out.staging-{host}-{dead}-abcd_123"
    live = tmp_path / f".out.staging-{host}-{os.getpid()}-abcdefgh"
    # A folder several hosts share: another host's export with that pid may be running there.
    other_host = tmp_path / f".out.staging-ci_runner_7-{dead}-abcdefgh"
    legacy = tmp_path / f".out.staging-{dead}-abcdefgh"  # no host in the name: whose it is is unknown
    foreign = tmp_path / ".out.staging-notes"
    for folder in (stale, live, other_host, legacy, foreign):
        folder.mkdir()
        (folder / "denoiser.onnx").write_bytes(b"x" * 100)
    swapped = tmp_path / f".gone.old-{host}-{dead}-0123abcd"  # killed between the two renames of a swap
    swapped.mkdir()
    (swapped / "manifest.json").write_text("{}")
    assert remove_leftovers(tmp_path) == [stale]
    assert live.is_dir() and other_host.is_dir() and legacy.is_dir() and foreign.is_dir() and not stale.exists()
    assert (tmp_path / "gone" / "manifest.json").is_file(), "the previous export is put back, not deleted"


def test_publish_swaps_whole_folders(tmp_path):
    target = tmp_path / "out"
    for content in ("first", "second"):
        stage = make_staging(target)
        assert stage.name.startswith(f".out.staging-{host_tag()}-{os.getpid()}-")
        (stage / "a.txt").write_text(content)
        publish_folder(stage, target)
        assert (target / "a.txt").read_text() == content
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"], "nothing beside it, not even a lock file"


def test_a_run_that_lost_the_race_publishes_nothing_and_deletes_nothing(tmp_path):
    """Two runs staged into one output: the second finds the first's work published when it
    publishes (the check runs again under the lock) and leaves it, and its own stage, alone."""
    target = tmp_path / "out"
    first, second = make_staging(target), make_staging(target)
    (first / "a.txt").write_text("first")
    (second / "a.txt").write_text("second")
    check = lambda: check_output_folder(target, False, [], "ours", lambda f: None)  # noqa: E731
    publish_folder(first, target, check)
    with pytest.raises(OutputError, match="already exists"):
        publish_folder(second, target, check)
    assert (target / "a.txt").read_text() == "first" and (second / "a.txt").read_text() == "second"


def test_an_output_under_a_file_is_named_as_such(tmp_path):
    (tmp_path / "regular.txt").write_text("x")
    for check in (lambda p: check_output_folder(p, False, [], "ours", lambda f: None), lambda p: check_output_file(p, False)):
        with pytest.raises(OutputError, match="its parent .*regular.txt is a file, not a folder"):
            check(tmp_path / "regular.txt" / "sub" / "x.png")


def test_the_current_folder_is_never_replaced(tmp_path, monkeypatch):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "a.txt").write_text("mine")
    monkeypatch.chdir(tmp_path / "out")
    for folder in (Path("."), tmp_path / "out", tmp_path):
        with pytest.raises(OutputError, match="is the current folder or holds it"):
            check_output_folder(folder, True, [], "ours", lambda f: None)


def test_a_repeated_json_key_is_refused():
    assert loads_strict('{"a": {"b": 1}, "c": [{"b": 2}]}') == {"a": {"b": 1}, "c": [{"b": 2}]}
    for text, key in [('{"a": 1, "a": 1}', "a"), ('{"x": [{"b": 1, "b": 2}]}', "b")]:
        with pytest.raises(DuplicateKey, match=f"duplicate key '{key}'"):
            loads_strict(text)


def test_write_json_never_writes_nan_or_infinity(tmp_path):
    with pytest.raises(ValueError):
        write_json(tmp_path / "m.json", {"x": float("inf")})
    assert not list(tmp_path.iterdir()), "no file and no temporary left"
    write_json(tmp_path / "m.json", {"x": None})
    assert json.loads((tmp_path / "m.json").read_text()) == {"x": None}
