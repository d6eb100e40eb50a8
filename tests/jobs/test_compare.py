"""`mobilegen-export compare` (jobs/compare.py): every variant measured side by side in one run."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from PIL import Image

from mobilegen.cli import export_cli
from mobilegen.models.checkpoint import save_checkpoint


@pytest.mark.slow
def test_compare_measures_every_variant_side_by_side(tmp_path):
    """`mobilegen-export compare`: the issue's table, every row measured in one run (on small networks)."""
    from mobilegen.compress import prune_channels
    from mobilegen.models.checkpoint import seeded_model

    # Small stand-ins for a checkpoint and its structurally pruned version: 204 and 49 MMAC a step (v2: 4770)
    unpruned = save_checkpoint(tmp_path / "small.pt", prune_channels(seeded_model("student_v2").model, 0.85, 0.5))
    ckpt = save_checkpoint(tmp_path / "pruned.pt", prune_channels(seeded_model("student_v2").model, 0.93, 0.75))
    out = tmp_path / "cmp"
    args = ["compare", str(unpruned), "--pruned", str(ckpt), "-o", str(out), "--classes", "ship", "--steps", "3",
            "--calibration-samples", "22", "--rounds", "1", "--image-rounds", "1", "--threads", "1"]  # fmt: skip
    res = CliRunner().invoke(export_cli, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    result = json.loads((out / "compare.json").read_text())
    rows = result["variants"]
    assert list(rows) == ["fp32", "fp16", "int8 dynamic", "int8 full", "onnxruntime: the fp32 ONNX file",
                          "fp32, unbounded attention", "structured-pruned fp32"]  # fmt: skip
    assert rows["fp32"]["step_psnr_db"]["min"] > 80 and rows["fp32"]["latency"]["speedup_vs_fp32"] == 1.0
    assert (
        rows["int8 dynamic"]["bytes"] < 0.7 * rows["fp32"]["bytes"]
    )  # small networks: the graph weighs much next to the weights
    assert rows["structured-pruned fp32"]["macs_per_step"] < rows["fp32"]["macs_per_step"] / 1.5
    for row in rows.values():
        assert row["latency"]["calls"] == 10 and row["latency"]["p90_ms"] >= row["latency"]["median_ms"] > 0
        assert row["latency"]["vs_floor"] == pytest.approx(row["latency"]["median_ms"] / result["floor"]["floor_ms"], abs=0.01)
    assert rows["onnxruntime: the fp32 ONNX file"]["latency"]["speedup_vs_onnxruntime"] == 1.0
    assert rows["onnxruntime: the fp32 ONNX file"]["step_psnr_db"]["min"] > 80, "our ONNX computes the model"
    assert result["floor"]["sgemm_gflops"] > 0 and "x floor" in (out / "compare.md").read_text()
    for name in ("fp32", "fp32, unbounded attention"):  # the same network, run by the same runtime
        assert rows[name]["trajectory"]["min_ssim"] > 0.999 and rows[name]["trajectory"]["min_psnr_db"] > 60, name
    assert result["pytorch_sdpa_latency"]["median_ms"] > 0 and result["threads"] == 1
    assert all(row["image_ms"]["calls"] == 1 and row["image_ms"]["median_ms"] > 0 for row in rows.values())
    assert result["commit"] and result["machine"]["flags"] is not None
    assert "| int8 full |" in (out / "compare.md").read_text()
    assert Image.open(out / "samples.png").size[1] > 7 * 64  # a row per variant, plus the reference


def test_existing_outputs_are_refused_before_any_work(tmp_path):
    from mobilegen.errors import OutputError
    from mobilegen.jobs.compare import OUTPUTS, compare
    from mobilegen.models.checkpoint import default_model

    out = tmp_path / "cmp"
    out.mkdir()
    (out / "samples.png").write_bytes(b"mine")
    with pytest.raises(OutputError, match="samples.png already exists"):
        compare(default_model(), None, out, threads=1)
    assert [p.name for p in out.iterdir()] == ["samples.png"] and "samples.png" in OUTPUTS
