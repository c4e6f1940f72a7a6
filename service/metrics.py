"""Prometheus metrics, built on an injected registry (tests get a fresh one; no global state to reset).

Request-level series are labelled by model, version and protocol (``rest``, ``grpc``, ``policy``); batch sizes are a
property of a batch, not of a protocol, so they carry model and version only. Latencies are histograms (not
summaries) so p50/p99 can be aggregated across replicas.

The per-request series (request count, the three latency histograms, batch sizes, requests in flight) are recorded on
every call, so they are kept as plain Python numbers that the registry reads when scraped, through prometheus_client's
custom-collector interface: one request costs ~0.5 us of bookkeeping instead of ~3 us for the library's locked
``Counter``/``Histogram`` children (a policy computes in ~25 us, and those ~3 us cost 7-10 us of a round trip
once the gRPC stack has cooled the caches). They are written by the event loop thread only -- batches are accounted on
the loop even when computed in the thread pool -- so no lock is needed (on CPython with its GIL); a scrape from the
metrics thread copies the bucket counts in one step (``list(...)``), so a histogram's buckets and count always agree
(its sum may include one observation more, as with the library's own histograms).
Everything recorded rarely (failures, model states, loads) uses the library's metric classes directly. What the
server is doing now (readiness, each model's queue, the bulk pool) is read when scraped, from callables the server
hands over (``watch_server``, ``watch_bulk``), so it is never stale. The process itself (resident memory, open file
descriptors, CPU seconds, start time) comes from prometheus_client's ``ProcessCollector`` on the same registry, and
``odetoode_build_info`` names the versions that run.

For alerting, what must not be missed is a state, not only a counter: Prometheus's ``increase()`` never sees a
counter's first increment (the series appears with it), so a version whose load failed or that fell back to CPU
is also a gauge that stays 1 while it holds (``odetoode_model_load_failed``, ``odetoode_model_cpu_fallback``).

``ServerMetrics`` also keeps Triton's per-version statistics (``service.statistics``): the same events, reported
through the statistics extension rather than scraped.
"""

from __future__ import annotations

import bisect
import contextlib
import platform
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import NamedTuple, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Info, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

from service import server_version
from service.errors import ERROR_TABLE
from service.statistics import Statistics, VersionStatistics

# 10 us .. 10 s: a policy computes in tens of microseconds, a cold classifier batch in tens of milliseconds.
LATENCY_BUCKETS = (
    1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
)  # fmt: skip
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)
MODEL_STATES = ("LOADING", "READY", "UNAVAILABLE", "UNLOADING", "FAILED")
REQUEST_LABELS = ("model", "version", "protocol")
BATCH_LABELS = ("model", "version")
REFUSAL_PROTOCOLS = ("rest", "grpc", "policy")
REFUSAL_REASONS = (*(error.__name__ for error in ERROR_TABLE), "BodyTimeoutError")
"""The ``reason`` of ``odetoode_request_refusals_total``: the error class of the table (``service.errors``) the error
answered falls under, or a request body that stopped arriving (REST). Every (protocol, reason) series exists from the
start at 0, so that ``rate()`` and ``increase()`` see a first refusal."""
LOAD_FAILURE_REASONS = ("invalid_model", "golden_check", "provider", "invalid_config", "unreadable", "crashed")
"""The ``reason`` of ``odetoode_model_load_failed``: the file is not a model the server can serve (ONNX Runtime
refuses it, or its contract or metadata is wrong); its golden self-check failed (it does not compute what was
exported); a requested execution provider is missing and CPU fallback is off; its config.yaml is invalid; the file
could not be read; the loader crashed (a bug: the log has the traceback)."""


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


class _PerRequestCollector(Collector):
    """Exposes the ``RequestSeries`` and batch-size histograms of a ``ServerMetrics`` in the library's formats."""

    def __init__(self, metrics: ServerMetrics) -> None:
        self._metrics = metrics

    def describe(self) -> list[Metric]:
        return [*self._request_families(), self._batch_family()]

    def collect(self) -> Iterator[Metric]:
        # ``_created`` samples as the library's own Counter and Histogram write them, and unless switched off the
        # same way (PROMETHEUS_DISABLE_CREATED_SERIES or disable_created_metrics())
        created = _library_writes_created()
        requests, *latencies = self._request_families()
        for key, series in list(self._metrics._series.items()):
            requests.add_metric(key, series.count, created=series.request.created if created else None)
            for family, cells in zip(latencies, (series.request, series.queue, series.compute), strict=True):
                self._add_histogram(family, key, REQUEST_LABELS, cells, created)
        batch_size = self._batch_family()
        for model_version, cells in list(self._metrics._batch_sizes.items()):
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


class _BulkCollector(Collector):
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


class _ServerStateCollector(Collector):
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


class ServerMetrics:
    """Every metric the server exports, registered on ``registry``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.failures = Counter(
            "odetoode_request_failures",
            "Inference requests that failed, by reason (the error class).",
            (*REQUEST_LABELS, "reason"),
            registry=r,
        )
        self.refusals = Counter(
            "odetoode_request_refusals",
            "Requests answered with an error before they reached a model, by reason (the error class): too large, "
            "malformed, refused from their headers, no bulk place left, the server draining. Not counted in "
            "odetoode_request_failures_total.",
            ("protocol", "reason"),
            registry=r,
        )
        for protocol in REFUSAL_PROTOCOLS:
            for reason in REFUSAL_REASONS:
                self.refusals.labels(protocol, reason)
        self.inflight = Gauge("odetoode_inflight_requests", "Requests being served now.", ("protocol",), registry=r)
        self.model_state = Gauge(
            "odetoode_model_state",
            "1 for the state each known model version is in (LOADING, READY, UNAVAILABLE, UNLOADING, FAILED).",
            ("model", "version", "state"),
            registry=r,
        )
        self.model_provider = Gauge(
            "odetoode_model_execution_provider",
            "1 for the ONNX Runtime execution provider that serves each loaded version.",
            ("model", "version", "provider"),
            registry=r,
        )
        self.load_failures = Counter(
            "odetoode_model_load_failures", "Failed attempts to load a model version.", ("model", "version"), registry=r
        )
        self.provider_fallbacks = Counter(
            "odetoode_provider_fallbacks",
            "Loads that requested a GPU provider and were served on CPU instead (allow_cpu_fallback).",
            ("model", "version"),
            registry=r,
        )
        self.cpu_fallback = Gauge(
            "odetoode_model_cpu_fallback",
            "1 while a served version that requested a GPU provider runs on CPU instead (allow_cpu_fallback).",
            ("model", "version"),
            registry=r,
        )
        self.loads = Counter(
            "odetoode_model_loads", "Model versions loaded (first loads and reloads of a changed file).",
            ("model", "version"), registry=r,
        )  # fmt: skip
        self.unloads = Counter(
            "odetoode_model_unloads", "Model versions unloaded (removed, not selected, or unloaded through the API).",
            ("model", "version"), registry=r,
        )  # fmt: skip
        self.load_failed = Gauge(
            "odetoode_model_load_failed",
            "1 while the current files of a version failed to load, by reason (service.metrics.LOAD_FAILURE_REASONS); "
            "a failed reload keeps serving the previous file and is 1 here too.",
            ("model", "version", "reason"),
            registry=r,
        )
        Info("odetoode_build", "The versions this server runs.", registry=r).info(build_info())
        # Resident memory, open file descriptors, CPU seconds, start time (Linux /proc). A registry that has them
        # already (the library's global one, when a caller injects it) keeps its own.
        with contextlib.suppress(ValueError):
            ProcessCollector(registry=r)

        self._series: dict[tuple[str, str, str], RequestSeries] = {}
        self._batch_sizes: dict[tuple[str, str], HistogramCells] = {}
        self._inflight: dict[str, InflightLevel] = {}
        self._providers: dict[tuple[str, str], str] = {}
        self._load_failures: dict[tuple[str, str], str] = {}
        r.register(_PerRequestCollector(self))
        self.statistics = Statistics()
        """Triton's statistics extension, per model version."""

    def series(self, model: str, version: str, protocol: str) -> RequestSeries:
        key = (model, version, protocol)
        found = self._series.get(key)
        if found is None:
            found = self._series[key] = RequestSeries(self.statistics.of(model, version))
        return found

    def batch_sizes(self, model: str, version: str) -> HistogramCells:
        """The batch-size histogram of one version (its batcher observes every executed batch)."""
        key = (model, version)
        found = self._batch_sizes.get(key)
        if found is None:
            found = self._batch_sizes[key] = HistogramCells(BATCH_BUCKETS)
        return found

    def batch_observer(self, model: str, version: str) -> Callable[[int, int], None]:
        """What one version's batcher calls after each batch it executed, with its rows and compute time (ns): the
        batch-size histogram and the version's statistics."""
        sizes, statistics = self.batch_sizes(model, version), self.statistics.of(model, version)

        def executed(rows: int, compute_ns: int) -> None:
            sizes.observe(rows)
            statistics.executed(rows, compute_ns)

        return executed

    def inflight_for(self, protocol: str) -> InflightLevel:
        found = self._inflight.get(protocol)
        if found is None:
            level = self._inflight[protocol] = InflightLevel()
            self.inflight.labels(protocol).set_function(lambda: level.value)
            return level
        return found

    def watch_bulk(self, pool: BulkState) -> None:
        """Exports the bulk pool's state, read when scraped."""
        self.registry.register(_BulkCollector(pool))

    def watch_server(self, ready: Callable[[], bool], queues: Callable[[], Iterable[QueueLevel]]) -> None:
        """Exports the server's readiness and its served versions' queues, asked of these callables when scraped."""
        self.registry.register(_ServerStateCollector(ready, queues))

    def set_model_state(self, model: str, version: str, state: str) -> None:
        for s in MODEL_STATES:
            self.model_state.labels(model, version, s).set(1.0 if s == state else 0.0)
        if state not in ("FAILED", "LOADING"):  # unloaded, or loaded since: its failure is history
            self._clear_load_failure(model, version)

    def forget_model(self, model: str, version: str) -> None:
        """Drops the series of a version that left the repository (so dashboards stop showing it)."""
        for s in MODEL_STATES:
            with contextlib.suppress(KeyError):
                self.model_state.remove(model, version, s)
        self.forget_provider(model, version)
        self._clear_load_failure(model, version)

    def model_loaded(self, model: str, version: str, provider: str, *, cpu_fallback: bool) -> None:
        """A version loaded and serves on ``provider``; ``cpu_fallback``: a GPU provider was requested but it runs
        on CPU."""
        self.loads.labels(model, version).inc()
        self._clear_load_failure(model, version)
        self.set_provider(model, version, provider)
        if cpu_fallback:
            self.provider_fallbacks.labels(model, version).inc()
            self.cpu_fallback.labels(model, version).set(1)

    def model_unloaded(self, model: str, version: str) -> None:
        self.unloads.labels(model, version).inc()
        self.forget_provider(model, version)

    def model_load_failed(self, model: str, version: str, reason: str, *, attempted: bool = True) -> None:
        """The current files of a version failed to load (``reason``: one of ``LOAD_FAILURE_REASONS``); ``attempted``
        is False when nothing was opened (an invalid config.yaml), which is not counted as a load attempt."""
        if reason not in LOAD_FAILURE_REASONS:
            raise ValueError(f"load failure reason {reason!r} is not one of {LOAD_FAILURE_REASONS}")
        if attempted:
            self.load_failures.labels(model, version).inc()
        self._clear_load_failure(model, version)
        self._load_failures[model, version] = reason
        self.load_failed.labels(model, version, reason).set(1)

    def _clear_load_failure(self, model: str, version: str) -> None:
        reason = self._load_failures.pop((model, version), None)
        if reason is not None:
            self.load_failed.remove(model, version, reason)

    def set_provider(self, model: str, version: str, provider: str) -> None:
        """Records the execution provider that serves a loaded version."""
        self.forget_provider(model, version)
        self._providers[model, version] = provider
        self.model_provider.labels(model, version, provider).set(1)

    def forget_provider(self, model: str, version: str) -> None:
        provider = self._providers.pop((model, version), None)
        if provider is not None:
            self.model_provider.remove(model, version, provider)
        with contextlib.suppress(KeyError):
            self.cpu_fallback.remove(model, version)


def build_info() -> dict[str, str]:
    """The labels of ``odetoode_build_info``: this server's, ONNX Runtime's and Python's versions."""
    import onnxruntime  # the server has imported it already; metrics alone (deploy checks) pay ~0.1 s once

    return {"version": server_version(), "onnxruntime": onnxruntime.__version__,
            "python": platform.python_version()}  # fmt: skip
