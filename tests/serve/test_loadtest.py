"""The serving benchmark's arithmetic (serve/loadtest.py): batching from two /metrics scrapes,
the modes, and the throughput ratios; tests/serve/test_soak.py runs it against a real server."""

from __future__ import annotations

import pytest

from mobilegen.errors import InvalidInput
from mobilegen.serve.loadtest import BATCH_SERIES, batching, bench_table, parse_modes, ratios


def test_batching_is_the_difference_of_two_scrapes():
    before = dict.fromkeys(BATCH_SERIES, 10.0)
    after = {"mobilegen_batch_size_sum": 40.0, "mobilegen_batch_size_count": 20.0, "mobilegen_batch_requests_sum": 25.0,
             "mobilegen_batch_requests_count": 20.0, "mobilegen_denoiser_calls_dropped_total": 13.0}  # fmt: skip
    assert batching(before, after) == {"model_calls": 10, "rows_per_call": 3.0, "requests_per_call": 1.5, "dropped_calls": 3}
    assert batching(before, before)["rows_per_call"] == 0.0  # no call, no division by zero


def test_modes_are_checked():
    assert parse_modes("on, off,ray2,ray1-serve") == ["on", "off", "ray2", "ray1-serve"]
    for bad in ("", "fast", "ray-serve"):
        with pytest.raises(InvalidInput, match="use on, off, rayN or rayN-serve"):
            parse_modes(bad)


def test_ratios_are_taken_between_modes_that_were_measured():
    def row(mode, rps):
        return {"mode": mode, "max_batch": 32, "requests": 10, "errors": 0, "rps": rps, "p50_s": 1.0, "p90_s": 2.0,
                "rows_per_call": 4.0, "requests_per_call": 2.0, "error_examples": []}  # fmt: skip

    results = [row("on", 3.0), row("off", 1.0), row("on", 5.0), row("ray1", 2.0), row("ray2", 3.0)]
    assert ratios(results) == ["throughput ratio on/off: 4.00x", "throughput ratio 2 replicas / 1 replica: 1.50x"]
    table = bench_table(results[:2]).splitlines()
    assert table[0].split()[:3] == ["batching", "max", "batch"] and table[1].startswith("on ")
    assert table[-1] == "throughput ratio on/off: 3.00x"
