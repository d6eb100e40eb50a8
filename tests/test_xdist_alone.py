"""tests/xdist_alone.py, run for real: two pytest-xdist workers on a small suite."""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path

import pytest

RECORD = """
import json, os, time

def record(name, seconds=0.4):
    start = time.monotonic()
    time.sleep(seconds)
    with open(os.environ["SPANS"], "a") as f:
        row = [name, start, time.monotonic(), os.environ["PYTEST_XDIST_WORKER"], sorted(os.sched_getaffinity(0))]
        f.write(json.dumps(row) + "\\n")
"""

SPANS = """
import pytest
from record import record

@pytest.mark.parametrize("i", range(6))
def test_side_by_side(i):
    record(f"side{i}")

@pytest.mark.alone
@pytest.mark.parametrize("i", range(2))
def test_alone(i):
    record(f"alone{i}")
"""

GROUPS = """
import pytest
from record import record

@pytest.fixture(scope="session")
def shared():
    return 1

@pytest.mark.parametrize("i", range(4))
def test_file(i):
    record(f"{__name__}-file{i}", 0.05)

@pytest.mark.parametrize("i", range(2))
def test_shared(shared, i):
    record(f"{__name__}-shared{i}", 0.05)

@pytest.mark.alone
def test_alone_here():
    record(f"alone-{__name__}", 0.05)
"""


LONG = """
from record import record

def test_long0():
    record("long0", 6.0)  # handed out first (xdist_first), it outlasts every other group

def test_long1():
    record("long1", 0.5)

def test_long2():
    record("long2", 0.5)  # the other worker is done by now: every core
"""


def run_suite(pytester, monkeypatch, tmp_path) -> list[list]:
    spans_file = tmp_path / "spans.jsonl"
    monkeypatch.setenv("SPANS", str(spans_file))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]))
    pytester.makepyfile(record=RECORD, test_spans=SPANS, test_groups_a=GROUPS, test_groups_b=GROUPS, test_long=LONG)
    pytester.makeini("[pytest]\nxdist_shared_fixtures = shared\nxdist_first = test_long.py\n")
    result = pytester.runpytest_subprocess("-n", "2", "--dist", "loadgroup", "-p", "xdist_alone", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=25)
    return [json.loads(line) for line in spans_file.read_text().splitlines()]


@pytest.mark.slow  # two pytest-xdist sessions (~15 s): the harness CI runs on, checked where CI runs
def test_an_alone_test_runs_by_itself_on_every_core_and_groups_stay_on_one_worker(pytester, monkeypatch, tmp_path):
    records = run_suite(pytester, monkeypatch, tmp_path)
    spans = {name: (start, end) for name, start, end, _, _ in records}

    def overlap(a, b):
        return spans[a][0] < spans[b][1] and spans[b][0] < spans[a][1]

    alones = [name for name in spans if name.startswith("alone")]  # two in test_spans, one in each groups file
    others = [name for name in spans if not name.startswith("alone")]
    first_worker = next(worker for name, *_, worker, _ in records if name == "long0")
    assert spans["long0"][0] == min(start for _, start, _, worker, _ in records if worker == first_worker), "xdist_first"
    assert len(alones) == 4 and not any(overlap(alone, name) for alone in alones for name in others)
    assert not any(spans["alone0"][0] < spans[name][0] < spans["alone1"][1] for name in others), "held between them"
    assert len({worker for name, _, _, worker, _ in records if name in alones}) == 1, "the alone tests are one group"
    assert any(overlap(a, b) for a in others for b in others if a < b), "the other tests ran side by side"

    workers = defaultdict(set)  # each file's own tests, and the tests of the shared fixture across files
    for name, _, _, worker, _ in records:
        if name.startswith("test_groups"):
            workers[name.split("-")[0] if "-file" in name else "shared"].add(worker)
    assert dict(workers).keys() == {"test_groups_a", "test_groups_b", "shared"}
    assert all(len(w) == 1 for w in workers.values()), dict(workers)

    # Each worker on its own share of the cores while the other works; an alone test on all of them,
    # and so the tests of the last worker left.
    everything, ends = os.sched_getaffinity(0), defaultdict(float)
    for name, _, end, worker, _ in records:
        ends[worker] = max(ends[worker], end)
    cpus = defaultdict(set)
    for name, start, _, worker, cpu in records:
        other_busy = any(start < end for w, end in ends.items() if w != worker)
        cpus["alone" if name.startswith("alone") else worker if other_busy else "last"] |= set(cpu)
    assert cpus.pop("alone") == everything and cpus.pop("last") == everything
    assert len(everything) < 2 or (not set.intersection(*cpus.values()) and set.union(*cpus.values()) == everything), cpus
    assert set(next(cpu for name, *_, cpu in records if name == "long2")) == everything


def test_every_group_handed_out_first_exists():
    """xdist_first (pyproject.toml) names test files and shared fixtures that exist: a stale name would
    silently stop ordering anything."""
    import tomllib

    from helpers import ROOT

    ini = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    shared = set(ini["xdist_shared_fixtures"])
    stale = [g for g in ini["xdist_first"] if g not in shared and not (ROOT / g).is_file()]
    assert ini["xdist_first"] and not stale and len(set(ini["xdist_first"])) == len(ini["xdist_first"]), stale
