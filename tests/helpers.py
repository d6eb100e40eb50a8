"""What many tests share: the paths of the repository and the shared data, one way to run a
command, and the checks of a refused command and of an export folder."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from mobilegen.cli import export_cli, main_cli

ROOT = Path(__file__).resolve().parents[1]  # the repository
SHARED = ROOT.parent / "shared"
REAL_V2 = SHARED / "models" / "mobilegen_v2_student.pt"


def run(*args, cli=export_cli):
    """A command as a user types it, in this process; returns the Result (exit code, output)."""
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def run_main(*args):
    return run(*args, cli=main_cli)


def run_export(*args):
    """A command that must succeed."""
    res = run(*args)
    assert res.exit_code == 0, res.output + res.stderr
    return res


def demo_data(root: Path, per_class: int = 2, test_per_class: int = 0) -> Path:
    """The demo folder (write_demo_folder) with `test_per_class` held-out images per class, or no
    test/ split at all (0): a run validates every held-out image at 5 timesteps at its end, which on
    the full split (20 images) was most of a 2-step training run. Only the tests that check
    validation keep a split."""
    from mobilegen.train import write_demo_folder

    write_demo_folder(root, per_class=per_class)
    if test_per_class == 0:
        shutil.rmtree(root / "test")
    for image in (root / "test").glob("*/*.png"):
        if int(image.stem) >= test_per_class:
            image.unlink()
    return root


def manifest_of(directory: Path) -> dict:
    return json.loads((directory / "manifest.json").read_text())


def dead_pid() -> int:
    """The PID of a process that has exited (for leftovers "of a killed run")."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def one_line(res, code: int = 2) -> str:
    """The error of a refused command: exit code, one line, no traceback."""
    assert res.exit_code == code, res.output + res.stderr
    assert res.stderr.count("\n") == 1 and "Traceback" not in res.output + res.stderr, res.stderr
    return res.stderr


def rehash(folder: Path, name: str) -> None:
    """Update the manifest to the file's new content, as a careless user would."""
    m = manifest_of(folder)
    data = (folder / name).read_bytes()
    m["files"][name].update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))
    (folder / "manifest.json").write_text(json.dumps(m))


def assert_refused(res, *needles):
    """Exit 2 with one line naming every needle, no traceback."""
    text = res.stderr
    assert res.exit_code == 2, res.output + res.stderr
    assert text.count("\n") == 1 and "Traceback" not in res.output + text, text
    for needle in needles:
        assert needle in text, text


def earlier_export(folder: Path) -> Path:
    """A folder as an earlier export left it: a manifest with our schema_version, and our files only."""
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps({"schema_version": 1, "status": "passed", "earlier": True}))
    (folder / "denoiser.onnx").write_bytes(b"earlier")
    (folder / "report.md").write_text("earlier")
    return folder


def tiny_model(seed: int = 1):
    """The v2 UNet pruned to a tenth of its channels and a quarter of its heads (an export of it
    takes seconds, qemu runs a step in seconds), with non-zero biases: an untrained model's zero
    biases let onnxsim drop the attention's bias, which turns its input projection into a
    BATCH_MATMUL with a constant operand (XNNPACK cannot run that with FORCE_FP16; a trained model
    never has that graph)."""
    import torch

    from mobilegen.compress.structured import prune_channels
    from mobilegen.models.checkpoint import seeded_model

    model = prune_channels(seeded_model("student_v2").model, 0.9, 0.75)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=generator))
    return model


def tiny_checkpoint(path: Path) -> Path:
    from mobilegen.models.checkpoint import save_checkpoint

    return save_checkpoint(path, tiny_model())


def narrow_checkpoint(path: Path) -> Path:
    """The untrained default v2 (seed 0) at a tenth of its channels, every head kept (a model whose
    heads were pruned is not pruned again): a network to prune, in seconds."""
    from mobilegen.compress.structured import prune_channels
    from mobilegen.models.checkpoint import save_checkpoint, seeded_model

    return save_checkpoint(path, prune_channels(seeded_model("student_v2").model, 0.9, 0.0))


def needs_target(*names: str) -> None:
    """Skip, naming what is missing and the install command, unless every phone path can run here."""
    import pytest

    from mobilegen.runtime.targets import TARGETS, problem

    for name in names:
        if missing := problem(TARGETS[name]):
            pytest.skip(f"{name}: needs {missing}; set it up with: bash scripts/install.sh")
