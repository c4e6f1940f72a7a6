"""What the server is doing now -- readiness, each served version's queue, the bulk pool -- read when scraped.

These collectors hold no figures of their own: they ask the server (through the callables and the pool handed to
``ServerMetrics.watch_server`` and ``watch_bulk``) at every scrape, so what Prometheus sees is never stale.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import NamedTuple, Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from service.metrics_requests import BATCH_LABELS


class BulkState(Protocol):
    """What ``service.bulk.BulkPool`` tells about itself."""

    @property
    def admitted(self) -> int: ...
    @property
    def max_requests(self) -> int: ...
    @property
    def jobs(self) -> int: ...
    @property
    def refused(self) -> int: ...
    @property
    def restarts(self) -> int: ...


class BulkCollector(Collector):
    def __init__(self, pool: BulkState) -> None:
        self._pool = pool

    def describe(self) -> list[Metric]:
        return list(self.collect())

    def collect(self) -> Iterator[Metric]:
        p = self._pool
        yield GaugeMetricFamily(
            "odetoode_bulk_requests",
            "Large requests admitted now (being received, waiting for a bulk worker, or computed by one).",
            value=p.admitted,
        )
        yield GaugeMetricFamily(
            "odetoode_bulk_requests_limit", "The most large requests admitted at once (bulk_max_requests).",
            value=p.max_requests,
        )  # fmt: skip
        yield CounterMetricFamily("odetoode_bulk_jobs", "Large requests answered by a bulk worker.", value=p.jobs)
        yield CounterMetricFamily(
            "odetoode_bulk_refusals", "Large requests refused at once: bulk_max_requests were admitted.",
            value=p.refused,
        )  # fmt: skip
        yield CounterMetricFamily(
            "odetoode_bulk_worker_restarts", "Bulk worker processes that died and were replaced.", value=p.restarts
        )


class QueueLevel(NamedTuple):
    """The batcher queue of one served model version: requests waiting now, and its bound (``max_queue_size``)."""

    model: str
    version: str
    queued: int
    limit: int


class ServerStateCollector(Collector):
    """Readiness and the model queues, asked of the server when scraped."""

    def __init__(self, ready: Callable[[], bool], queues: Callable[[], Iterable[QueueLevel]]) -> None:
        self._ready = ready
        self._queues = queues

    def describe(self) -> list[Metric]:
        return [self._ready_family(), *self._queue_families()]

    def collect(self) -> Iterator[Metric]:
        ready = self._ready_family()
        ready.add_metric([], 1.0 if self._ready() else 0.0)
        queued, limit = self._queue_families()
        for level in self._queues():
            queued.add_metric([level.model, level.version], level.queued)
            limit.add_metric([level.model, level.version], level.limit)
        yield from (ready, queued, limit)

    @staticmethod
    def _ready_family() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "odetoode_server_ready",
            "1 when the server reports ready (at least one model version ready, not draining), else 0.",
            labels=(),
        )

    @staticmethod
    def _queue_families() -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily(
                "odetoode_queue_requests", "Requests waiting in each served version's batcher queue now.",
                labels=BATCH_LABELS,
            ),
            GaugeMetricFamily(
                "odetoode_queue_requests_limit",
                "The most requests each served version's queue holds (max_queue_size); beyond it, QueueFull.",
                labels=BATCH_LABELS,
            ),
        )  # fmt: skip
