"""The per-request series, kept by hand and exposed through a custom collector.

The per-request series (request count, the three latency histograms, batch sizes) are recorded on every call, so they
are kept as plain Python numbers that the registry reads when scraped, through prometheus_client's custom-collector
interface: one request costs ~0.5 us of bookkeeping instead of ~3 us for the library's locked ``Counter``/``Histogram``
children (a policy computes in ~25 us, and those ~3 us cost 7-10 us of a round trip once the gRPC stack has cooled
the caches). They are written by the event loop thread only -- batches are accounted on the loop even when computed
in the thread pool -- so no lock is needed (on CPython with its GIL); a scrape from the metrics thread copies the
bucket counts in one step (``list(...)``), so a histogram's buckets and count always agree (its sum may include one
observation more, as with the library's own histograms).

Request-level series are labelled by model, version and protocol (``rest``, ``grpc``, ``policy``); batch sizes are a
property of a batch, not of a protocol, so they carry model and version only. Latencies are histograms (not
summaries) so p50/p99 can be aggregated across replicas.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Iterator, Sequence

from prometheus_client import Counter
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

from service.statistics import Statistics, VersionStatistics

# 10 us .. 10 s: a policy computes in tens of microseconds, a cold classifier batch in tens of milliseconds.
LATENCY_BUCKETS = (
    1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
)  # fmt: skip
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)
REQUEST_LABELS = ("model", "version", "protocol")
BATCH_LABELS = ("model", "version")


class HistogramCells:
    """The counts of one labelled histogram: ``counts[i]`` observations in ``(bounds[i-1], bounds[i]]``, the last
    cell above every bound (``+Inf``) -- Prometheus ``le`` semantics, cumulated when scraped."""

    __slots__ = ("bounds", "counts", "created", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0
        self.created = time.time()

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def cumulative(self) -> tuple[list[tuple[str, float]], float]:
        """``(le, cumulative count)`` per bucket (``+Inf`` last) and the sum, for ``HistogramMetricFamily``."""
        counts, total = list(self.counts), self.sum
        buckets: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip((*self.bounds, float("inf")), counts, strict=True):
            running += count
            buckets.append((floatToGoString(bound), running))
        return buckets, total


class RequestSeries:
    """The successes of one (model, version, protocol): a count and three latency histograms, looked up once per
    key and updated with plain arithmetic; and the version's statistics, found with them."""

    __slots__ = ("compute", "count", "queue", "request", "statistics")

    def __init__(self, statistics: VersionStatistics) -> None:
        self.statistics = statistics
        """The figures of the statistics extension of this series' model version (shared by its protocols)."""
        self.count = 0
        self.request = HistogramCells(LATENCY_BUCKETS)
        self.queue = HistogramCells(LATENCY_BUCKETS)
        self.compute = HistogramCells(LATENCY_BUCKETS)

    def success(self, total_ns: int, queue_ns: int, compute_ns: int) -> None:
        self.count += 1
        self.request.observe(total_ns / 1e9)
        self.queue.observe(queue_ns / 1e9)
        self.compute.observe(compute_ns / 1e9)


class InflightLevel:
    """Requests of one protocol being served now: an integer the ``odetoode_inflight_requests`` gauge reads when
    scraped (``Gauge.set_function``)."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0

    def inc(self) -> None:
        self.value += 1

    def dec(self) -> None:
        self.value -= 1


def _library_writes_created() -> bool:
    """Whether prometheus_client writes ``_created`` samples now, asked of a probe counter through its public API (the
    switch itself is private to the library)."""
    probe = Counter("probe", "", registry=None)
    return any(sample.name.endswith("_created") for family in probe.collect() for sample in family.samples)


class PerRequestSeries(Collector):
    """Every ``RequestSeries`` and batch-size histogram of a server, created on first use and exposed in the
    library's formats when scraped."""

    def __init__(self, statistics: Statistics) -> None:
        self._statistics = statistics
        self._series: dict[tuple[str, str, str], RequestSeries] = {}
        self._batch_sizes: dict[tuple[str, str], HistogramCells] = {}

    def series(self, model: str, version: str, protocol: str) -> RequestSeries:
        key = (model, version, protocol)
        found = self._series.get(key)
        if found is None:
            found = self._series[key] = RequestSeries(self._statistics.of(model, version))
        return found

    def batch_sizes(self, model: str, version: str) -> HistogramCells:
        key = (model, version)
        found = self._batch_sizes.get(key)
        if found is None:
            found = self._batch_sizes[key] = HistogramCells(BATCH_BUCKETS)
        return found

    def describe(self) -> list[Metric]:
        return [*self._request_families(), self._batch_family()]

    def collect(self) -> Iterator[Metric]:
        # ``_created`` samples as the library's own Counter and Histogram write them, and unless switched off the
        # same way (PROMETHEUS_DISABLE_CREATED_SERIES or disable_created_metrics())
        created = _library_writes_created()
        requests, *latencies = self._request_families()
        for key, series in list(self._series.items()):
            requests.add_metric(key, series.count, created=series.request.created if created else None)
            for family, cells in zip(latencies, (series.request, series.queue, series.compute), strict=True):
                self._add_histogram(family, key, REQUEST_LABELS, cells, created)
        batch_size = self._batch_family()
        for model_version, cells in list(self._batch_sizes.items()):
            self._add_histogram(batch_size, model_version, BATCH_LABELS, cells, created)
        yield from (requests, *latencies, batch_size)

    @staticmethod
    def _add_histogram(
        family: HistogramMetricFamily, key: Sequence[str], names: Sequence[str], cells: HistogramCells, created: bool
    ) -> None:
        family.add_metric(key, *cells.cumulative())
        if created:  # HistogramMetricFamily.add_metric takes no creation time
            family.samples.append(Sample(f"{family.name}_created", dict(zip(names, key, strict=True)), cells.created))

    @staticmethod
    def _request_families() -> tuple[CounterMetricFamily, HistogramMetricFamily, HistogramMetricFamily,
                                     HistogramMetricFamily]:  # fmt: skip
        return (
            CounterMetricFamily(
                "odetoode_requests", "Inference requests answered successfully.", labels=REQUEST_LABELS
            ),
            HistogramMetricFamily(
                "odetoode_request_duration_seconds",
                "Time from request decoded to response ready, inside the server.",
                labels=REQUEST_LABELS,
            ),
            HistogramMetricFamily(
                "odetoode_queue_duration_seconds",
                "Time a request waited in its model's batcher queue.",
                labels=REQUEST_LABELS,
            ),
            HistogramMetricFamily(
                "odetoode_compute_duration_seconds",
                "ONNX Runtime time of the batch each request was computed in.",
                labels=REQUEST_LABELS,
            ),
        )

    @staticmethod
    def _batch_family() -> HistogramMetricFamily:
        return HistogramMetricFamily("odetoode_batch_size", "Rows per executed batch.", labels=BATCH_LABELS)
