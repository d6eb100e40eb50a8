"""The measuring commands (mobilegen/cli/measure.py): perf-tables on the committed
measurement, compare-budgets and bench-train run for real on the untrained v2."""

from __future__ import annotations

import json

import pytest
from helpers import ROOT, run, run_main

COMPARE = ROOT / "docs" / "measurements" / "compare-cpu" / "compare.json"


def test_perf_tables_prints_the_committed_comparison():
    res = run("perf-tables", COMPARE, "--only", "variants")
    assert res.exit_code == 0, res.output
    assert res.output.startswith("Variants side by side (commit: 43c9686e39ee+dirty; machine: AMD EPYC, 2 cores")
    assert "| structured-pruned fp32 | 14.78 | 3,590,403 | 2.67 | 18.6 |" in res.output
    assert "Memory of each file" not in res.output
    both = run("perf-tables", COMPARE)
    assert "Memory of each file" in both.output and "| fp32, unbounded attention | 300.3 | 15.8 | 256.00 |" in both.output


def test_perf_tables_latency_from_a_bench_section_says_what_was_not_recorded(tmp_path):
    bench = tmp_path / "manifest.json"
    bench.write_text(json.dumps({"latency": {"threads": 2, "batch": 1, "timings": [
        {"name": "pytorch fp32 (fused sdpa)", "median_ms": 20.0, "p90_ms": 22.0, "load_ms": 5.0},
        {"name": "tflite fp32", "median_ms": 10.0, "p90_ms": 11.0, "load_ms": 1.5}]}}))  # fmt: skip
    res = run("perf-tables", "--bench", bench, "-o", tmp_path / "t.md")
    assert res.exit_code == 0, res.output
    text = (tmp_path / "t.md").read_text()
    assert "commit: not recorded" in text and "warm-up not recorded" in text
    assert "| tflite fp32 | 10.00 | 11.00 | 1.5 | - | 2.00x | - |" in text


def test_perf_tables_update_rewrites_a_stale_block_and_nothing_else(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # block ARGS are relative to where the command runs
    doc = tmp_path / "doc.md"
    doc.write_text("before\n\n<!-- perf_tables: docs/measurements/compare-cpu/compare.json --only memory -->\nold\n"
                   "<!-- /perf_tables -->\n\nafter\n")  # fmt: skip
    res = run("perf-tables", "--update", doc)
    assert res.exit_code == 0, res.output
    text = doc.read_text()
    assert text.startswith("before\n\n<!-- perf_tables:") and text.endswith("<!-- /perf_tables -->\n\nafter\n")
    assert "old" not in text and "| fp32 | 50.1 | 16.1 | 4.00 | 13.0 | 766 |" in text
    assert run("perf-tables", "--update", doc).exit_code == 0 and doc.read_text() == text


@pytest.mark.parametrize(
    "args, message",
    [
        (["--bench", "{tmp}/not.json"], "not JSON"),
        (["{tmp}/not.json", "{tmp}/not.json"], "one compare.json at most"),
        (["--update", "{tmp}/plain.md"], "no <!-- perf_tables: ARGS --> block"),
        (["--update", "--only", "variants", "{tmp}/plain.md"], "--update takes only"),
        ([], "nothing to print"),
    ],
)
def test_perf_tables_bad_input_is_one_line_and_exit_2(tmp_path, args, message):
    (tmp_path / "not.json").write_text("{")
    (tmp_path / "plain.md").write_text("no blocks\n")
    res = run("perf-tables", *[a.format(tmp=tmp_path) for a in args])
    assert res.exit_code == 2 and message in res.output, res.output


@pytest.mark.slow
def test_compare_budgets_builds_and_measures_each_budget(tmp_path):
    out = tmp_path / "budgets.json"
    res = run("compare-budgets", "--budgets", "inf,8", "--splits", "per-head,all-heads", "--rounds", "1", "--repeats", "2",
              "--threads", "1", "--json", out)  # fmt: skip
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    rows = [x for x in lines if x.startswith("| fp32, max tensor")]
    names = ["| fp32, max tensor inf MB", "| fp32, max tensor 8 MB, per-head", "| fp32, max tensor 8 MB, all-heads"]
    assert [r.split(" | ")[0] for r in rows] == names, res.output
    assert " 1.000x | - |" in rows[0] and lines[-2].startswith("PyTorch fp32 on the CPU, fused SDPA: ")
    data = json.loads(out.read_text())
    files = data["files"]
    assert data["budgets_mb"] == ["inf", 8.0] and data["attention_splits"] == ["per-head", "all-heads"] and data["commit"]
    assert files["fp32, max tensor inf MB"]["memory"]["graph"]["largest_tensor_mb"] > 8
    for split in ("per-head", "all-heads"):
        assert files[f"fp32, max tensor 8 MB, {split}"]["memory"]["graph"]["largest_tensor_mb"] <= 8
    assert all(f["median_ms"] > 0 and f["memory"]["peak_rss_mb"] > 0 for f in files.values())
    again = run("compare-budgets", "--budgets", "inf", "--json", out)
    assert again.exit_code == 2 and "--overwrite" in again.output  # refused before any conversion


@pytest.mark.parametrize(
    "budgets, message", [("0", "range x>0"), ("nan", "not a finite number"), ("inf,16,inf", "each budget once")]
)
def test_compare_budgets_refuses_bad_budgets_before_any_work(budgets, message):
    res = run("compare-budgets", "--budgets", budgets)
    assert res.exit_code == 2 and message in res.output, res.output


def test_bench_train_times_one_architecture(tmp_path):
    out = tmp_path / "train.json"
    res = run_main("bench-train", "--arch", "student_v2", "--batch-size", "2", "--warmup", "0", "--repeats", "2",
                   "--device", "cpu", "--json", out)  # fmt: skip
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert "device cpu" in lines[0] and "batch 2" in lines[0]
    assert lines[1].split() == ["arch", "median", "s/step", "p90", "s/step", "images/s"]
    assert lines[2].split()[0] == "student_v2" and float(lines[2].split()[-1]) > 0
    data = json.loads(out.read_text())
    assert list(data["archs"]) == ["student_v2"] and data["repeats"] == 2 and data["machine"]["cores"]


def test_budgets_parse_comma_separated_positive_numbers_and_inf():
    import click

    from mobilegen.cli.measure import Budgets

    assert Budgets().convert("inf, 64,4,", None, None) == (float("inf"), 64.0, 4.0)
    with pytest.raises(click.BadParameter, match="0"):
        Budgets().convert("16,0", None, None)
