"""bench-train's job: a real training step timed on the smallest network, and its table."""

from __future__ import annotations

import pytest

from mobilegen.train.bench import bench_train, render_bench_train


@pytest.mark.slow  # seconds: the quick suite stays under 3 minutes; CI runs it
def test_bench_train_times_real_steps_and_names_the_machine():
    result = bench_train(archs=("student_v2",), batch_size=2, warmup=1, repeats=2, device="cpu")
    row = result["archs"]["student_v2"]
    assert result["device"] == "cpu" and result["batch"] == 2 and result["machine"]["cpu"]
    assert 0 < row["median_s"] <= row["p90_s"] and row["images_per_s"] == 2 / row["median_s"]
    lines = render_bench_train(result).splitlines()
    assert lines[0].startswith(result["machine"]["cpu"]) and "batch 2" in lines[0]
    assert lines[2].split()[0] == "student_v2" and float(lines[2].split()[1]) == round(row["median_s"], 3)
