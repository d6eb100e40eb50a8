"""Per-step latency of a network and its files (verify/bench.py), timed by the one harness."""

from __future__ import annotations

import pytest

from mobilegen.contract.spec import DenoiserSpec
from mobilegen.verify.bench import FUSED, ORIGINAL, bench_directory_files


@pytest.mark.slow  # seconds: the quick suite stays under 3 minutes; CI runs it
def test_pytorch_rows_are_timed_and_named_with_machine_and_settings(v2_model):
    result = bench_directory_files(v2_model, {}, DenoiserSpec(), threads=1, warmup=1, repeats=3)
    names = [t["name"] for t in result["timings"]]
    assert names == [ORIGINAL, FUSED]
    assert all(t["repeats"] == 3 and t["device"] == "cpu" and t["p90_ms"] >= t["median_ms"] > 0 for t in result["timings"])
    assert (result["threads"], result["batch"], result["warmup"], result["repeats"]) == (1, 1, 1, 3)
    assert result["ratios"] == {} and result["machine"]["commit"] == result["commit"]
    assert ORIGINAL in result["table"] and result["peak_rss_mb"] > 0


def test_every_file_is_set_against_onnxruntime_the_foreign_file_and_the_floor(tiny, tiny_export):
    """The tiny export's files, one of them also read as a foreign file (its own input names)."""
    from mobilegen.contract.spec import ONNX_FILE, TFLITE_FP32

    folder = tiny_export[0]
    files = {n: folder / n for n in (ONNX_FILE, TFLITE_FP32)}
    foreign = (folder / TFLITE_FP32, {"x": "x", "t": "t", "y": "y"})
    result = bench_directory_files(tiny, files, DenoiserSpec(layout="NHWC"), threads=1, warmup=1, repeats=3, foreign=foreign)
    ms = {t["name"]: t["median_ms"] for t in result["timings"]}
    assert list(ms) == [ORIGINAL, FUSED, ONNX_FILE, TFLITE_FP32, f"foreign: {TFLITE_FP32}"]
    fp32 = result["ratios"][TFLITE_FP32]
    assert fp32["speedup_vs_onnxruntime"] == pytest.approx(ms[ONNX_FILE] / ms[TFLITE_FP32], rel=0.01)
    assert fp32["speedup_vs_foreign"] == pytest.approx(ms[f"foreign: {TFLITE_FP32}"] / ms[TFLITE_FP32], rel=0.01)
    assert result["ratios"][ONNX_FILE]["speedup_vs_onnxruntime"] == 1.0
    assert fp32["vs_floor"] == pytest.approx(ms[TFLITE_FP32] / result["floor"]["floor_ms"], abs=0.01)
    for words in ("speed vs onnxruntime on our ONNX", "speed vs the foreign file", "CPU family", "widest vector ISA"):
        assert words in result["table"]
