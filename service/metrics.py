"""Prometheus metrics, built on an injected registry (tests get a fresh one; no global state to reset).

``ServerMetrics`` is every metric the server exports. What it owns itself is what is recorded rarely -- failures,
refusals, model states, loads -- with the library's metric classes. The per-request series (counts, latency and
batch-size histograms) are kept by hand for speed in ``service.metrics_requests``; what the server is doing now
(readiness, each model's queue, the bulk pool) is read when scraped by the collectors of ``service.metrics_state``,
from callables the server hands over (``watch_server``, ``watch_bulk``). The process itself (resident memory, open
file descriptors, CPU seconds, start time) comes from prometheus_client's ``ProcessCollector`` on the same registry,
and ``odetoode_build_info`` names the versions that run.

For alerting, what must not be missed is a state, not only a counter: Prometheus's ``increase()`` never sees a
counter's first increment (the series appears with it), so a version whose load failed or that fell back to CPU
is also a gauge that stays 1 while it holds (``odetoode_model_load_failed``, ``odetoode_model_cpu_fallback``).

``ServerMetrics`` also keeps Triton's per-version statistics (``service.statistics``): the same events, reported
through the statistics extension rather than scraped.
"""

from __future__ import annotations

import contextlib
import platform
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Info, ProcessCollector

from service import server_version
from service.errors import ERROR_TABLE
from service.metrics_requests import (
    BATCH_BUCKETS,
    BATCH_LABELS,
    LATENCY_BUCKETS,
    REQUEST_LABELS,
    HistogramCells,
    InflightLevel,
    PerRequestSeries,
    RequestSeries,
)
from service.metrics_state import BulkCollector, BulkState, QueueLevel, ServerStateCollector
from service.statistics import Statistics

__all__ = [  # the public names, wherever they are defined
    "BATCH_BUCKETS",
    "BATCH_LABELS",
    "LATENCY_BUCKETS",
    "LOAD_FAILURE_REASONS",
    "MODEL_STATES",
    "REFUSAL_PROTOCOLS",
    "REFUSAL_REASONS",
    "REQUEST_LABELS",
    "BulkState",
    "HistogramCells",
    "InflightLevel",
    "QueueLevel",
    "RequestSeries",
    "ServerMetrics",
    "build_info",
]

MODEL_STATES = ("LOADING", "READY", "UNAVAILABLE", "UNLOADING", "FAILED")
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
            "Requests answered with an error before they reached a model, by reason (the error class): no accepted "
            "token, too large, malformed, refused from their headers, no bulk place left, the server draining. Not "
            "counted in odetoode_request_failures_total.",
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

        self._inflight: dict[str, InflightLevel] = {}
        self._providers: dict[tuple[str, str], str] = {}
        self._load_failures: dict[tuple[str, str], str] = {}
        self.statistics = Statistics()
        """Triton's statistics extension, per model version."""
        self._per_request = PerRequestSeries(self.statistics)
        r.register(self._per_request)

    def series(self, model: str, version: str, protocol: str) -> RequestSeries:
        """The success count and latency histograms of one (model, version, protocol)."""
        return self._per_request.series(model, version, protocol)

    def batch_sizes(self, model: str, version: str) -> HistogramCells:
        """The batch-size histogram of one version (its batcher observes every executed batch)."""
        return self._per_request.batch_sizes(model, version)

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
        self.registry.register(BulkCollector(pool))

    def watch_server(self, ready: Callable[[], bool], queues: Callable[[], Iterable[QueueLevel]]) -> None:
        """Exports the server's readiness and its served versions' queues, asked of these callables when scraped."""
        self.registry.register(ServerStateCollector(ready, queues))

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
