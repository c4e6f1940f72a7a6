"""The dynamic batcher on its own: grouping, order, bounds, deadlines, cancellation, drain."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from service.batching import Batcher
from service.errors import DeadlineExceeded, ModelNotReady, QueueFull


class Recorder:
    """A fake model: doubles its input and records each batch it computes (optionally slowly)."""

    def __init__(self, delay: float = 0.0) -> None:
        self.batches: list[int] = []
        self.delay = delay
        self.lock = threading.Lock()

    def __call__(self, feeds: dict[str, np.ndarray], outputs: Sequence[str]) -> list[np.ndarray]:
        if self.delay:
            time.sleep(self.delay)
        x = feeds["x"]
        with self.lock:
            self.batches.append(x.shape[0])
        return [x * 2 for _ in outputs]


def feeds(value: float, rows: int = 1, width: int = 3) -> dict[str, np.ndarray]:
    return {"x": np.full((rows, width), value, dtype=np.float32)}


def run(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


@pytest.mark.parametrize("inline", [True, False])
def test_requests_are_grouped_up_to_max_batch_and_answered_in_order(inline: bool) -> None:
    model = Recorder()
    executor = ThreadPoolExecutor(2)

    async def main() -> list[np.ndarray]:
        b = Batcher(model, max_batch_size=8, max_queue_delay_us=20_000, max_queue_size=100,
                    inline_rows=1000 if inline else 0, executor=executor)  # fmt: skip
        results = await asyncio.gather(*(b.submit(feeds(i, rows=2), ["y"]) for i in range(10)))
        await b.close()
        return [r[0][0] for r in results]

    outputs = run(main())
    assert [float(o[0, 0]) for o in outputs] == [2.0 * i for i in range(10)]  # each got its own rows, in order
    assert all(o.shape == (2, 3) for o in outputs)
    assert sum(model.batches) == 20
    assert max(model.batches) <= 8 and len(model.batches) < 10  # grouped, never past the maximum


def test_idle_inline_batcher_computes_immediately_without_queueing() -> None:
    model = Recorder()

    async def main() -> float:
        b = Batcher(model, max_batch_size=8, max_queue_delay_us=0, max_queue_size=1, inline_rows=1000)
        (out,), timing = await b.submit(feeds(3.0), ["y"])
        assert timing.queue_ns < 1_000_000 and timing.batch_size == 1
        await b.close()
        return float(out[0, 0])

    assert run(main()) == 6.0


def test_incompatible_requests_are_not_mixed() -> None:
    model = Recorder()

    async def main() -> None:
        b = Batcher(model, max_batch_size=64, max_queue_delay_us=20_000, max_queue_size=100, inline_rows=1000)
        a = b.submit(feeds(1.0, width=3), ["y"])
        c = b.submit(feeds(1.0, width=4), ["y"])  # another per-row shape
        d = b.submit(feeds(1.0, width=3), ["y", "z"])  # other outputs
        results = await asyncio.gather(a, c, d)
        assert results[1][0][0].shape == (1, 4) and len(results[2][0]) == 2
        await b.close()

    run(main())
    assert model.batches == [1, 1, 1]


def test_queue_bound_rejects_with_queue_full() -> None:
    model = Recorder(delay=0.05)
    executor = ThreadPoolExecutor(1)

    async def main() -> list[object]:
        b = Batcher(model, max_batch_size=1, max_queue_delay_us=0, max_queue_size=2, inline_rows=0, executor=executor)
        results = await asyncio.gather(*(b.submit(feeds(i), ["y"]) for i in range(6)), return_exceptions=True)
        await b.close()
        return results

    results = run(main())
    rejected = [r for r in results if isinstance(r, QueueFull)]
    assert rejected and all(isinstance(r, (QueueFull, tuple)) for r in results)
    assert len(model.batches) == len(results) - len(rejected)  # rejected requests were never computed


def test_expired_requests_are_answered_deadline_exceeded_and_not_computed() -> None:
    model = Recorder(delay=0.1)
    executor = ThreadPoolExecutor(1)

    async def main() -> list[object]:
        b = Batcher(model, max_batch_size=1, max_queue_delay_us=0, max_queue_size=10, inline_rows=0, executor=executor)
        first = asyncio.ensure_future(b.submit(feeds(0), ["y"]))
        await asyncio.sleep(0.01)  # the first is computing for 100 ms
        late = b.submit(feeds(1), ["y"], deadline_ns=time.monotonic_ns() + 20_000_000)
        results = await asyncio.gather(first, late, return_exceptions=True)
        with pytest.raises(DeadlineExceeded):
            await b.submit(feeds(2), ["y"], deadline_ns=time.monotonic_ns() - 1)
        await b.close()
        return results

    results = run(main())
    assert isinstance(results[0], tuple) and isinstance(results[1], DeadlineExceeded)
    assert model.batches == [1]


def test_cancelled_requests_are_skipped() -> None:
    model = Recorder(delay=0.05)
    executor = ThreadPoolExecutor(1)

    async def main() -> None:
        b = Batcher(model, max_batch_size=1, max_queue_delay_us=0, max_queue_size=10, inline_rows=0, executor=executor)
        first = asyncio.ensure_future(b.submit(feeds(0), ["y"]))
        await asyncio.sleep(0.01)
        doomed = asyncio.ensure_future(b.submit(feeds(1), ["y"]))
        await asyncio.sleep(0.001)
        doomed.cancel()
        await first
        await b.close()

    run(main())
    assert model.batches == [1]


def test_close_drains_queued_requests_then_refuses_new_ones() -> None:
    model = Recorder(delay=0.02)
    executor = ThreadPoolExecutor(1)

    async def main() -> list[object]:
        b = Batcher(model, max_batch_size=1, max_queue_delay_us=0, max_queue_size=10, inline_rows=0, executor=executor)
        pending = [asyncio.ensure_future(b.submit(feeds(i), ["y"])) for i in range(4)]
        await asyncio.sleep(0)
        await b.close(timeout=5)
        with pytest.raises(ModelNotReady):
            await b.submit(feeds(9), ["y"])
        return await asyncio.gather(*pending, return_exceptions=True)

    results = run(main())
    assert all(isinstance(r, tuple) for r in results)  # every accepted request was answered
    assert model.batches == [1, 1, 1, 1]


def test_queue_delay_waits_for_a_fuller_batch() -> None:
    model = Recorder()

    async def main() -> None:
        b = Batcher(model, max_batch_size=4, max_queue_delay_us=50_000, max_queue_size=10, inline_rows=1000)
        first = asyncio.ensure_future(b.submit(feeds(0), ["y"]))
        await asyncio.sleep(0.01)
        second = asyncio.ensure_future(b.submit(feeds(1), ["y"]))
        await asyncio.gather(first, second)
        await b.close()

    run(main())
    assert model.batches == [2]
