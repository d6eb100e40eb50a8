"""One server for the tests that only send requests: the untrained default v2, 2 steps.
Every server test runs alone under pytest-xdist: they measure timeouts and latency."""

from __future__ import annotations

from pathlib import Path

import pytest
from serving import FAST, running

from mobilegen.serve import ServeConfig


def pytest_collection_modifyitems(items):
    here = Path(__file__).parent
    for item in items:
        if here in item.path.parents:  # this folder's tests, not a test elsewhere that names one of its files
            item.add_marker(pytest.mark.alone)


@pytest.fixture(scope="session")
def url():
    with running(ServeConfig(**FAST, max_wait_ms=20)) as base:
        yield base
