"""Micro-batching: denoiser calls from concurrent requests run as one model call.

Every request runs the library sampler (``run_sampler``) in its own thread; its
denoiser is a ``MicroBatcher`` session. A call puts (x, t, y) in a queue and blocks;
one worker thread takes everything that is waiting, concatenates it (requests may be
at different timesteps: t is per sample), runs the model once and hands each caller
its rows back. The worker waits at most ``max_wait_s`` for more calls, and not at all
once every active session has a call queued, so a lone request is never delayed and
lock-stepped requests line up with no idle time.

Cancellation. A request that is abandoned (the client hung up, or the timeout passed)
calls ``cancel(event)``: its queued call is dropped at once (its caller gets
``Cancelled``), and its next call raises ``Cancelled`` before it is queued, so its
sampling loop stops between steps. Only the model call already running finishes;
a new request then waits at most that one call, not for the abandoned requests' work.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

import torch

log = logging.getLogger(__name__)

Run = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
OnBatch = Callable[[int, int, float], None]  # rows, calls, seconds
OnDrop = Callable[[int], None]  # queued calls of cancelled requests dropped


class Cancelled(Exception):
    """The request gave up (client gone, timeout, shutdown); its sampling loop stops at the next step."""


@dataclass
class _Call:
    x: torch.Tensor
    t: torch.Tensor
    y: torch.Tensor
    future: Future
    cancelled: threading.Event | None

    @property
    def abandoned(self) -> bool:
        return self.cancelled is not None and self.cancelled.is_set()

    @property
    def rows(self) -> int:
        return int(self.t.shape[0])


class MicroBatcher:
    def __init__(
        self,
        run: Run,
        max_rows: int = 32,
        max_wait_s: float = 0.005,
        name: str = "model",
        on_batch: OnBatch | None = None,
        on_drop: OnDrop | None = None,
    ):
        self.run, self.max_rows, self.max_wait_s = run, max_rows, max_wait_s
        self.on_batch, self.on_drop = on_batch, on_drop
        self._cond = threading.Condition()
        self._queue: deque[_Call] = deque()
        self._active = 0
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name=f"batcher-{name}", daemon=True)
        self._thread.start()

    @property
    def active(self) -> int:
        """Sampling loops currently using this batcher."""
        return self._active

    @property
    def queued(self) -> int:
        """Denoiser calls waiting for the model."""
        return len(self._queue)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and not self._closed

    @contextmanager
    def session(self, cancelled: threading.Event | None = None) -> Iterator[Run]:
        """A denoiser for one request's sampling loop; raises Cancelled once ``cancelled`` is set."""
        with self._cond:
            self._active += 1
        try:
            yield lambda x, t, y: self._submit(x, t, y, cancelled)
        finally:
            with self._cond:
                self._active -= 1
                self._cond.notify_all()

    def __call__(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self._submit(x, t, y, None)

    def _submit(self, x, t, y, cancelled: threading.Event | None) -> torch.Tensor:
        if cancelled is not None and cancelled.is_set():
            raise Cancelled()
        call = _Call(x, t, y, Future(), cancelled)
        with self._cond:
            if self._closed:
                raise Cancelled()
            self._queue.append(call)
            self._cond.notify_all()
        return call.future.result()

    def cancel(self, cancelled: threading.Event) -> None:
        """Abandon the session made with ``cancelled``: drop its queued call now, refuse its next one."""
        cancelled.set()
        with self._cond:
            self._drop_abandoned()
            self._cond.notify_all()

    def _drop_abandoned(self) -> None:
        """Fail every queued call of a cancelled session (caller holds the lock)."""
        keep, dropped = deque(), []
        for call in self._queue:  # one pass: an event may be set meanwhile, outside the lock
            (dropped if call.abandoned else keep).append(call)
        if not dropped:
            return
        self._queue = keep
        for call in dropped:
            call.future.set_exception(Cancelled())
        if self.on_drop is not None:
            self.on_drop(len(dropped))

    def close(self) -> None:
        with self._cond:
            self._closed = True
            pending, self._queue = list(self._queue), deque()
            self._cond.notify_all()
        for call in pending:
            call.future.set_exception(Cancelled())
        self._thread.join(timeout=5)

    def _take(self) -> list[_Call] | None:
        with self._cond:
            while True:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return None
                deadline = time.monotonic() + self.max_wait_s
                while True:
                    rows = sum(c.rows for c in self._queue)
                    # Everyone who could join already has; or the batch is full; or time is up.
                    if len(self._queue) >= self._active or rows >= self.max_rows:
                        break
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or self._closed:
                        break
                    self._cond.wait(remaining)
                self._drop_abandoned()  # a cancel that raced its own call's queueing
                if self._queue and not self._closed:
                    break
            batch = [self._queue.popleft()]
            rows = batch[0].rows  # one call larger than max_rows runs alone, never split
            while self._queue and rows + self._queue[0].rows <= self.max_rows:
                batch.append(self._queue.popleft())
                rows += batch[-1].rows
            return batch

    def _loop(self) -> None:
        while (batch := self._take()) is not None:
            start = time.perf_counter()
            try:
                if len(batch) == 1:
                    eps = self.run(batch[0].x, batch[0].t, batch[0].y)
                else:
                    eps = self.run(
                        torch.cat([c.x for c in batch]), torch.cat([c.t for c in batch]), torch.cat([c.y for c in batch])
                    )
                parts = eps.split([c.rows for c in batch])
            except BaseException as exc:  # noqa: BLE001 - the callers get the error, the worker keeps serving
                log.exception("model call failed for a batch of %d calls", len(batch))
                for call in batch:
                    call.future.set_exception(exc)
                continue
            for call, part in zip(batch, parts):
                call.future.set_result(part)
            if self.on_batch is not None:
                self.on_batch(sum(c.rows for c in batch), len(batch), time.perf_counter() - start)
