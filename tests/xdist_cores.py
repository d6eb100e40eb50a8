"""A pytest plugin for pytest-xdist runs (`-n 2 --dist loadgroup`): each file runs on one worker,
each worker owns a core, and a test marked `alone` owns the machine.

A file's tests go to one worker (its module fixtures are built once), and so do all the tests
that read a session fixture named in the ini list `xdist_shared_fixtures` (an export of a minute
is built once, not once per worker).

Each worker is pinned to one CPU of those the run may use (os.sched_setaffinity, inherited by
what it starts), so the runtimes' default thread count (`default_threads()`: the CPUs this
process may run on) and PyTorch's are one: two workers never run four threads on two cores,
where every operator of an XNNPACK step would wait at a barrier for a descheduled thread. Once
every other worker has finished, the last one takes all the CPUs back.

A test marked `alone` (the server's: they measure timeouts and latency) runs on all the CPUs with
no test beside it: every test holds a shared file lock while it runs (setup, call, teardown), an
`alone` test an exclusive one (kept through the worker's next test while that is `alone` too), and
a turnstile keeps new shared holders out while it waits. The `alone` tests are handed out first, so
they wait for the other worker's first tests, not for an export of minutes. The
locks live in the run's base folder (each worker's basetemp is a folder in it). Without xdist
this plugin does nothing.
"""

from __future__ import annotations

import fcntl
import os
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest
import torch


def pytest_addoption(parser):
    parser.addini("xdist_shared_fixtures", "session fixtures whose tests all run on one worker", type="linelist")


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups
def pytest_collection_modifyitems(config, items):
    shared = config.getini("xdist_shared_fixtures")
    if getattr(config, "workerinput", None) is not None:
        items.sort(key=lambda item: not is_alone(item))  # first: waits for short tests, not a long export
    for item in items:
        used = [name for name in shared if name in item.fixturenames]
        item.add_marker(pytest.mark.xdist_group(used[0] if used else item.nodeid.split("::")[0]))


def pytest_configure(config):
    config.addinivalue_line("markers", "alone: under pytest-xdist, no other test runs beside this one")
    worker = getattr(config, "workerinput", None)
    if worker is None:
        return
    run_dir = Path(config.option.basetemp).parent
    # held until this worker's process ends; created locked, so a worker not yet started never reads as done
    staging = run_dir / f".{worker['workerid']}.lock"
    config._worker_lock = open(staging, "a")  # noqa: SIM115
    fcntl.flock(config._worker_lock, fcntl.LOCK_EX)
    staging.rename(run_dir / f"{worker['workerid']}.lock")
    config._all_cpus = sorted(os.sched_getaffinity(0))
    index = int(worker["workerid"].removeprefix("gw"))
    if len(config._all_cpus) >= int(worker["workercount"]):
        use_cpus({config._all_cpus[index]})


def use_cpus(cpus) -> None:
    os.sched_setaffinity(0, cpus)
    torch.set_num_threads(len(cpus))


def others_finished(config) -> bool:
    me, count = config.workerinput["workerid"], int(config.workerinput["workercount"])
    run_dir = Path(config.option.basetemp).parent
    for name in (f"gw{i}" for i in range(count)):
        path = run_dir / f"{name}.lock"
        if name == me:
            continue
        if not path.exists():
            return False
        with open(path, "a") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            fcntl.flock(f, fcntl.LOCK_UN)
    return True


@contextmanager
def flocked(path: Path, mode: int):
    with open(path, "a") as f:
        fcntl.flock(f, mode)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def is_alone(item) -> bool:
    return item is not None and item.get_closest_marker("alone") is not None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    config = item.config
    if getattr(config, "workerinput", None) is None:
        yield
        return
    run_dir = Path(config.option.basetemp).parent
    if len(os.sched_getaffinity(0)) < len(config._all_cpus) and others_finished(config):
        use_cpus(config._all_cpus)
    if not is_alone(item):
        with flocked(run_dir / "turnstile.lock", fcntl.LOCK_EX):
            pass
        with flocked(run_dir / "tests.lock", fcntl.LOCK_SH):
            yield
        return
    # the machine is held from the first of a run of alone tests to the last: waiting for the
    # other worker's test before each one would idle a core for as long as that test takes
    if getattr(config, "_machine", None) is None:
        config._machine, config._pinned = ExitStack(), os.sched_getaffinity(0)
        with flocked(run_dir / "turnstile.lock", fcntl.LOCK_EX):
            config._machine.enter_context(flocked(run_dir / "tests.lock", fcntl.LOCK_EX))
        use_cpus(config._all_cpus)
    try:
        yield
    finally:
        if not is_alone(nextitem):
            config._machine.close()
            config._machine = None
            use_cpus(config._pinned)
