"""Prometheus collectors, built on an injected registry (tests get a fresh one; no global state to reset).

Request-level series are labelled by model, version and protocol (``rest``, ``grpc``, ``policy``); batch sizes are a
property of a batch, not of a protocol, so they carry model and version only. Latencies are histograms (not
summaries) so p50/p99 can be aggregated across replicas.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# 10 us .. 10 s: a policy computes in tens of microseconds, a cold classifier batch in tens of milliseconds.
LATENCY_BUCKETS = (
    1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
)  # fmt: skip
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)
MODEL_STATES = ("LOADING", "READY", "UNAVAILABLE", "UNLOADING", "FAILED")


@dataclass(frozen=True)
class RequestSeries:
    """The labelled children of one (model, version, protocol), looked up once: ``labels()`` costs about a
    microsecond per call, which matters next to a 25 us policy."""

    requests: Any
    request_seconds: Any
    queue_seconds: Any
    compute_seconds: Any

    def success(self, total_ns: int, queue_ns: int, compute_ns: int) -> None:
        self.requests.inc()
        self.request_seconds.observe(total_ns / 1e9)
        self.queue_seconds.observe(queue_ns / 1e9)
        self.compute_seconds.observe(compute_ns / 1e9)


class ServerMetrics:
    """Every metric the server exports, registered on ``registry``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        request = ("model", "version", "protocol")
        self.requests = Counter("odetoode_requests", "Inference requests answered successfully.", request, registry=r)
        self.failures = Counter(
            "odetoode_request_failures",
            "Inference requests that failed, by reason (the error class).",
            (*request, "reason"),
            registry=r,
        )
        self.request_seconds = Histogram(
            "odetoode_request_duration_seconds",
            "Time from request decoded to response ready, inside the server.",
            request,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_seconds = Histogram(
            "odetoode_queue_duration_seconds",
            "Time a request waited in its model's batcher queue.",
            request,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.compute_seconds = Histogram(
            "odetoode_compute_duration_seconds",
            "ONNX Runtime time of the batch each request was computed in.",
            request,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "odetoode_batch_size", "Rows per executed batch.", ("model", "version"), buckets=BATCH_BUCKETS, registry=r
        )
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

        self._series: dict[tuple[str, str, str], RequestSeries] = {}
        self._inflight: dict[str, Any] = {}

    def series(self, model: str, version: str, protocol: str) -> RequestSeries:
        key = (model, version, protocol)
        found = self._series.get(key)
        if found is None:
            found = self._series[key] = RequestSeries(
                self.requests.labels(*key),
                self.request_seconds.labels(*key),
                self.queue_seconds.labels(*key),
                self.compute_seconds.labels(*key),
            )
        return found

    def inflight_for(self, protocol: str) -> Any:
        found = self._inflight.get(protocol)
        if found is None:
            found = self._inflight[protocol] = self.inflight.labels(protocol)
        return found

    def set_model_state(self, model: str, version: str, state: str) -> None:
        for s in MODEL_STATES:
            self.model_state.labels(model, version, s).set(1.0 if s == state else 0.0)

    def forget_model(self, model: str, version: str) -> None:
        """Drops the series of a version that left the repository (so dashboards stop showing it)."""
        for s in MODEL_STATES:
            with contextlib.suppress(KeyError):
                self.model_state.remove(model, version, s)
        for labels in list(self.model_provider._metrics):
            if labels[:2] == (model, version):
                self.model_provider.remove(*labels)
