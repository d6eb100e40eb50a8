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
