"""One server for the tests that only send requests: the untrained default v2, 2 steps."""

from __future__ import annotations

import pytest
from serving import FAST, running

from mobilegen.serve import ServeConfig


@pytest.fixture(scope="session")
def url():
    with running(ServeConfig(**FAST, max_wait_ms=20)) as base:
        yield base
