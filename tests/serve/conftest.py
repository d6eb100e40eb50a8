"""One server for the tests that only send requests: the untrained default v2, 2 steps.
The tests that time the server against its own model call or a deadline (hang-ups, timeouts, a
burst) are marked `alone`: under pytest-xdist nothing runs beside them (tests/xdist_alone.py).
The others check answers, not times, and run beside other tests."""

from __future__ import annotations

import functools

import httpx
import pytest
from serving import FAST, running

from mobilegen.serve import ServeConfig


@pytest.fixture(autouse=True)
def patient_requests(monkeypatch):
    """httpx.get and httpx.post wait up to 60 s for an answer unless a test says otherwise (httpx's
    default is 5 s): beside another test's export, a 4-image request can take longer than that."""
    for name in ("get", "post"):
        monkeypatch.setattr(httpx, name, functools.partial(getattr(httpx, name), timeout=60))


@pytest.fixture(scope="session")
def url():
    with running(ServeConfig(**FAST, max_wait_ms=20)) as base:
        yield base
