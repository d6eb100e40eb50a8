"""A pytest plugin: under pytest-xdist, a test marked `alone` runs with no other test beside it.

Every test holds a shared file lock while it runs (setup, call, teardown) and an `alone` test an
exclusive one, so it waits until the other workers' tests end and holds them off until it ends.
A turnstile keeps new shared holders out while an exclusive one waits. The locks live in the
run's base folder (each worker's basetemp is a folder in it). Without xdist it does nothing.
"""

from __future__ import annotations

import fcntl
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest


def pytest_configure(config):
    config.addinivalue_line("markers", "alone: under pytest-xdist, no other test runs beside this one")


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
    if getattr(item.config, "workerinput", None) is None:
        yield
        return
    run_dir = Path(item.config.option.basetemp).parent
    alone = item.get_closest_marker("alone") is not None
    with ExitStack() as held:
        with flocked(run_dir / "turnstile.lock", fcntl.LOCK_EX):
            if alone:
                held.enter_context(flocked(run_dir / "tests.lock", fcntl.LOCK_EX))
        if not alone:
            held.enter_context(flocked(run_dir / "tests.lock", fcntl.LOCK_SH))
        yield
