"""compare-budgets' job: what it refuses before building anything, and the table it prints."""

from __future__ import annotations

import math

import pytest

from mobilegen.errors import InvalidInput
from mobilegen.jobs.budgets import budget_name, compare_budgets, render_budgets


@pytest.mark.parametrize("budgets, message", [((), "at least one budget"), ((4.0, 16.0, 4.0), "each budget once: 4, 16, 4")])
def test_no_budget_or_a_repeated_one_is_refused_before_any_build(budgets, message):
    with pytest.raises(InvalidInput, match=message):
        compare_budgets(None, budgets)


def test_the_table_has_one_row_per_file_and_says_when_there_is_no_foreign_file():
    memory = {"peak_rss_mb": 55.0, "graph": {"largest_tensor_mb": 4.0, "peak_live_mb": 9.5}}
    row = {"median_ms": 40.0, "p90_ms": 42.0, "speedup_vs_first": 1.0, "speedup_vs_foreign": None, "memory": memory}
    result = {"machine": {"cpu": "Test CPU"}, "threads": 2, "batch": 1, "rounds": 3, "repeats_per_round": 4,
              "commit": "abc", "files": {budget_name(math.inf): row, budget_name(4.0): dict(row, speedup_vs_first=1.25)},
              "pytorch_sdpa_latency": {"median_ms": 60.0, "p90_ms": 61.0}}  # fmt: skip
    text = render_budgets(result)
    assert text.startswith("Test CPU, 2 threads, batch 1, 3 rounds x 4 calls, alternating (commit abc)")
    assert "| fp32, max tensor inf MB | 40.0 | 42.0 | 1.000x | - | 55.0 | 4.00 | 9.5 |" in text
    assert "| fp32, max tensor 4 MB | 40.0 | 42.0 | 1.250x | - |" in text


@pytest.mark.parametrize("splits", [(), ("diagonal",), ("per-head", "per-head")])
def test_an_unknown_or_repeated_split_is_refused_before_any_build(splits):
    with pytest.raises(InvalidInput, match="--splits: each of per-head, all-heads at most once"):
        compare_budgets(None, (4.0,), splits=splits)


def test_every_bounded_budget_is_built_once_per_split_and_an_unbounded_file_once():
    from mobilegen.jobs.budgets import variants

    assert variants((math.inf, 4.0), ("per-head", "all-heads")) == [(math.inf, "per-head"), (4.0, "per-head"), (4.0, "all-heads")]
    assert budget_name(4.0, "all-heads") == "fp32, max tensor 4 MB, all-heads" and budget_name(math.inf, "per-head").endswith("inf MB")
