"""tests/xdist_alone.py, run for real: two pytest-xdist workers, a test marked `alone` among others."""

from __future__ import annotations

import json
import os
from pathlib import Path

TESTS = """
import json, os, time, pytest

def record(name):
    start = time.monotonic()
    time.sleep(0.4)
    with open(os.environ["SPANS"], "a") as f:
        f.write(json.dumps([name, start, time.monotonic()]) + "\\n")

@pytest.mark.parametrize("i", range(6))
def test_side_by_side(i):
    record(f"side{i}")

@pytest.mark.alone
def test_alone():
    record("alone")
"""


def test_an_alone_test_overlaps_no_other_while_the_others_run_side_by_side(pytester, monkeypatch, tmp_path):
    spans_file = tmp_path / "spans.jsonl"
    monkeypatch.setenv("SPANS", str(spans_file))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]))
    pytester.makepyfile(test_spans=TESTS)
    result = pytester.runpytest_subprocess("-n", "2", "-p", "xdist_alone", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=7)
    spans = {name: (start, end) for name, start, end in map(json.loads, spans_file.read_text().splitlines())}

    def overlap(a, b):
        return spans[a][0] < spans[b][1] and spans[b][0] < spans[a][1]

    others = [name for name in spans if name != "alone"]
    assert not any(overlap("alone", name) for name in others)
    assert any(overlap(a, b) for a in others for b in others if a < b), "the other tests ran side by side"
