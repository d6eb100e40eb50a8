"""An export made the way a user types it, shared by the export and verify job tests."""

from __future__ import annotations

import os

import pytest
from helpers import dead_pid, earlier_export, run, tiny_model

from mobilegen.files import host_tag
from mobilegen.models.checkpoint import save_checkpoint


@pytest.fixture(scope="module")
def relative_export(tmp_path_factory):
    """`onnx ckpt.pt -o out --overwrite`, paths typed relative, over an earlier export of ours,
    beside the staging folder a killed export of this host left, and one of another host
    sharing the disk (its PID means nothing here: it may be alive)."""
    proj = tmp_path_factory.mktemp("proj")
    save_checkpoint(proj / "ckpt.pt", tiny_model())
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
