"""The one timing harness (verify/timing.py): nearest-rank p90, warm-up then timed calls, and
ratios only between rows of the same device."""

from __future__ import annotations

from mobilegen.verify.timing import Timing, machine, machine_line, p90, summarize, table, time_calls


def test_p90_is_nearest_rank_and_summaries_round_to_microseconds():
    assert p90([5.0, 1.0, 3.0, 2.0, 4.0, 6.0, 7.0, 8.0, 9.0, 10.0]) == 9.0  # ceil(0.9 * 10) = 9th smallest
    assert p90([4.0]) == 4.0 and p90([1.0, 2.0, 30.0]) == 30.0
    assert summarize([1.0, 2.0, 3.00049]) == {"median_ms": 2.0, "p90_ms": 3.0, "calls": 3}


def test_warm_up_calls_are_run_but_not_timed_and_every_call_is_synced():
    calls, syncs = [], []
    samples = time_calls(lambda: calls.append(1), warmup=2, repeats=3, sync=lambda: syncs.append(1))
    assert len(calls) == len(syncs) == 5 and len(samples) == 3 and all(s >= 0 for s in samples)


def test_a_ratio_is_taken_only_against_rows_of_the_references_device():
    rows = [Timing("pytorch", 10.0, 12.0, 5.0, 20, "cpu"), Timing("tflite", 5.0, 6.0, 1.0, 20, "cpu"),
            Timing("pytorch on CUDA", 1.0, 1.1, 9.0, 20, "cuda", "float16")]  # fmt: skip
    lines = table(rows, reference="pytorch").splitlines()
    assert lines[0].split()[:2] == ["backend", "device"]
    assert lines[1].endswith("1.00x") and lines[2].endswith("2.00x")
    assert lines[3].endswith("-") and "float16" in lines[3], "a CUDA row is never compared with the CPU reference"
    assert rows[0].to_dict()["median_ms"] == 10.0


def test_the_machine_is_named_with_its_commit():
    m = machine()
    assert m["cores"] >= 1 and m["commit"] and m["python"]
    line = machine_line(m)
    assert line.startswith(m["cpu"]) and f"{m['cores']} cores" in line and m["commit"] in line
