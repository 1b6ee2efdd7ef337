"""Dynamic micro-batching: concurrent ``/v1/ner`` requests merged into engine batches.

Each request's documents go into a queue; one background task takes the first waiting request,
gathers more for at most ``max_wait_ms`` (or until ``max_batch`` texts), runs the engine on all of
them at once in a worker thread (the event loop stays free to accept and parse requests meanwhile)
and resolves every request's future. Requests that arrive while a batch runs form the next batch,
so batches grow, and throughput rises, with concurrency. More than ``max_queue`` texts waiting:
:class:`Overloaded` (the app answers 503).
"""

from __future__ import annotations

import asyncio
import contextlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

from serving.engine import NerEngine
from serving.metrics import Metrics

if TYPE_CHECKING:
    from serving.server import Settings

__all__ = ["MicroBatcher", "Overloaded"]


class Overloaded(Exception):
    """More texts waiting than ``Settings.max_queue``."""


@dataclass
class _Job:
    docs: list
    future: asyncio.Future


class MicroBatcher:
    """Gathers concurrent requests into engine batches (see module doc)."""

    def __init__(self, engine: NerEngine, settings: Settings, metrics: Metrics):
        self.engine, self.settings, self.metrics = engine, settings, metrics
        self.queue: asyncio.Queue | None = None
        self.task: asyncio.Task | None = None
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ner-engine")
        self.pending = 0
        self.batches = 0
        self.waiting_requests = 0   # /v1/ner requests submitted and not answered yet

    def start(self) -> None:
        self.queue = asyncio.Queue()
        self.task = asyncio.get_running_loop().create_task(self._run(), name="ner-micro-batcher")

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task
        self.executor.shutdown(wait=False, cancel_futures=True)

    @property
    def running(self) -> bool:
        return self.task is not None and not self.task.done()

    async def submit(self, docs: list) -> list:
        if not self.running:
            raise RuntimeError("the batching task is not running")
        if self.pending + len(docs) > self.settings.max_queue:
            raise Overloaded()
        fut = asyncio.get_running_loop().create_future()
        self.pending += len(docs)
        self.metrics.queued_texts = self.pending
        self.queue.put_nowait(_Job(docs, fut))
        self.waiting_requests += 1
        try:
            return await fut
        finally:
            self.waiting_requests -= 1

    @property
    def merges_requests(self) -> bool:
        """Whether requests are merged into one engine run (only when results cannot depend on it)."""
        return bool(getattr(self.engine, "batch_invariant", True))

    async def _collect(self, first: _Job):
        jobs, n = [first], len(first.docs)
        if not self.merges_requests:
            return jobs, None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.max_wait_ms / 1000.0
        carry = None
        while n < self.settings.max_batch:
            try:
                job = self.queue.get_nowait()
            except asyncio.QueueEmpty:
                timeout = deadline - loop.time()
                # no other request is being received or parsed: nobody to wait for
                if timeout <= 0 or self.metrics.ner_inflight <= self.waiting_requests:
                    break
                try:
                    job = await asyncio.wait_for(self.queue.get(), timeout)
                except asyncio.TimeoutError:
                    break
            if n + len(job.docs) > self.settings.max_batch:
                carry = job
                break
            jobs.append(job)
            n += len(job.docs)
        return jobs, carry

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        carry = None
        while True:
            first = carry if carry is not None else await self.queue.get()
            jobs, carry = await self._collect(first)
            n_all = sum(len(j.docs) for j in jobs)
            jobs = [j for j in jobs if not j.future.done()]  # e.g. the client went away
            docs = [d for j in jobs for d in j.docs]
            try:
                if docs:
                    results, timings = await loop.run_in_executor(
                        self.executor, self.engine.run_documents, docs, self.settings.max_batch)
                    self.batches += 1
                    self.metrics.observe_batch(len(docs), len(jobs), timings, sum(len(r) for r in results))
                    i = 0
                    for j in jobs:
                        if not j.future.done():
                            j.future.set_result(results[i:i + len(j.docs)])
                        i += len(j.docs)
            except asyncio.CancelledError:
                for j in jobs:
                    if not j.future.done():
                        j.future.cancel()
                raise
            except Exception as e:  # an engine failure fails this batch only; the loop goes on
                self.metrics.error("engine")
                for j in jobs:
                    if not j.future.done():
                        j.future.set_exception(e)
            finally:
                self.pending -= n_all
                self.metrics.queued_texts = self.pending
