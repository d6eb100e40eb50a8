"""`mobilegen-export profile` (jobs/profile.py): per operator type and per block, on LiteRT and
onnxruntime, into profile.json and profile.md beside a manifest it never rewrites."""

from __future__ import annotations

import json

import pytest
from helpers import run


@pytest.mark.slow
def test_profile_command_writes_its_files_and_leaves_the_manifest(export_copy):
    before = (export_copy / "manifest.json").read_bytes()
    res = run("profile", export_copy, "--repeats", "3", "--threads", "1")
    assert res.exit_code == 0, res.output + res.stderr
    profile = json.loads((export_copy / "profile.json").read_text())
    assert (export_copy / "manifest.json").read_bytes() == before
    assert set(profile["files"]) == {"denoiser.onnx", "denoiser_float32.tflite", "denoiser_float16.tflite"}
    for name, f in profile["files"].items():
        assert f["step_ms"] > 0 and f["per_block"]["sa6"]["ms"] > 0, name
        assert sum(row["count"] for row in f["per_type"].values()) == len(f["operators"])
    assert profile["sgemm_gflops"] > 0 and profile["copy_bandwidth_gbs"] > 0
    text = (export_copy / "profile.md").read_text()
    assert "| sa6 |" in text and "onnxruntime" in text and "SGEMM peak" in text
    assert run("verify", export_copy, "--classes", "").exit_code == 0, "profiling changes no hashed file"


def test_profile_refuses_a_folder_that_is_not_an_export(tmp_path):
    from mobilegen.errors import MobileGenError
    from mobilegen.jobs.profile import profile_directory

    with pytest.raises(MobileGenError, match="no manifest.json"):
        profile_directory(tmp_path, threads=1, repeats=3)
    assert list(tmp_path.iterdir()) == []
    res = run("profile", tmp_path)
    assert res.exit_code == 2 and "no manifest.json" in res.output + res.stderr
