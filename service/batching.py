"""Dynamic batching: requests for one model version are grouped, computed together, and answered in order.

A batch closes when it holds ``max_batch_size`` rows or when its first request has waited ``max_queue_delay_us``.
Requests are only grouped when they ask for the same outputs with the same per-row shapes, and never for a model
without a batch dimension. A request whose deadline
has passed when its batch is formed is answered ``DeadlineExceeded`` and never computed; a cancelled one is skipped.
The queue is bounded: beyond ``max_queue_size`` waiting requests, ``submit`` fails at once with ``QueueFull``.

Two execution modes, chosen per model at load time:

* *inline*: tiny models (a policy takes ~25 us) run on the event loop itself -- handing them to a thread would
  cost more than computing them -- and an idle batcher with no batching delay runs a request immediately; but only
  batches of at most ``inline_rows`` rows (measured at load to compute within the inline budget): a larger one goes
  to the thread pool, so the event loop is never held longer than that budget;
* *pooled*: larger models run in a thread pool (ONNX Runtime releases the GIL), ``workers`` batches at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from service.errors import DeadlineExceeded, ModelNotReady, QueueFull, ServingError

RunFn = Callable[[dict[str, np.ndarray], Sequence[str]], list[np.ndarray]]


class Timing(NamedTuple):
    """Where one request's time went inside the batcher (nanoseconds) and the size of the batch it joined."""

    queue_ns: int
    compute_ns: int
    batch_size: int


def deadline_after(seconds: float | None, now_ns: int | None = None) -> int | None:
    """A client's time budget -- ``seconds`` from ``now_ns`` (default: now), or ``None`` for none -- as the deadline
    the batcher takes: a ``time.monotonic_ns`` instant. Every transport converts its own budget (a gRPC deadline, a
    ``Request-Timeout-Ms`` header, a stream's ``deadline_us``) here."""
    if seconds is None:
        return None
    return (time.monotonic_ns() if now_ns is None else now_ns) + int(seconds * 1e9)


@dataclass
class _Pending:
    feeds: dict[str, np.ndarray]
    outputs: tuple[str, ...]
    rows: int
    future: asyncio.Future[tuple[list[np.ndarray], Timing]]
    enqueued_ns: int
    deadline_ns: int | None
    key: tuple[object, ...] = ()
    """What must match for two requests to share a batch: outputs, input names, per-row shapes and dtypes."""

    def __post_init__(self) -> None:
        self.key = (self.outputs, tuple((k, v.shape[1:], v.dtype) for k, v in sorted(self.feeds.items())))


class Batcher:
    """The request queue of one model version."""

    def __init__(
        self,
        run: RunFn,
        *,
        max_batch_size: int,
        max_queue_delay_us: int,
        max_queue_size: int,
        inline_rows: int,
        executor: Executor | None = None,
        workers: int = 1,
        on_batch: Callable[[int, int], None] | None = None,
        batched: bool = True,
    ) -> None:
        if inline_rows <= 0 and executor is None:
            raise ValueError("a pooled batcher needs an executor")
        self._run = run
        self.max_batch_size = max_batch_size
        self.max_queue_delay_ns = max_queue_delay_us * 1000
        self.max_queue_size = max_queue_size
        self.inline_rows = max(0, inline_rows)
        """Batches of at most this many rows run on the event loop (0: none do)."""
        self._executor = executor
        self._workers = 1 if self.inline_rows else max(1, workers)  # inline: batches in order, one at a time
        self._on_batch = on_batch
        """Called on the event loop after each executed batch with its rows and compute time (ns)."""
        self.batched = batched
        """Requests stack along their first dimension; if not, each request is one run of its own (one "row")."""
        self._queue: deque[_Pending] = deque()
        self._arrived = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._busy = 0
        self._queued_rows = 0
        self._closed = False
        self._closing_error: BaseException = ModelNotReady("this model version was unloaded before the request ran")
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def inline(self) -> bool:
        return self.inline_rows > 0

    def _on_loop(self, rows: int) -> bool:
        return self.inline_rows > 0 and (rows <= self.inline_rows or self._executor is None)

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def closed(self) -> bool:
        """True once the version is being unloaded; a stream holding it should resolve its version again."""
        return self._closed

    async def submit(
        self, feeds: dict[str, np.ndarray], outputs: Sequence[str], deadline_ns: int | None = None
    ) -> tuple[list[np.ndarray], Timing]:
        """Computes ``outputs`` for ``feeds`` (a batch of one or more rows); ``deadline_ns`` is ``monotonic_ns``."""
        if self._closed:
            raise ModelNotReady("this model version is being unloaded; retry to reach its successor")
        now = time.monotonic_ns()
        if deadline_ns is not None and now >= deadline_ns:
            raise DeadlineExceeded("the deadline passed before the request was queued")
        rows = int(next(iter(feeds.values())).shape[0]) if self.batched else 1
        if self.max_queue_delay_ns == 0 and not self._queue and self._busy == 0 and self._on_loop(rows):
            # Nothing is waiting ahead of this request and the event loop is ours: compute it right here.
            self._busy += 1
            self._idle.clear()
            try:
                start = time.monotonic_ns()
                result = self._run(feeds, outputs)
                compute = time.monotonic_ns() - start
            finally:
                self._release()
            if self._on_batch is not None:
                self._on_batch(rows, compute)
            return result, Timing(start - now, compute, rows)
        if len(self._queue) >= self.max_queue_size:
            raise QueueFull(f"the model's queue holds {self.max_queue_size} requests; retry later")
        future: asyncio.Future[tuple[list[np.ndarray], Timing]] = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(feeds, tuple(outputs), rows, future, now, deadline_ns))
        self._queued_rows += rows
        self._idle.clear()
        self._arrived.set()
        if len(self._tasks) < self._workers or self._tasks[-1].done():
            self._ensure_workers()
        return await future

    def _ensure_workers(self) -> None:
        self._tasks = [t for t in self._tasks if not t.done()]
        while len(self._tasks) < self._workers:
            self._tasks.append(asyncio.get_running_loop().create_task(self._work()))

    def _release(self) -> None:
        self._busy -= 1
        if self._busy == 0 and not self._queue:
            self._idle.set()

    async def _work(self) -> None:
        while True:
            while not self._queue:
                self._arrived.clear()
                await self._arrived.wait()
            await self._wait_for_batch()
            batch = self._take_batch()
            if not batch:
                if not self._queue and self._busy == 0:
                    self._idle.set()
                continue
            self._busy += 1
            try:
                await self._execute(batch)
            finally:
                self._release()

    async def _wait_for_batch(self) -> None:
        """Holds the first request up to the queue delay while the batch is not full.

        asyncio's timers round up to whole milliseconds (epoll), so the last millisecond is waited by yielding to
        the loop instead -- otherwise a 200 us delay would cost 1.1 ms.
        """
        if self.max_queue_delay_ns == 0:
            return
        close_at = self._queue[0].enqueued_ns + self.max_queue_delay_ns
        while self._queued_rows < self.max_batch_size:
            remaining = close_at - time.monotonic_ns()
            if remaining <= 0:
                return
            if remaining < 1_000_000:
                await asyncio.sleep(0)
                continue
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), (remaining - 1_000_000) / 1e9)

    def _take_batch(self) -> list[_Pending]:
        """Pops the longest compatible FIFO prefix within ``max_batch_size`` rows, dropping expired requests."""
        batch: list[_Pending] = []
        rows = 0
        now = time.monotonic_ns()
        key = None
        while self._queue:
            p = self._queue[0]
            if p.future.done():  # cancelled by its client
                self._pop()
                continue
            if p.deadline_ns is not None and now >= p.deadline_ns:
                self._pop()
                p.future.set_exception(DeadlineExceeded("the deadline passed while the request was queued"))
                continue
            if batch and (not self.batched or p.key != key or rows + p.rows > self.max_batch_size):
                break
            key = p.key
            batch.append(self._pop())
            rows += p.rows
        return batch

    def _pop(self) -> _Pending:
        p = self._queue.popleft()
        self._queued_rows -= p.rows
        return p

    async def _execute(self, batch: list[_Pending]) -> None:
        dispatched = time.monotonic_ns()
        outputs = batch[0].outputs
        if len(batch) == 1:
            feeds = batch[0].feeds
        else:
            feeds = {name: np.concatenate([p.feeds[name] for p in batch]) for name in batch[0].feeds}
        rows = sum(p.rows for p in batch)
        try:
            start = time.monotonic_ns()
            if self._on_loop(rows):
                results = self._run(feeds, outputs)
            else:
                loop = asyncio.get_running_loop()
                results = await loop.run_in_executor(self._executor, self._run, feeds, outputs)
            compute = time.monotonic_ns() - start
        except BaseException as exc:
            # cancelled with the batcher (a shutdown's grace is over): its requests hear why, not nothing
            failure = self._closing_error if isinstance(exc, asyncio.CancelledError) else exc
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(failure)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        if self._on_batch is not None:
            self._on_batch(rows, compute)
        offset = 0
        for p in batch:
            part = [r[offset : offset + p.rows] for r in results] if len(batch) > 1 else results
            offset += p.rows
            if not p.future.done():
                p.future.set_result((part, Timing(dispatched - p.enqueued_ns, compute, rows)))

    async def close(self, timeout: float | None = None, error: ServingError | None = None) -> None:
        """Refuses new requests, lets queued and running ones finish (up to ``timeout`` s), stops the workers; what did
        not finish is answered ``error`` (default: ``ModelNotReady``, the version was unloaded)."""
        self._closed = True
        if error is None:
            error = ModelNotReady("this model version was unloaded before the request ran")
        self._closing_error = error
        if self._queue or self._busy:
            self._ensure_workers()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), timeout)
        while self._queue:
            p = self._pop()
            if not p.future.done():
                p.future.set_exception(error)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
