"""`mobilegen-export onnx`: a verified, static-shape ONNX, or nothing."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from helpers import run
from test_outputs import dead_pid

from mobilegen.cli import export_cli
from mobilegen.contract import spec as spec_module
from mobilegen.contract.spec import DenoiserSpec, Tolerance
from mobilegen.export.onnx import DYNAMIC_OPS, onnx_op_types
from mobilegen.files import host_tag
from mobilegen.models.checkpoint import save_checkpoint, seeded_model
from mobilegen.runtime.backends import OnnxBackend

ROOT = Path(__file__).resolve().parents[1]

# What a v2 export contains: all ops with static output shapes.
EXPECTED_V2_OPS = [  # opset 20: GELU is one op; q/k/v are column slices (no Split, no Squeeze)
    "Add", "Cast", "Clip", "Concat", "Constant", "Conv", "Cos", "Gather", "Gelu", "Gemm", "GreaterOrEqual",
    "InstanceNormalization", "LayerNormalization", "MatMul", "MaxPool", "Mul", "Reshape", "Resize",
    "Sigmoid", "Sin", "Slice", "Softmax", "Transpose", "Unsqueeze",
]  # fmt: skip


@pytest.fixture(scope="module")
def real_v2_onnx(tmp_path_factory, real_v2):
    out = tmp_path_factory.mktemp("onnx") / "v2"
    res = run("onnx", real_v2, "-o", out)
    assert res.exit_code == 0, res.output + res.stderr
    return out, res


@pytest.mark.slow
def test_real_v2_exports_and_passes_onnxruntime_check(real_v2_onnx):
    out, res = real_v2_onnx
    assert "PASS denoiser.onnx: 77 cases" in res.output and "verified and wrote" in res.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "passed" and manifest["model"]["arch"] == "student_v2"
    assert manifest["parity"]["denoiser.onnx"]["min_psnr_db"] >= 80


@pytest.mark.slow
def test_onnx_has_only_static_shape_ops(real_v2_onnx):
    import onnx

    out, _ = real_v2_onnx
    ops = onnx_op_types(out / "denoiser.onnx")
    assert ops == EXPECTED_V2_OPS
    assert not set(ops) & DYNAMIC_OPS
    model = onnx.load(str(out / "denoiser.onnx"))
    assert [i.name for i in model.graph.input] == ["x", "t", "y"] and [o.name for o in model.graph.output] == ["eps"]
    shapes = {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input}
    assert shapes == {"x": [1, 3, 64, 64], "t": [1], "y": [1]}


@pytest.mark.slow
def test_unconditional_label_works_in_onnx(real_v2_onnx, real_v2):
    from mobilegen.models.checkpoint import load_checkpoint

    out, _ = real_v2_onnx
    model = load_checkpoint(real_v2).model
    x = np.random.default_rng(0).standard_normal((1, 3, 64, 64)).astype(np.float32)
    t, y = np.array([400.0], np.float32), np.array([-1], np.int32)
    got = OnnxBackend(out / "denoiser.onnx", DenoiserSpec())(x, t, y)
    with torch.no_grad():
        ref = model(torch.from_numpy(x), torch.from_numpy(t), None).numpy()
    assert np.abs(got - ref).max() < 1e-4


@pytest.mark.parametrize("layout, batch", [("NHWC", 1), ("NCHW", 2)])
def test_layout_and_batch_options(tmp_path, v2_checkpoint, layout, batch):
    out = tmp_path / "out"
    res = run("onnx", v2_checkpoint, "-o", out, "--layout", layout, "--batch", batch)
    assert res.exit_code == 0, res.output + res.stderr
    io = json.loads((out / "manifest.json").read_text())["io"]
    assert io["layout"] == layout and io["inputs"][0]["shape"] == list(DenoiserSpec(batch, layout).image_shape)


def test_existing_output_is_refused_and_kept(tmp_path, v2_checkpoint):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("good")
    res = run("onnx", v2_checkpoint, "-o", out)
    assert res.exit_code == 2 and "--overwrite" in res.stderr
    assert (out / "keep.txt").read_text() == "good"


def test_failed_gate_exits_1_and_publishes_nothing(tmp_path, v2_checkpoint, monkeypatch):
    """A deliberately impossible tolerance: the gate must fail hard, naming the worst case."""
    monkeypatch.setitem(spec_module.TOLERANCES, "onnx", Tolerance(min_psnr=500.0, max_abs_rel=0.0))
    out = earlier_export(tmp_path / "v2")
    res = run("onnx", v2_checkpoint, "-o", out, "--overwrite")
    assert res.exit_code == 1
    assert "FAIL denoiser.onnx" in res.output and "worst t=" in res.output
    assert json.loads((out / "manifest.json").read_text())["earlier"], "the earlier good export is intact"
    failed = json.loads((tmp_path / "v2.failed" / "manifest.json").read_text())
    assert failed["status"] == "failed" and failed["parity"]["denoiser.onnx"]["failures"]
    assert not list(tmp_path.glob(".v2.staging-*"))


def test_interrupted_export_leaves_nothing_behind(tmp_path, v2_checkpoint, monkeypatch):
    from mobilegen.jobs import export as job

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(job, "run_parity", interrupted)
    res = CliRunner().invoke(export_cli, ["onnx", str(v2_checkpoint), "-o", str(tmp_path / "v2")])
    assert res.exit_code == 130 and res.stderr.splitlines()[-1].startswith("error: interrupted (Ctrl-C)")
    assert list(tmp_path.iterdir()) == [v2_checkpoint], "no output folder and no staging leftovers"


def earlier_export(folder: Path) -> Path:
    """A folder as an earlier export left it: a manifest with our schema_version, and our files only."""
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps({"schema_version": 1, "status": "passed", "earlier": True}))
    (folder / "denoiser.onnx").write_bytes(b"earlier")
    (folder / "report.md").write_text("earlier")
    return folder


def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}  # fmt: skip


@pytest.mark.parametrize("case", ["issue example", "manifest beside user files", "no manifest", "failed twin", "linked checkpoint"])
def test_overwrite_refuses_what_is_not_an_export_and_deletes_nothing(tmp_path, v2_checkpoint, case):
    run_dir, ckpt = tmp_path / "run", v2_checkpoint
    if case == "issue example":  # mobilegen-export onnx run/ema.pt -o run --overwrite
        (run_dir / "samples").mkdir(parents=True)
        ckpt = Path(shutil.copy(v2_checkpoint, run_dir / "ema.pt"))
        (run_dir / "notes.txt").write_text("notes")
        (run_dir / "samples" / "step_0000100.png").write_bytes(b"png")
        want = f"output folder {run_dir} contains the input {ckpt}"
    elif case == "manifest beside user files":
        (earlier_export(run_dir) / "thesis.tex").write_text("precious")
        want = "it also holds thesis.tex, which no export writes"
    elif case == "no manifest":
        run_dir.mkdir()
        (run_dir / "thesis.tex").write_text("precious")
        want = "it is not a MobileGen export (no manifest.json)"
    elif case == "failed twin":  # a failed export would land in run.failed
        (tmp_path / "run.failed").mkdir()
        (tmp_path / "run.failed" / "thesis.tex").write_text("precious")
        want = "run.failed: it is not a MobileGen export"
    else:  # the checkpoint is typed through a symlink that points into the folder
        shutil.copy(v2_checkpoint, earlier_export(run_dir) / "ema.pt")
        ckpt = tmp_path / "link.pt"
        ckpt.symlink_to(run_dir / "ema.pt")
        want = "contains the input"
    before = snapshot(tmp_path)
    res = run("onnx", ckpt, "-o", run_dir, "--overwrite")
    assert res.exit_code == 2 and want in res.stderr, res.output + res.stderr
    assert [line for line in res.stderr.splitlines() if line.startswith("error:")] == res.stderr.splitlines()
    assert snapshot(tmp_path) == before, "nothing deleted, nothing written"


@pytest.fixture(scope="module")
def relative_export(tmp_path_factory):
    """`onnx ckpt.pt -o out --overwrite`, paths typed relative, over an earlier export of ours,
    beside the staging folder a killed export of this host left, and one of another host
    sharing the disk (its PID means nothing here: it may be alive)."""
    proj = tmp_path_factory.mktemp("proj")
    save_checkpoint(proj / "ckpt.pt", seeded_model("student_v2").model)  # the default weights: their references are cached
    (earlier_export(proj / "out") / ".manifest.json.abc123_x.tmp").write_text("{")  # from a killed writer: ours too
    for host in (host_tag(), "ci-runner-7"):
        stale = proj / f".out.staging-{host}-{dead_pid()}-abcdefgh"
        stale.mkdir()
        (stale / "denoiser.onnx").write_bytes(b"half")
    old = os.getcwd()
    os.chdir(proj)
    try:
        res = run("onnx", "ckpt.pt", "-o", "out", "--overwrite")
    finally:
        os.chdir(old)
    assert res.exit_code == 0, res.output + res.stderr
    return proj


def test_overwrite_replaces_an_earlier_export_and_dead_staging_is_removed(relative_export):
    proj = relative_export
    other = [p.name for p in proj.iterdir() if p.name.startswith(".out.staging-ci-runner-7-")]
    assert sorted(p.name for p in proj.iterdir() if p.name not in other) == ["ckpt.pt", "out"]
    assert len(other) == 1 and (proj / other[0] / "denoiser.onnx").read_bytes() == b"half", "another host's work is kept"
    assert {p.name for p in (proj / "out").iterdir()} == {"denoiser.onnx", "labels.txt", "manifest.json", "report.md"}
    assert "earlier" not in json.loads((proj / "out" / "manifest.json").read_text())


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


def start_export(out: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "mobilegen.cli", "onnx", "-o", str(out)]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_staging(parent: Path, proc: subprocess.Popen) -> Path:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        found = list(parent.glob(f".out.staging-{proc.pid}-*"))
        if found and list(found[0].iterdir()):  # mid-export: the ONNX file is being written
            return found[0]
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"no staging folder appeared: {proc.communicate()}")


@pytest.mark.slow
def test_killed_exports_leave_nothing_behind(tmp_path):
    """SIGKILL runs no clean-up, so the next run removes what it left; SIGTERM cleans up and exits 130."""
    out = tmp_path / "out"
    first = start_export(out)
    stale = wait_for_staging(tmp_path, first)
    first.kill()
    first.wait()
    assert stale.is_dir()
    second = start_export(out)
    wait_for_staging(tmp_path, second)
    assert not stale.exists(), "the next run removed the dead run's staging folder"
    second.send_signal(signal.SIGTERM)
    _, err = second.communicate(timeout=120)
    assert second.returncode == 130, err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("error: interrupted (SIGTERM)")
    assert list(tmp_path.iterdir()) == [], "no output, no staging folder"


@pytest.mark.slow
def test_failed_export_manifest_is_strict_json(tmp_path):
    """NaN weights make every output NaN: the failed manifest says so with null, never Infinity."""
    from mobilegen.errors import GateError
    from mobilegen.export.build import BuildOptions
    from mobilegen.jobs.export import ExportOptions, export_artifacts

    loaded = seeded_model("student_v2")
    with torch.no_grad():
        loaded.model.inc.double_conv[0].weight[0, 0, 0, 0] = float("nan")
    options = ExportOptions(out_dir=tmp_path / "nan", build=BuildOptions(tflite=False), layout="NCHW", bench=False)
    with pytest.raises(GateError) as failed:
        export_artifacts(loaded, options)
    assert {r.gate for r in failed.value.results if not r.passed} == {"parity"}

    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")

    manifest = json.loads((tmp_path / "nan.failed" / "manifest.json").read_text(), parse_constant=refuse)
    parity = manifest["parity"]["denoiser.onnx"]
    assert parity["min_psnr_db"] is None and parity["max_abs_error"] is None
    assert parity["failures"][0] == "the PyTorch fp32 reference itself has NaN/Inf: nothing to compare"
    assert "| denoiser.onnx | FAIL | NaN/Inf |" in (tmp_path / "nan.failed" / "report.md").read_text()
