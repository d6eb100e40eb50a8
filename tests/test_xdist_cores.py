"""tests/xdist_cores.py, run for real: two pytest-xdist workers, a test marked `alone` among others."""

from __future__ import annotations

import json
import os
from pathlib import Path

TESTS = """
import json, os, time, pytest

def record(name):
    from mobilegen.runtime.backends import default_threads
    start = time.monotonic()
    time.sleep(0.4)
    cpus = sorted(os.sched_getaffinity(0))
    with open(os.environ["SPANS"], "a") as f:
        f.write(json.dumps([name, start, time.monotonic(), cpus, default_threads()]) + "\\n")

@pytest.mark.parametrize("i", range(6))
def test_side_by_side(i):
    record(f"side{i}")

@pytest.mark.alone
def test_alone():
    record("alone")
"""


def test_workers_own_a_core_and_an_alone_test_owns_the_machine(pytester, monkeypatch, tmp_path):
    spans_file = tmp_path / "spans.jsonl"
    monkeypatch.setenv("SPANS", str(spans_file))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]))
    pytester.makepyfile(test_spans=TESTS)
    result = pytester.runpytest_subprocess("-n", "2", "-p", "xdist_cores", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=7)
    records = [json.loads(line) for line in spans_file.read_text().splitlines()]
    spans = {name: (start, end) for name, start, end, _, _ in records}

    def overlap(a, b):
        return spans[a][0] < spans[b][1] and spans[b][0] < spans[a][1]

    others = [name for name in spans if name != "alone"]
    assert not any(overlap("alone", name) for name in others)
    assert any(overlap(a, b) for a in others for b in others if a < b), "the other tests ran side by side"
    cpus = sorted(os.sched_getaffinity(0))
    for name, _, _, used, threads in records:
        if name == "alone":
            assert used == cpus and threads == len(cpus), "an alone test runs on every CPU"
        elif len(cpus) >= 2 and any(overlap(name, other) for other in others if other != name):
            assert len(used) == 1 and threads == 1, f"{name}: a worker beside another owns one core, {used}"
