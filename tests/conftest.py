"""Session fixtures: each export the suite reads is built once and shared.

Real weights only where real activations are the point (parity margins, int8 ranges,
images that must look like images); the untrained default v2 everywhere else (a
conversion costs the same either way, and the default model needs no shared data).
Tests marked `slow` (heavy conversions and clusters) run with --slow, as CI does.

Under pytest-xdist (`-n 2`, as CI runs) the two workers run side by side, except the tests marked
`alone` (the server tests that time it against a model call or a deadline), which wait
until the other worker's test ends and hold it off until they end. Each worker runs on its own
share of the cores; an `alone` test on all of them. Each file goes to one worker, and
so do the tests of a shared session export (`xdist_shared_fixtures` in pyproject.toml): every
export is built once (xdist_alone.py).
"""

from __future__ import annotations

import os

import pytest
import torch
from helpers import REAL_V2, run, run_export

from mobilegen.models.checkpoint import seeded_model

pytest_plugins = ["xdist_alone", "pytester"]

# PyTorch's threads: 2 at most (under pytest-xdist, xdist_alone.py sets them to the worker's share of the cores).
torch.set_num_threads(min(2, len(os.sched_getaffinity(0))))


def pytest_addoption(parser):
    parser.addoption("--slow", action="store_true", help="also run the tests marked slow (CI runs them)")


def pytest_collection_modifyitems(config, items):
    if not config.getoption("--slow"):
        for item in items:
            if "slow" in item.keywords:
                item.add_marker(pytest.mark.skip(reason="slow: run with --slow (CI does)"))


@pytest.fixture(scope="session")
def real_v2():
    if not REAL_V2.is_file():
        pytest.skip(f"real v2 weights not found at {REAL_V2} (../shared/models is absent on this checkout)")
    return REAL_V2


@pytest.fixture(scope="session")
def v2_model():
    return seeded_model("student_v2").model


@pytest.fixture()
def v2_checkpoint(tmp_path, v2_model):
    path = tmp_path / "v2.pt"
    torch.save(v2_model.state_dict(), path)
    return path


@pytest.fixture(scope="session")
def real_v2_export(tmp_path_factory, real_v2):
    """The one real-weights export of the session: the real v2, batch 1, ONNX, fp32, fp16, int8
    dynamic and int8 full (quantization error depends on real ranges; the calibration set is the
    issue's measurement setting). int8 full misses its 30 dB gate on these weights (docs/int8.md:
    measured), so the export fails honestly: nothing is published, the folder lands in
    <out>.failed, and the tests read it there (every other file in it passed its gates)."""
    out = tmp_path_factory.mktemp("real") / "v2"
    res = run("tflite", real_v2, "--fp16", "--int8", "dynamic", "--int8", "full", "--calibration-samples", "66",
              "--no-bench", "-o", out)  # fmt: skip
    assert res.exit_code == 1 and not out.exists(), res.output + res.stderr
    for name in ("denoiser.onnx", "denoiser_float32.tflite", "denoiser_float16.tflite", "denoiser_int8_dynamic.tflite"):
        assert f"PASS {name}" in res.output, res.output
    assert "FAIL denoiser_int8_full.tflite" in res.output, res.output
    return out.with_name("v2.failed")


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


@pytest.fixture()
def tiny_ckpt(tmp_path, tiny):
    """The tiny network as a checkpoint file of ours (a fresh copy per test)."""
    from mobilegen.models.checkpoint import save_checkpoint

    return save_checkpoint(tmp_path / "tiny.pt", tiny)


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory):
    """The README's main command on the tiny network (helpers.tiny_model), bench included:
    `tflite tiny.pt --fp16`. Seconds instead of a minute, for every test where the real v2 is
    not the point; the checkpoint stays beside the folder, where verify and report find it."""
    from helpers import tiny_checkpoint

    root = tmp_path_factory.mktemp("tiny_export")
    res = run_export("tflite", tiny_checkpoint(root / "tiny.pt"), "--fp16", "-o", root / "v")
    return root / "v", res


@pytest.fixture()
def export_copy(tiny_export, tmp_path):
    """A private copy of the tiny export (NHWC, onnx + fp32 + fp16 TFLite), its checkpoint beside it."""
    import shutil

    out = tmp_path / "v"
    shutil.copytree(tiny_export[0], out)
    shutil.copy(tiny_export[0].parent / "tiny.pt", tmp_path / "tiny.pt")
    return out


@pytest.fixture(scope="session")
def tiny_b2(tiny_export):
    """The tiny export's checkpoint at batch 2 (a guided step is one call), fp32 + fp16."""
    out = tiny_export[0].parent / "b2"
    run_export("tflite", tiny_export[0].parent / "tiny.pt", "--batch", "2", "--fp16", "--no-bench", "-o", out)
    return out


@pytest.fixture(scope="session")
def pruned_export(tmp_path_factory):
    """The tiny network with L1 unstructured pruning: `tflite tiny.pt --fp16 --prune 0.3`."""
    from helpers import tiny_checkpoint

    root = tmp_path_factory.mktemp("pruned")
    run_export("tflite", tiny_checkpoint(root / "tiny.pt"), "--fp16", "--prune", "0.3", "--no-bench", "-o", root / "v")
    return root / "v"


@pytest.fixture(scope="session")
def pruned(v2_model):
    """The default v2, structurally pruned: a quarter of the channels, half the heads."""
    from mobilegen.compress import prune_channels

    return prune_channels(v2_model, 0.25, head_ratio=0.5)


@pytest.fixture(scope="session")
def tiny():
    """The tiny network (helpers.tiny_model): where the real v2 is not the point."""
    from helpers import tiny_model

    return tiny_model()


@pytest.fixture(scope="session")
def tiny_files(tmp_path_factory, tiny):
    """The tiny network's float32 and float16 TFLite files, NHWC batch 1 (built once, ~10 s)."""
    from mobilegen.contract.spec import DenoiserSpec
    from mobilegen.export.build import BuildOptions, build

    out = tmp_path_factory.mktemp("tiny")
    return build(tiny, DenoiserSpec(layout="NHWC"), out, BuildOptions(fp16=True), None).files


@pytest.fixture(scope="session")
def tiny_targets_export(tmp_path_factory, tiny):
    """`tflite tiny.pt --fp16 --targets gpu-fp16 --no-bench`: an export checked on the phone's
    default GPU path (about a minute), shared by the CLI and Kotlin tests."""
    from helpers import needs_target, tiny_checkpoint

    needs_target("gpu-fp16")
    root = tmp_path_factory.mktemp("tiny_targets")
    out = root / "out"
    res = run_export("tflite", tiny_checkpoint(root / "tiny.pt"), "--fp16", "--targets", "gpu-fp16", "--no-bench", "-o", out)
    return out, res
