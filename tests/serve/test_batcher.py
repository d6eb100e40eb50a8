"""The micro-batcher on its own: merged calls, errors, cancellation."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from serving import wait_until

from mobilegen.serve.batcher import Cancelled, MicroBatcher


def test_batcher_merges_waiting_calls_and_survives_errors():
    seen = []

    def run(x, t, y):
        seen.append(len(t))
        if (y < 0).any():
            raise RuntimeError("model failed")
        return x * 2 + t[:, None, None, None]

    batcher = MicroBatcher(run, max_rows=8, max_wait_s=0.5)
    try:
        barrier = threading.Barrier(4)

        def call(i):
            with batcher.session() as denoise:
                barrier.wait()
                return denoise(torch.full((2, 1, 1, 1), float(i)), torch.full((2,), float(i)), torch.zeros(2))

        with ThreadPoolExecutor(4) as pool:
            outs = list(pool.map(call, range(4)))
        assert [o.flatten().tolist() for o in outs] == [[3.0 * i] * 2 for i in range(4)]
        assert seen == [8]  # four sessions, one model call, no waiting once all four were queued
        with pytest.raises(RuntimeError, match="model failed"):
            batcher(torch.zeros(1, 1, 1, 1), torch.zeros(1), -torch.ones(1))
        assert batcher(torch.ones(1, 1, 1, 1), torch.zeros(1), torch.zeros(1)).item() == 2.0
        cancelled = threading.Event()
        cancelled.set()
        with batcher.session(cancelled) as denoise, pytest.raises(Cancelled):
            denoise(torch.zeros(1, 1, 1, 1), torch.zeros(1), torch.zeros(1))
    finally:
        batcher.close()
    assert not batcher.alive


def test_batcher_cancel_drops_a_queued_call_at_once():
    """One call runs (held inside the model); two more are queued. Cancelling one session
    fails its queued call at once, while the model is still busy; it never runs, and
    that session's next call is refused before it is queued."""
    release, seen, drops = threading.Event(), [], []

    def run(x, t, y):
        seen.append(t.tolist())
        release.wait(10)
        return x

    batcher = MicroBatcher(run, max_rows=1, max_wait_s=0, on_drop=drops.append)
    try:
        events = [threading.Event() for _ in range(3)]

        def call(i):
            with batcher.session(events[i]) as denoise:
                return denoise(torch.zeros(1, 1, 1, 1), torch.full((1,), float(i)), torch.zeros(1))

        with ThreadPoolExecutor(3) as pool:
            first = pool.submit(call, 0)
            wait_until(lambda: len(seen) == 1, 5)  # call 0 is inside the model
            queued = [pool.submit(call, i) for i in (1, 2)]
            wait_until(lambda: batcher.queued == 2, 5)  # both calls are waiting
            batcher.cancel(events[1])
            with pytest.raises(Cancelled):
                queued[0].result(timeout=1)  # at once: the model has not finished call 0
            assert not release.is_set() and drops == [1]
            release.set()
            assert first.result(timeout=5).shape == (1, 1, 1, 1) and queued[1].result(timeout=5) is not None
        assert seen == [[0.0], [2.0]]  # the cancelled call never reached the model
        with batcher.session(events[1]) as denoise, pytest.raises(Cancelled):
            denoise(torch.zeros(1, 1, 1, 1), torch.zeros(1), torch.zeros(1))
        assert seen == [[0.0], [2.0]]
    finally:
        batcher.close()
