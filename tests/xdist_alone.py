"""A pytest plugin for pytest-xdist runs (`-n 2 --dist loadgroup`): each file runs on one worker,
and a test marked `alone` runs with no other test beside it.

A file's tests go to one worker (its module fixtures are built once), and so do all the tests
that read a session fixture named in the ini list `xdist_shared_fixtures` (an export of a minute
is built once, not once per worker), and so do the tests marked `alone` (one group, handed out last).

A test marked `alone` (the server's that measure timeouts and latency) waits until the other
workers' tests end and holds them off until it ends: every test holds a shared file lock while it
runs (setup, call, teardown), an `alone` test an exclusive one (kept through the worker's next
test while that is `alone` too, and with PyTorch on every core), and a turnstile keeps new shared
holders out while it waits.
The groups are handed out in the order of their first test (xdist's reordering by test count is
off): the heavy tests first (slow ones that run, and those that read a session fixture of the
suite: the exports of minutes), then the quick ones, then the `alone` tests, which so wait for the
other worker's last quick test, not for an export. The locks live in the run's base folder (each
worker's basetemp is a folder in it). Without xdist only the groups are set, and they mean nothing.

Each worker runs on its own share of the cores (CPU affinity, inherited by what it starts: export
subprocesses, servers, torchrun ranks), so that the backends, which size their threads to the
cores they may use, do not spin against the other worker's threads (the quick suite: 175 s -> 147 s,
4m59 -> 4m17 of CPU time, on 2 cores). An `alone` test gets every core back while it runs, and so
do the tests of the last worker left (each worker says when it is done: done-<worker> in the base
folder). The longest groups are handed out first, longest first (the ini list `xdist_first`), so
that the run does not end with one worker alone on a long group.
"""

from __future__ import annotations

import fcntl
import os
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path

import pytest
import torch


def pytest_addoption(parser):
    parser.addini("xdist_shared_fixtures", "session fixtures whose tests all run on one worker", type="linelist")
    parser.addini("xdist_first", "groups handed out first, longest first (a file, or a shared fixture)", type="linelist")


def pin(cpus: set[int]) -> None:
    """Every thread of this process (and what it starts later) on these CPUs."""
    for tid in os.listdir("/proc/self/task"):
        with suppress(ProcessLookupError):  # a thread that ended meanwhile
            os.sched_setaffinity(int(tid), cpus)


def pytest_configure(config):
    config.addinivalue_line("markers", "alone: under pytest-xdist, no other test runs beside this one")
    worker = getattr(config, "workerinput", None)
    if worker is not None:  # each worker on its own share of the cores: its exports, servers and children
        config._all_cpus = os.sched_getaffinity(0)  # size their threads to that share, none spins on another's
        cpus, count = sorted(config._all_cpus), worker["workercount"]
        if len(cpus) >= count:
            pin(set(cpus[int(worker["workerid"].removeprefix("gw")) :: count]))
        torch.set_num_threads(min(2, len(os.sched_getaffinity(0))))  # PyTorch on that share too
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False  # hand the groups out in the order sorted below


def is_alone(item) -> bool:
    return item is not None and item.get_closest_marker("alone") is not None


def is_heavy(item) -> bool:
    """A test that runs marked `slow` (a conversion, a training run, a cluster) or reads a session
    fixture of the suite's own (an export, a compiled program)."""
    if item.get_closest_marker("slow") is not None and item.get_closest_marker("skip") is None:
        return True
    defs = item._fixtureinfo.name2fixturedefs.values()
    return any(d.scope == "session" and d.baseid.startswith("tests") for ds in defs for d in ds)


def group_of(item) -> str:
    return next(m.args[0] for m in item.iter_markers("xdist_group"))


@pytest.hookimpl(trylast=True)  # after every conftest has marked its `alone` tests
def pytest_collection_modifyitems(config, items):
    if getattr(config, "workerinput", None) is not None:
        first = config.getini("xdist_first")
        rank = lambda item: first.index(group_of(item)) if group_of(item) in first else len(first)
        items.sort(key=lambda item: (is_alone(item), not is_heavy(item), rank(item)))


def pytest_itemcollected(item):
    """The test's group (as it is collected, before xdist's hooks read the groups): a marker set
    later (a conftest's pytest_collection_modifyitems) comes too late for it."""
    used = [name for name in item.config.getini("xdist_shared_fixtures") if name in item.fixturenames]
    group = "alone" if is_alone(item) else used[0] if used else item.nodeid.split("::")[0]
    item.add_marker(pytest.mark.xdist_group(group))


@contextmanager
def flocked(path: Path, mode: int):
    with open(path, "a") as f:
        fcntl.flock(f, mode)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    config = item.config
    if getattr(config, "workerinput", None) is None:
        yield
        return
    run_dir = Path(config.option.basetemp).parent
    if not getattr(config, "_last_one", False) and len(list(run_dir.glob("done-*"))) == config.workerinput["workercount"] - 1:
        config._last_one = True  # every other worker is done: this one's tests get every core
        pin(config._all_cpus)
        torch.set_num_threads(len(config._all_cpus))
    if not is_alone(item):
        with flocked(run_dir / "turnstile.lock", fcntl.LOCK_EX):
            pass
        with flocked(run_dir / "tests.lock", fcntl.LOCK_SH):
            yield
        return
    if getattr(config, "_machine", None) is None:  # held from the first of a run of alone tests to the last
        config._machine = ExitStack()
        with flocked(run_dir / "turnstile.lock", fcntl.LOCK_EX):
            config._machine.enter_context(flocked(run_dir / "tests.lock", fcntl.LOCK_EX))
        config._machine.callback(torch.set_num_threads, torch.get_num_threads())
        config._machine.callback(pin, os.sched_getaffinity(0))
        pin(config._all_cpus)  # the machine is this test's: every core, PyTorch on each
        torch.set_num_threads(len(config._all_cpus))
    try:
        yield
    finally:
        if not is_alone(nextitem):
            config._machine.close()
            config._machine = None


def pytest_sessionfinish(session):
    """A worker whose tests are done says so: the last one left takes every core for the rest."""
    worker = getattr(session.config, "workerinput", None)
    if worker is not None:
        (Path(session.config.option.basetemp).parent / f"done-{worker['workerid']}").touch()
