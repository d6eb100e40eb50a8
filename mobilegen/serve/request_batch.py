"""Whole-request batching, the engine of `mobilegen serve --ray --ray-batching serve`.

Ray Serve's ``@serve.batch`` (applied in ray_app.py) hands a replica a list of whole
requests. ``sample_together`` runs the requests of that list that share their sampler
settings (model, sampler, steps, guidance, eta) as ONE sampling loop: its rows are the
requests' images, each with its own label, and each request's noise comes from its own
seeded generator (``stacked_noise``), drawn in the order it draws alone. Requests with
other settings run as separate loops, one after another.

Same seed, same PNG bytes. A row's result must not depend on the rows it shares a loop
with. The model call is batch-invariant on the CPU (models.py: the time-embedding
Linear in fixed blocks, contiguous GroupNorm, one row padded to 2) and runs exactly
``--max-batch`` rows on CUDA; the sampler's own arithmetic is elementwise, so a row's
update does not see the others. tests/serve/test_ray_app.py checks the bytes against the
single-process server.

What it cannot do, unlike our micro-batcher (batcher.py): a request that arrives while
a loop runs waits for the whole loop (no joining at the next step), and a request whose
client hung up keeps its rows in a running loop until every request of that loop is
gone (a loop stops early only then). A request cancelled while still queued never runs
(Serve drops it; counted in mobilegen_denoiser_calls_dropped_total, one per request).
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable

import torch

from mobilegen.diffusion import run_sampler, stacked_noise, to_uint8
from mobilegen.serve.batcher import Cancelled
from mobilegen.serve.validate import Job

OnModelCall = Callable[[str, int, int, float], None]  # model, rows, requests, seconds (Metrics.on_batch)
OnRequestDrop = Callable[[str, int], None]  # model, requests never run (Metrics.on_drop)


@dataclass(eq=False)
class Pending:
    """One request waiting in, or running in, a batch."""

    job: Job
    cancelled: threading.Event
    started: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def rows(self) -> int:
        """Denoiser rows of one model call: guidance evaluates the conditional and unconditional pass together."""
        return self.job.n * (2 if self.job.sampler.guidance > 0 else 1)

    def claim(self) -> bool:
        """Start it, unless it was abandoned first (then it never runs)."""
        with self.lock:
            self.started = not self.cancelled.is_set()
            return self.started


def batch_rows(items: list[Pending], max_rows: int) -> int:
    """@serve.batch's batch_size_fn: model rows, so a batch never exceeds --max-batch rows per model call.

    A request larger than max_rows counts as max_rows: it fills a batch on its own (Serve
    would fail it), and runs as one loop, like our batcher runs such a call alone.
    """
    return sum(min(p.rows, max_rows) for p in items)


def settings(job: Job) -> tuple:
    c = job.sampler
    return (job.model.name, c.sampler, c.steps, c.guidance, c.eta)


def sample_together(items: list[Pending], on_call: OnModelCall | None = None) -> list[torch.Tensor | BaseException]:
    """Each request's uint8 images (or the error of its loop), in order; runs on a pool thread."""
    groups: dict[tuple, list[Pending]] = {}
    for p in items:
        if p.claim():
            groups.setdefault(settings(p.job), []).append(p)
    out: dict[int, torch.Tensor | BaseException] = {}
    for group in groups.values():
        try:
            images = sample_group(group, on_call)
        except Exception as exc:  # noqa: BLE001 - this loop's requests get the error, other loops go on
            images = [exc] * len(group)
        out.update((id(p), image) for p, image in zip(group, images))
    return [out.get(id(p), Cancelled()) for p in items]


def sample_group(group: list[Pending], on_call: OnModelCall | None = None) -> list[torch.Tensor]:
    """One sampling loop over every image of requests with the same settings."""
    jobs = [p.job for p in group]
    model = jobs[0].model
    labels = torch.cat([torch.full((j.n,), j.label) for j in jobs])
    noise = stacked_noise([(j.sampler.seed, j.n) for j in jobs])

    def denoise(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if all(p.cancelled.is_set() for p in group):
            raise Cancelled()
        start = time.perf_counter()
        eps = model.denoise(x, t, y)
        if on_call is not None:
            on_call(model.name, int(t.shape[0]), len(group), time.perf_counter() - start)
        return eps

    with torch.inference_mode():
        x = run_sampler(denoise, labels, model.schedule, jobs[0].sampler, model.device, noise=noise)
    return list(to_uint8(x).split([j.n for j in jobs]))


class WholeRequests:
    """The server's Sample in this mode: a job goes through ``submit`` (the @serve.batch-decorated call)."""

    def __init__(self, submit: Callable[[Pending], Awaitable[torch.Tensor | BaseException]], on_drop: OnRequestDrop | None):
        self.submit, self.on_drop = submit, on_drop
        self.active = 0  # requests queued or sampling (/healthz "sampling"; touched only on the event loop)

    async def __call__(self, job: Job, cancelled: threading.Event) -> torch.Tensor:
        item = Pending(job, cancelled)
        self.active += 1
        try:
            result = await self.submit(item)
        except asyncio.CancelledError:  # the request was abandoned
            with item.lock:
                dropped = not item.started
            if dropped and self.on_drop is not None:
                self.on_drop(job.model.name, 1)
            raise
        finally:
            self.active -= 1
        if isinstance(result, BaseException):
            raise result
        return result
