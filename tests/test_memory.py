"""Issue 17: bounded attention, the depth-first operator order, memory measured in a fresh process, the gate."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from helpers import run

from mobilegen.contract.defaults import TENSOR_MB as DEFAULT_TENSOR_MB
from mobilegen.export.schedule import depth_first_order
from mobilegen.models.budget import MB, min_budget, plan_attention, set_bounded_attention
from mobilegen.runtime.tflite_file import graph_memory, peak_live_bytes, read_graph
from mobilegen.verify.memory import measure_torch


@pytest.mark.parametrize("budget", [16.0, 4.0, 3.0])
def test_bounded_attention_computes_the_same_rows(v2_model, budget):
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    t, y = torch.tensor([10.0, 900.0]), torch.tensor([3, -1], dtype=torch.int32)
    model = v2_model.eval().set_attention("math")
    with torch.inference_mode():
        set_bounded_attention(model, 2, None)
        ref = model(x, t, y)
        plans = set_bounded_attention(model, 2, budget * 2)
        bounded = model(x, t, y)
        model.set_attention("sdpa")
        fused = model(x, t, y)
    set_bounded_attention(model, 2, None)
    assert all(p.score_bytes <= budget * 2 * MB for p in plans)
    assert next(p for p in plans if p.name == "sa6").query_chunk < 4096
    assert torch.equal(bounded, ref), "softmax runs over whole key rows: every row is the same number"
    assert (fused - ref).abs().max() < 1e-5


def test_plan_splits_heads_only_when_one_row_of_all_heads_is_too_large(v2_model):
    plans = {p.name: p for p in plan_attention(v2_model, 1, 3.0)}
    assert (plans["sa6"].head_group, plans["sa6"].query_chunk) == (4, 32)
    assert min_budget(v2_model, 1) == 3 * MB  # up3's concatenation, [1, 192, 64, 64]


def test_a_budget_below_one_row_is_refused_before_anything_is_written(tmp_path):
    out = tmp_path / "out"
    res = run("onnx", "-o", out, "--max-tensor-mb", "0.5")
    assert res.exit_code == 2
    assert "smallest feasible budget is 3.000 MB" in res.stderr
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_every_tflite_graph_stays_within_the_tensor_budget(default_export):
    """Read from the flatbuffers: no tensor above the budget, and the operator order reuses the chunks."""
    out, _ = default_export
    for path in sorted(out.glob("*.tflite")):
        mem = graph_memory(path)
        assert mem.largest_tensor_bytes <= DEFAULT_TENSOR_MB * MB, (path.name, mem)
        # Breadth-first (onnx2tf's order) keeps every sa6 chunk's scores alive: 260 MB and more.
        assert mem.peak_live_bytes < 24 * MB, (path.name, mem)
        g = read_graph(path.read_bytes())
        assert peak_live_bytes(g, depth_first_order(g)) == mem.peak_live_bytes, "the file is already in that order"


def test_memory_is_measured_in_a_fresh_process_and_recorded(default_export):
    out, res = default_export
    manifest = json.loads((out / "manifest.json").read_text())
    for name, entry in manifest["files"].items():
        if name.endswith((".onnx", ".tflite")):
            m = entry["memory"]
            assert "fresh subprocess" in m["method"] and "VmHWM" in m["method"]
            assert 5 < m["peak_rss_mb"] <= m["limit_mb"] and m["passed"], (name, m)
            assert m["bare_rss_mb"] > 0 and m["reset"] is True
    assert "peak RSS" in res.output
    assert "Memory" in (out / "report.md").read_text()


def test_pytorch_is_measured_the_same_way():
    m = measure_torch(None, 1, 1, "math", DEFAULT_TENSOR_MB)
    assert 0 < m["peak_rss_mb"] < 200 and "torch" in m["method"]


@pytest.mark.slow
def test_a_tiny_memory_limit_fails_like_a_parity_gate_and_keeps_the_earlier_export(tmp_path):
    out = tmp_path / "v2"
    assert run("onnx", "-o", out).exit_code == 0
    before = (out / "manifest.json").read_bytes()
    res = run("tflite", "-o", out, "--overwrite", "--no-bench", "--max-memory-mb", "1")
    assert res.exit_code == 1
    assert "memory gate failed" in res.stderr and "exceeds --max-memory-mb 1" in res.stderr
    assert "largest intermediate tensor" in res.stderr  # named, with its size
    assert (out / "manifest.json").read_bytes() == before, "the earlier good export is untouched"
    failed = json.loads((tmp_path / "v2.failed" / "manifest.json").read_text())
    assert failed["status"] == "failed"
    assert failed["files"]["denoiser_float32.tflite"]["memory"]["passed"] is False


def test_sample_with_bounded_attention_draws_the_same_image(tmp_path):
    from mobilegen.cli import main_cli

    paths = [tmp_path / "plain.png", tmp_path / "bounded.png"]
    for path, extra in zip(paths, ([], ["--max-tensor-mb", "8"])):
        res = CliRunner().invoke(main_cli, ["sample", "--steps", "2", "--device", "cpu", "-o", str(path), *extra])
        assert res.exit_code == 0, res.output
    assert paths[0].read_bytes() == paths[1].read_bytes()
    res = CliRunner().invoke(main_cli, ["sample", "--steps", "2", "--max-tensor-mb", "1", "-o", str(tmp_path / "x.png")])
    assert res.exit_code == 2 and "smallest feasible" in res.stderr


def test_server_models_get_bounded_attention():
    from mobilegen.serve.config import ModelSource, ServeConfig
    from mobilegen.serve.models import load_model

    served = load_model(ModelSource(None), ServeConfig(device="cpu", max_batch=4, max_tensor_mb=16.0))
    try:
        sa6 = served.batcher.run.model.sa6  # the TorchRunner's model
        assert 0 < sa6.query_chunk < 4096 and 4 * sa6.head_group * sa6.query_chunk * 4096 * 4 <= 16 * MB
    finally:
        served.batcher.close()
