"""`mobilegen-export` as a user meets it: bad checkpoints, outputs and arguments are one line, exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from helpers import one_line
from probe import probe_state_dict

from mobilegen.cli import export_cli, main_cli


def run(cli, *args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def write_evil(path: Path) -> Path:
    import os

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"state_dict": {}, "x": Evil()}, path)
    return path


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p.write_bytes(b"\x80\x02not a checkpoint at all"), "not a readable PyTorch checkpoint"),
        (lambda p: torch.save(probe_state_dict("student_v2"), p) or p.write_bytes(p.read_bytes()[:5000]), "not a readable"),
        (lambda p: torch.save({"conv.weight": torch.zeros(3, 3)}, p), "match no architecture"),
        (write_evil, "would execute code (posix.system)"),
    ],
    ids=["non-checkpoint", "truncated", "wrong-architecture", "code-running-pickle"],
)
def test_bad_checkpoints_give_one_line_and_nonzero_exit(tmp_path, make, message):
    path = tmp_path / "bad.pt"
    make(path)
    out = tmp_path / "out"
    res = run(export_cli, "onnx", path, "-o", out)
    assert res.exit_code == 2
    assert res.stderr.count("\n") == 1 and message in res.stderr
    assert "Traceback" not in res.output + res.stderr
    assert not out.exists()


def test_a_symlink_loop_checkpoint_is_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("a.pt").symlink_to("b.pt")
    Path("b.pt").symlink_to("a.pt")
    for cli, args in ((main_cli, ["sample", "a.pt", "-o", "x.png"]), (export_cli, ["onnx", "a.pt", "-o", "out"])):
        assert "a.pt: a symbolic link that leads to no file" in one_line(run(cli, *args))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pt", "b.pt"]


def test_an_output_under_a_regular_file_says_so(tmp_path):
    (tmp_path / "regular.txt").write_text("x")
    message = one_line(run(export_cli, "onnx", "-o", tmp_path / "regular.txt" / "sub"))
    assert "its parent" in message and "regular.txt is a file, not a folder" in message


def test_wrong_arguments_are_rejected():
    res = CliRunner().invoke(export_cli, ["tflite", "--prune", "1.5"])
    assert res.exit_code == 2 and "1.5" in res.output
    res = CliRunner().invoke(export_cli, ["onnx", "--arch", "student_v9"])
    assert res.exit_code == 2 and "student_v9" in res.output


def test_compare_and_report_refuse_existing_outputs_before_any_work(tmp_path):
    out = tmp_path / "cmp"
    out.mkdir()
    (out / "compare.json").write_text("mine")
    res = run(export_cli, "compare", "-o", out)
    assert res.exit_code == 2 and "compare.json already exists; pass --overwrite" in res.stderr
    (out / "report.html").write_text("mine")
    res = run(export_cli, "report", out)
    assert res.exit_code == 2 and "report.html already exists; pass --overwrite" in res.stderr
    assert {p.name: p.read_text() for p in out.iterdir()} == {"compare.json": "mine", "report.html": "mine"}


def test_targets_needing_a_runtime_that_is_not_set_up_fail_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setenv("MOBILEGEN_ARM64_ROOT", str(tmp_path / "no-arm64"))
    res = CliRunner().invoke(export_cli, ["tflite", "--targets", "arm64", "-o", str(tmp_path / "out")])
    assert res.exit_code != 0 and "arm64-fp32 target needs an arm64 Python" in one_line(res, res.exit_code)
    assert "bash scripts/install.sh" in res.stderr and not (tmp_path / "out").exists()
    bad = CliRunner().invoke(export_cli, ["verify", str(tmp_path), "--targets", "npu"])
    assert bad.exit_code == 2 and "unknown target 'npu'" in bad.output + bad.stderr


@pytest.mark.slow  # an export checked on the GPU path: about a minute
def test_tflite_targets_records_the_phone_paths_and_verify_rechecks_them(tiny_targets_export):
    import json

    from PIL import Image

    out, res = tiny_targets_export
    manifest = json.loads((out / "manifest.json").read_text())
    results = manifest["targets"]["results"]
    assert set(results) == {"denoiser_float32.tflite", "denoiser_float16.tflite"}
    assert all(r["gpu-fp16"]["passed"] and r["gpu-fp16"]["coverage"]["cpu_ops"] == 0 for r in results.values())
    assert "PASS denoiser_float16.tflite on gpu-fp16: step vs float64" in res.output
    columns = manifest["targets"]["images"]["columns"]
    assert Image.open(out / "targets.png").size == (64 * len(columns), 64) and len(columns) == 5
    assert "## On the phone's paths" in (out / "report.md").read_text()
    assert all("xnnpack_x86_64" in manifest["files"][n]["coverage"] for n in results)
    before = (out / "manifest.json").read_bytes()
    plain = run(export_cli, "verify", out, "--classes", "")
    assert plain.exit_code == 0 and "phone paths checked at export: gpu-fp16 (not rechecked" in plain.output
    again = run(export_cli, "verify", out, "--classes", "", "--targets", "gpu-fp16", "--json")
    assert again.exit_code == 0, again.output
    rechecked = json.loads(again.stdout)["targets"]
    assert set(rechecked) == {f"{n}@gpu-fp16" for n in results} and all(r["passed"] for r in rechecked.values())
    assert (out / "manifest.json").read_bytes() == before  # verify is read-only
