"""manifest.json is validated once on read: a malformed one is one clear line naming the
field and exit 2 (never a traceback), for every command that reads one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import assert_refused, run

from mobilegen.contract.spec import DenoiserSpec

ONNX, F32, F16 = "denoiser.onnx", "denoiser_float32.tflite", "denoiser_float16.tflite"


@pytest.fixture()
def folder(export_copy) -> Path:
    return export_copy


def load(folder: Path):
    return json.loads((folder / "manifest.json").read_text())


def save(folder: Path, manifest) -> None:
    (folder / "manifest.json").write_text(json.dumps(manifest))


def edited(folder: Path, change) -> Path:
    """change(manifest) edits it in place (returns None) or returns a replacement."""
    m = load(folder)
    new = change(m)
    save(folder, m if new is None else new)
    return folder


def set_key(path: list, value):
    def change(m):
        for key in path[:-1]:
            m = m[key]
        m[path[-1]] = value

    return change


def delete(key):
    return lambda m: m.pop(key) and None


def abar(edit):
    def change(m):
        edit(m["schedule"]["alphas_cumprod"])

    return change


MALFORMED = {
    "empty-object": (lambda m: {}, "schema_version: must be 1"),
    "list": (lambda m: [], "manifest: must be an object (got list"),
    "files-as-list": (lambda m: m | {"files": list(m["files"])}, "files: must be an object (got list"),
    "no-schedule": (delete("schedule"), "schedule: must be an object (missing or null)"),
    "truncated-schedule": (abar(lambda ab: ab.__delitem__(slice(10, None))), "schedule.alphas_cumprod: has 10 values, expected T = 1000"),
    "truncated-schedule-and-T": (lambda m: m | {"schedule": m["schedule"] | {"T": 10, "alphas_cumprod": m["schedule"]["alphas_cumprod"][:10]}},
                                 "schedule.T: must be in 1000..1000, got 10"),
    "nan-in-schedule": (abar(lambda ab: ab.__setitem__(7, float("nan"))), "schedule.alphas_cumprod: holds NaN/Inf (first at index 7)"),
    "schedule-above-1": (abar(lambda ab: ab.__setitem__(0, 1.5)), "schedule.alphas_cumprod: value 1.5 at index 0 is outside (0, 1)"),
    "schedule-rising": (abar(lambda ab: ab.__setitem__(500, 0.99)), "schedule.alphas_cumprod: is not strictly decreasing"),
    "12-labels": (lambda m: m | {"labels": m["labels"] + ["unicorn", "dragon"]}, "labels: must be 10 non-empty class names (io.num_classes), got 12 entries"),
    "layout-changed": (set_key(["io", "layout"], "NCHW"), "io.inputs: does not match the contract for batch 1, layout NCHW"),
    "bad-layout": (set_key(["io", "layout"], "CHWN"), "io.layout: must be one of NCHW, NHWC"),
    "path-outside": (lambda m: m | {"files": m["files"] | {"../../etc/hostname": m["files"][ONNX]}},
                     "files['../../etc/hostname']: is not a file of an export folder"),
    "absolute-path": (lambda m: m | {"files": {"/etc/hostname": m["files"][ONNX]}}, "files['/etc/hostname']: is not a file"),
    "wrong-precision": (set_key(["files", F16, "precision"], "float32"), f"files['{F16}'].precision: must be 'float16'"),
    "bad-sha": (set_key(["files", ONNX, "sha256"], 12), f"files['{ONNX}'].sha256: must be 64 lowercase hex digits"),
}  # fmt: skip


@pytest.mark.parametrize("change, field", MALFORMED.values(), ids=MALFORMED.keys())
def test_verify_refuses_a_malformed_manifest_naming_the_field(folder, change, field):
    assert_refused(run("verify", edited(folder, change), "--classes", ""), "malformed manifest", field)


@pytest.mark.parametrize("command", ["verify", "bench", "report", "sample"])
def test_every_reader_validates(folder, command, tmp_path):
    save(folder, {})
    args = ["sample", folder / ONNX, "--steps", "1", "-o", tmp_path / "x.png"] if command == "sample" else [command, folder]
    assert_refused(run(*args), "schema_version")
    assert not (tmp_path / "x.png").exists()


def with_duplicate_labels_entry(folder: Path) -> None:
    """files gets a second "labels.txt" key, first in the object: Python's json keeps the last
    (the true entry), a parser that keeps the first reads another sha256."""
    m = load(folder)
    forged = json.dumps(m["files"]["labels.txt"] | {"sha256": "0" * 64})
    text = json.dumps(m).replace('"files": {', '"files": {"labels.txt": ' + forged + ", ", 1)
    (folder / "manifest.json").write_text(text)


@pytest.mark.parametrize("command", ["verify", "bench", "report", "sample"])
def test_every_reader_refuses_a_repeated_key(folder, command, tmp_path):
    with_duplicate_labels_entry(folder)
    args = ["sample", folder / ONNX, "--steps", "1", "-o", tmp_path / "x.png"] if command == "sample" else [command, folder]
    assert_refused(run(*args), "duplicate key 'labels.txt'", "one reading")
    assert not (tmp_path / "x.png").exists() and not (folder / "report.html").exists()


def test_a_huge_number_is_cut_in_the_error(folder):
    edited(folder, set_key(["files", ONNX, "bytes"], 10**400))
    res = run("verify", folder, "--classes", "")
    assert_refused(res, f"files['{ONNX}'].bytes: must be in 1..", "an integer of about 401 digits")
    assert len(res.stderr) < 300


def test_sample_with_12_labels_and_label_11(folder, tmp_path):
    edited(folder, MALFORMED["12-labels"][0])
    assert_refused(run("sample", folder / F32, "--label", "11", "--steps", "1", "-o", tmp_path / "x.png"), "labels")


def test_a_consistent_io_change_is_caught_when_the_file_is_opened(folder, tmp_path):
    """The io section rewritten for NCHW throughout (so the schema holds): the NHWC files disagree."""
    edited(folder, lambda m: m | {"io": json.loads(json.dumps(DenoiserSpec(layout="NCHW").to_dict()))})
    for name in (ONNX, F16):
        res = run("sample", folder / name, "--steps", "1", "-o", tmp_path / "x.png")
        assert_refused(res, name, "do not match the manifest's io contract", "layout NCHW")


@pytest.mark.parametrize("case", ["nan-in-schedule", "schedule-above-1", "truncated-schedule"])
def test_sample_on_an_artifact_refuses_a_bad_schedule(folder, tmp_path, case):
    """These used to sample with the manifest's schedule and write a black PNG (exit 0)."""
    change, field = MALFORMED[case]
    res = run("sample", edited(folder, change) / F16, "--steps", "2", "-o", tmp_path / "x.png")
    assert_refused(res, field)
    assert not (tmp_path / "x.png").exists()
