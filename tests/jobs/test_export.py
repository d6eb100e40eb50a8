"""The export job (jobs/export.py) through `mobilegen-export onnx|tflite`: what it writes, what it
refuses, and that a failed or interrupted export publishes nothing."""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from helpers import ROOT, assert_refused, earlier_export, manifest_of, run

from mobilegen.cli import export_cli
from mobilegen.contract import spec as spec_module
from mobilegen.contract.spec import DenoiserSpec, Tolerance
from mobilegen.files import host_tag, sha256_file

ONNX, F32, F16 = "denoiser.onnx", "denoiser_float32.tflite", "denoiser_float16.tflite"


@pytest.fixture()
def folder(export_copy) -> Path:
    return export_copy


def test_an_export_into_the_current_export_folder_is_refused(folder, monkeypatch):
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    monkeypatch.chdir(folder)
    assert_refused(run("onnx", "-o", ".", "--overwrite"), "is the current folder or holds it")
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert sorted(p.name for p in folder.parent.iterdir()) == ["tiny.pt", folder.name]  # its checkpoint, nothing new


@pytest.mark.slow  # an export each
@pytest.mark.parametrize("layout, batch", [("NHWC", 1), ("NCHW", 2)])
def test_layout_and_batch_options(tmp_path, tiny_ckpt, layout, batch):
    out = tmp_path / "out"
    res = run("onnx", tiny_ckpt, "-o", out, "--layout", layout, "--batch", batch)
    assert res.exit_code == 0, res.output + res.stderr
    io = json.loads((out / "manifest.json").read_text())["io"]
    assert io["layout"] == layout and io["inputs"][0]["shape"] == list(DenoiserSpec(batch, layout).image_shape)


def test_existing_output_is_refused_and_kept(tmp_path, tiny_ckpt):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("good")
    res = run("onnx", tiny_ckpt, "-o", out)
    assert res.exit_code == 2 and "--overwrite" in res.stderr
    assert (out / "keep.txt").read_text() == "good"


def test_failed_gate_exits_1_and_publishes_nothing(tmp_path, tiny_ckpt, monkeypatch):
    """A deliberately impossible tolerance: the gate must fail hard, naming the worst case."""
    monkeypatch.setitem(spec_module.TOLERANCES, "onnx", Tolerance(min_psnr=500.0, max_abs_rel=0.0))
    out = earlier_export(tmp_path / "v2")
    res = run("onnx", tiny_ckpt, "-o", out, "--overwrite")
    assert res.exit_code == 1
    assert "FAIL denoiser.onnx" in res.output and "worst t=" in res.output
    assert json.loads((out / "manifest.json").read_text())["earlier"], "the earlier good export is intact"
    failed = json.loads((tmp_path / "v2.failed" / "manifest.json").read_text())
    assert failed["status"] == "failed" and failed["parity"]["denoiser.onnx"]["failures"]
    assert not list(tmp_path.glob(".v2.staging-*"))


def test_interrupted_export_leaves_nothing_behind(tmp_path, tiny_ckpt, monkeypatch):
    from mobilegen.jobs import export as job

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(job, "run_parity", interrupted)
    res = CliRunner().invoke(export_cli, ["onnx", str(tiny_ckpt), "-o", str(tmp_path / "v2")])
    assert res.exit_code == 130 and res.stderr.splitlines()[-1].startswith("error: interrupted (Ctrl-C)")
    assert list(tmp_path.iterdir()) == [tiny_ckpt], "no output folder and no staging leftovers"


def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}  # fmt: skip


@pytest.mark.parametrize("case", ["issue example", "manifest beside user files", "no manifest", "failed twin", "linked checkpoint"])
def test_overwrite_refuses_what_is_not_an_export_and_deletes_nothing(tmp_path, tiny_ckpt, case):
    run_dir, ckpt = tmp_path / "run", tiny_ckpt
    if case == "issue example":  # mobilegen-export onnx run/ema.pt -o run --overwrite
        (run_dir / "samples").mkdir(parents=True)
        ckpt = Path(shutil.copy(tiny_ckpt, run_dir / "ema.pt"))
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
        shutil.copy(tiny_ckpt, earlier_export(run_dir) / "ema.pt")
        ckpt = tmp_path / "link.pt"
        ckpt.symlink_to(run_dir / "ema.pt")
        want = "contains the input"
    before = snapshot(tmp_path)
    res = run("onnx", ckpt, "-o", run_dir, "--overwrite")
    assert res.exit_code == 2 and want in res.stderr, res.output + res.stderr
    assert [line for line in res.stderr.splitlines() if line.startswith("error:")] == res.stderr.splitlines()
    assert snapshot(tmp_path) == before, "nothing deleted, nothing written"


def test_overwrite_replaces_an_earlier_export_and_dead_staging_is_removed(relative_export):
    proj = relative_export
    other = [p.name for p in proj.iterdir() if p.name.startswith(".out.staging-ci-runner-7-")]
    assert sorted(p.name for p in proj.iterdir() if p.name not in other) == ["ckpt.pt", "out"]
    assert len(other) == 1 and (proj / other[0] / "denoiser.onnx").read_bytes() == b"half", "another host's work is kept"
    assert {p.name for p in (proj / "out").iterdir()} == {"denoiser.onnx", "labels.txt", "manifest.json", "report.md"}
    assert "earlier" not in json.loads((proj / "out" / "manifest.json").read_text())


def start_export(out: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "mobilegen.cli", "onnx", "-o", str(out)]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_staging(parent: Path, proc: subprocess.Popen) -> Path:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        found = list(parent.glob(f".out.staging-{host_tag()}-{proc.pid}-*"))
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
def test_failed_export_manifest_is_strict_json(tmp_path, tiny_ckpt):
    """NaN weights make every output NaN: the failed manifest says so with null, never Infinity."""
    from mobilegen.errors import GateError
    from mobilegen.export.build import BuildOptions
    from mobilegen.jobs.export import ExportOptions, export_artifacts
    from mobilegen.models.checkpoint import load_checkpoint

    loaded = load_checkpoint(tiny_ckpt)
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

FILES = {"denoiser_float32.tflite", "denoiser_float16.tflite", "denoiser.onnx", "manifest.json", "labels.txt", "report.md"}
TFLITE = ("denoiser_float32.tflite", "denoiser_float16.tflite")


def test_writes_every_file_and_a_passing_manifest(tiny_export):
    out, _ = tiny_export
    assert {p.name for p in out.iterdir()} == FILES
    m = manifest_of(out)
    assert m["status"] == "passed" and m["model"]["arch"] == "student_v2"
    assert all(p["passed"] for p in m["parity"].values())
    assert m["parity"]["denoiser_float32.tflite"]["min_psnr_db"] >= 80
    assert m["parity"]["denoiser_float16.tflite"]["min_psnr_db"] >= 40
    assert len(m["schedule"]["alphas_cumprod"]) == 1000 and m["labels"][1] == "automobile"
    assert (out / "labels.txt").read_text().split() == m["labels"]


def test_manifest_hashes_match(tiny_export):
    out, _ = tiny_export
    for name, entry in manifest_of(out)["files"].items():
        assert sha256_file(out / name) == entry["sha256"]
        assert (out / name).stat().st_size == entry["bytes"]


@pytest.mark.slow
def test_pruning_is_reported_honestly(pruned_export):
    m = manifest_of(pruned_export)
    prune = m["compression"]["prune"]
    assert prune["amount"] == 0.3 and prune["global"] >= 0.3
    assert all(v >= 0.25 for v in prune["layers"].values())  # per layer: floor(0.3 n) of n (the tiny net has 4-weight layers)
    psnr = prune["pruned_vs_unpruned_psnr_db"]  # the untrained model: pruning moves it more than trained weights
    assert 5 < psnr["min"] <= psnr["mean"] < 80
    assert prune["weights_gzip_bytes"].keys() == {"float32", "float16"}
    for size in prune["weights_gzip_bytes"].values():
        assert size["pruned"] < 0.9 * size["unpruned"]
    assert "makes nothing faster" in (pruned_export / "report.md").read_text()


@pytest.mark.slow  # the untrained v2, a minute: the other tests read the tiny export
def test_readme_main_command_on_a_fresh_machine(default_export):
    """`mobilegen-export tflite --fp16` with no checkpoint: the labelled default model, with the benchmark."""
    out, res = default_export
    assert {p.name for p in out.iterdir()} == FILES
    m = manifest_of(out)
    assert "NOT a trained model" in m["source"]["checkpoint"] and "untrained" in res.stderr
    lat = m["latency"]
    names = [t["name"] for t in lat["timings"]]
    assert names[:2] == ["pytorch fp32 (original attention)", "pytorch fp32 (fused sdpa)"]
    assert set(names[2:]) == {"denoiser.onnx", *TFLITE}
    assert all(t["median_ms"] > 0 and t["p90_ms"] >= t["median_ms"] for t in lat["timings"])
    assert lat["threads"] >= 1 and lat["machine"]["cores"] and "median ms" in res.output
    assert "Latency per step" in (out / "report.md").read_text()


@pytest.mark.slow
def test_exports_are_deterministic(tmp_path, tiny_export):
    """Same checkpoint twice -> identical bytes."""
    first, _ = tiny_export
    out = tmp_path / "again"
    assert run("tflite", first.parent / "tiny.pt", "--fp16", "-o", out, "--no-bench").exit_code == 0
    for name in ("denoiser.onnx", *TFLITE, "labels.txt"):
        assert (first / name).read_bytes() == (out / name).read_bytes(), name
    a, b = manifest_of(first), manifest_of(out)
    a.pop("latency")
    for m in (a, b):  # RSS is measured, like latency; the graph's memory figures are the file's own
        for entry in m["files"].values():
            measured = entry.get("memory", {})
            assert measured.get("passed", True), measured
            for key in ("peak_rss_mb", "after_load_mb", "bare_rss_mb", "reset"):
                measured.pop(key, None)
    assert a == b


def test_a_structurally_pruned_checkpoint_exports_through_the_normal_pipeline(tiny_export):
    """The tiny network is the v2 structurally pruned (helpers.tiny_model): its export is the normal one."""
    manifest = manifest_of(tiny_export[0])
    assert manifest["status"] == "passed"
    assert manifest["model"]["config"]["widths"]["sa6.mha"] == [4, 1, 1]  # the pruned attention, described
    assert all(manifest["parity"][name]["passed"] for name in manifest["parity"])
