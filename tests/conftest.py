from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from mobilegen.cli import export_cli
from mobilegen.models.checkpoint import seeded_model

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
REAL_V2 = SHARED / "models" / "mobilegen_v2_student.pt"

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def real_v2() -> Path:
    if not REAL_V2.is_file():
        pytest.skip(f"real v2 weights not found at {REAL_V2} (../shared/models is absent on this checkout)")
    return REAL_V2


@pytest.fixture(scope="session")
def v2_model():
    return seeded_model("student_v2").model


@pytest.fixture()
def v2_checkpoint(tmp_path, v2_model) -> Path:
    path = tmp_path / "v2.pt"
    torch.save(v2_model.state_dict(), path)
    return path


def run_export(*args):
    res = CliRunner().invoke(export_cli, [str(a) for a in args], catch_exceptions=False)
    assert res.exit_code == 0, res.output + res.stderr
    return res


@pytest.fixture(scope="session")
def real_v2_export(tmp_path_factory, real_v2) -> Path:
    """The issue's command on the real weights: tflite CKPT --fp16 --prune 0.3."""
    out = tmp_path_factory.mktemp("tflite") / "v2"
    run_export("tflite", real_v2, "--fp16", "--prune", "0.3", "--no-bench", "-o", out)
    return out


@pytest.fixture(scope="session")
def v2_b1(tmp_path_factory, real_v2) -> Path:
    """The real v2 weights, batch 1, fp32 + fp16 (no pruning)."""
    out = tmp_path_factory.mktemp("b1") / "v2"
    run_export("tflite", real_v2, "--fp16", "--no-bench", "-o", out)
    return out


@pytest.fixture(scope="session")
def v2_b2(tmp_path_factory, real_v2) -> Path:
    """The same at batch 2 (a guided step is one call)."""
    out = tmp_path_factory.mktemp("b2") / "v2"
    run_export("tflite", real_v2, "--batch", "2", "--fp16", "--no-bench", "-o", out)
    return out


@pytest.fixture(scope="session")
def default_export(tmp_path_factory):
    """The README's main command on a fresh machine: `mobilegen-export tflite --fp16`, no checkpoint."""
    cwd = tmp_path_factory.mktemp("fresh")
    old = os.getcwd()
    os.chdir(cwd)
    try:
        res = run_export("tflite", "--fp16")
    finally:
        os.chdir(old)
    return cwd / "artifacts" / "default", res
