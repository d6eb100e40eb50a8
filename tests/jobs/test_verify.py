"""`mobilegen-export verify` (jobs/verify.py): every file opened and of its slot's kind before the
reference work, nothing outside the folder, and the folder left byte-identical."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from helpers import assert_refused, needs_target, rehash, run

from mobilegen.models.checkpoint import save_checkpoint, seeded_model

ONNX, F32, F16 = "denoiser.onnx", "denoiser_float32.tflite", "denoiser_float16.tflite"
TFLITE = (F32, F16)


@pytest.fixture()
def folder(export_copy) -> Path:
    return export_copy


def test_verify_checks_every_file_loads_before_the_reference_work(folder, monkeypatch):
    """A valid ONNX model whose inputs are not the contract (its hash updated): refused once the
    files are opened, before the reference model is even built."""
    import onnx

    import mobilegen.jobs.verify as job

    model = onnx.load(str(folder / ONNX))
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 3
    onnx.save(model, str(folder / ONNX))
    rehash(folder, ONNX)

    def reference_model(*args, **kwargs):
        raise AssertionError("the reference model was built before every file was opened")

    monkeypatch.setattr(job, "reference_model", reference_model)
    assert_refused(run("verify", folder), ONNX, "do not match the manifest's io contract")


def test_a_corrupt_onnx_whose_hash_was_updated(folder, tmp_path):
    (folder / ONNX).write_bytes(b"\x08\x07garbage" * 1000)
    rehash(folder, ONNX)
    assert_refused(run("sample", folder / ONNX, "--steps", "1", "-o", tmp_path / "x.png"), "not a loadable ONNX model")
    assert_refused(run("verify", folder, "--classes", ""), f"files['{ONNX}']", "not a valid ONNX model")


@pytest.mark.parametrize("source, slot, message", [(F32, F16, "is not a float16 file"), (F16, F32, "is not a float32 file"),
                                                   (F32, ONNX, "not a valid ONNX model"), (ONNX, F32, "not a TFLite flatbuffer")])  # fmt: skip
def test_verify_checks_each_file_is_of_its_slots_kind(folder, source, slot, message):
    shutil.copyfile(folder / source, folder / slot)
    rehash(folder, slot)
    assert_refused(run("verify", folder, "--classes", ""), f"files['{slot}']", message)


def test_verify_refuses_a_symlink_that_leads_out_of_the_folder(folder, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("not yours\n")
    (folder / "labels.txt").unlink()
    (folder / "labels.txt").symlink_to(secret)
    rehash(folder, "labels.txt")
    assert_refused(run("verify", folder, "--classes", ""), "'labels.txt' resolves to", "outside the export folder")


@pytest.mark.slow
def test_verify_bench_and_report_leave_the_manifest_byte_identical(folder):
    """The read-only commands write what they measure beside the manifest, never into it."""
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    res = run("verify", folder, "--classes", "")
    assert res.exit_code == 0, res.output + res.stderr
    assert "pytorch fp32 vs float64" in res.output
    assert run("bench", folder, "--repeats", "3").exit_code == 0
    res = run("report", folder, "--classes", "cat", "--steps", "2")
    assert res.exit_code == 0, res.output + res.stderr
    after = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert {n: after[n] for n in before} == before, "every file of the export is byte-identical"
    assert set(after) - set(before) == {"bench.json", "trajectory.json", "report.html"}
    manifest_sha = hashlib.sha256(before["manifest.json"]).hexdigest()
    bench, trajectory = (json.loads(after[n]) for n in ("bench.json", "trajectory.json"))
    assert bench["manifest_sha256"] == trajectory["manifest_sha256"] == manifest_sha
    assert bench["repeats"] == 3 and set(trajectory["results"]) == {ONNX, F32, F16}
    assert "Latency per denoising step" in after["report.html"].decode(), "report.html draws bench.json's latency"
    assert run("verify", folder, "--classes", "").exit_code == 0, "the folder, with them, still verifies"


def test_verify_runs_from_another_directory(relative_export, tmp_path, monkeypatch):
    proj = relative_export
    manifest = json.loads((proj / "out" / "manifest.json").read_text())
    assert manifest["source"]["checkpoint"] == str((proj / "ckpt.pt").resolve())
    monkeypatch.chdir(tmp_path)
    res = run("verify", proj / "out", "--classes", "")
    assert res.exit_code == 0, res.output + res.stderr


def test_verify_finds_a_moved_checkpoint_by_sha256_and_refuses_another(relative_export, tmp_path):
    moved = tmp_path / "moved"
    shutil.copytree(relative_export / "out", moved / "out")
    shutil.copy(relative_export / "ckpt.pt", moved / "renamed.pt")
    manifest = json.loads((moved / "out" / "manifest.json").read_text())
    manifest["source"]["checkpoint"] = str(tmp_path / "gone" / "ckpt.pt")  # the project was moved
    (moved / "out" / "manifest.json").write_text(json.dumps(manifest))
    res = run("verify", moved / "out", "--classes", "")
    assert res.exit_code == 0, res.output + res.stderr
    other = save_checkpoint(tmp_path / "other.pt", seeded_model("student_v2", seed=2).model)
    res = run("verify", moved / "out", "--classes", "", "--checkpoint", other)
    assert res.exit_code == 2 and f"--checkpoint {other} has sha256" in res.stderr
    assert f"the export was made from a checkpoint with sha256 {manifest['source']['sha256']}" in res.stderr
    (moved / "renamed.pt").unlink()
    res = run("verify", moved / "out", "--classes", "")
    assert res.exit_code == 2 and "pass --checkpoint PATH" in res.stderr


@pytest.mark.slow  # the guided loop, 10 steps, on three files and PyTorch
def test_verify_passes_then_catches_a_tampered_byte(folder):
    res = run("verify", folder, "--json", "--steps", "10")
    assert res.exit_code == 0, res.output
    result = json.loads(res.stdout)
    assert result["passed"] and set(result["trajectory"]) == {"denoiser.onnx", *TFLITE}
    assert set(result["trajectory"]["denoiser_float16.tflite"]["per_class"]) == {"cat", "ship"}
    data = bytearray((folder / "denoiser_float16.tflite").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (folder / "denoiser_float16.tflite").write_bytes(bytes(data))
    res = run("verify", folder, "--classes", "")
    assert res.exit_code == 1
    assert "denoiser_float16.tflite: sha256 mismatch" in res.output


@pytest.mark.slow  # an export of its own
def test_targets_on_an_export_without_tflite_files_is_a_problem_named(relative_export):
    needs_target("gpu-fp16")
    res = run("verify", relative_export / "out", "--classes", "", "--targets", "gpu-fp16")
    assert res.exit_code == 1 and "--targets: this export has no .tflite file" in res.output
