"""The memory gate: peak RSS measured in a fresh process, recorded, and gated like parity."""

from __future__ import annotations

import json

import pytest
from helpers import run

from mobilegen.contract.defaults import TENSOR_MB as DEFAULT_TENSOR_MB
from mobilegen.verify.memory import measure_torch


def test_memory_is_measured_in_a_fresh_process_and_recorded(tiny_export):
    out, res = tiny_export
    manifest = json.loads((out / "manifest.json").read_text())
    for name, entry in manifest["files"].items():
        if name.endswith((".onnx", ".tflite")):
            m = entry["memory"]
            assert "fresh subprocess" in m["method"] and "VmHWM" in m["method"]
            assert 5 < m["peak_rss_mb"] <= m["limit_mb"] and m["passed"], (name, m)
            assert m["bare_rss_mb"] > 0 and m["reset"] is True
    assert "peak RSS" in res.output
    assert "Memory" in (out / "report.md").read_text()


@pytest.mark.slow  # seconds: the quick suite stays under 3 minutes; CI runs it
def test_pytorch_is_measured_the_same_way():
    m = measure_torch(None, 1, 1, "math", DEFAULT_TENSOR_MB)
    assert 0 < m["peak_rss_mb"] < 200 and "torch" in m["method"]


@pytest.mark.slow
def test_a_tiny_memory_limit_fails_like_a_parity_gate_and_keeps_the_earlier_export(tmp_path, tiny_ckpt):
    out = tmp_path / "v2"
    assert run("onnx", tiny_ckpt, "-o", out).exit_code == 0
    before = (out / "manifest.json").read_bytes()
    res = run("tflite", tiny_ckpt, "-o", out, "--overwrite", "--no-bench", "--max-memory-mb", "1")
    assert res.exit_code == 1
    assert "memory gate failed" in res.stderr and "exceeds --max-memory-mb 1" in res.stderr
    assert "largest intermediate tensor" in res.stderr  # named, with its size
    assert (out / "manifest.json").read_bytes() == before, "the earlier good export is untouched"
    failed = json.loads((tmp_path / "v2.failed" / "manifest.json").read_text())
    assert failed["status"] == "failed"
    assert failed["files"]["denoiser_float32.tflite"]["memory"]["passed"] is False
