"""The Grafana dashboard (deploy/grafana/odetoode-dashboard.json, shared by Compose, Kustomize and Helm) against the
metrics the server exports: every metric it queries must exist in ``service.metrics.ServerMetrics``.
"""

from __future__ import annotations

import json
import re

from service.metrics import ServerMetrics
from service.metrics_state import QueueLevel

from .layout import DASHBOARD


def dashboard_expressions() -> list[str]:
    """Every PromQL expression of the dashboard: the panels' queries and the template variables' definitions."""
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", []) if "expr" in t]
    exprs += [v["definition"] for v in dashboard["templating"]["list"] if "definition" in v]
    return exprs


def exported_samples() -> set[str]:
    """Sample names the server exports (``_total``, ``_bucket``, ``_sum``, ``_count`` included)."""
    metrics = ServerMetrics()
    # Children appear once labelled: touch one of each so that every family has its samples.
    series = metrics.series("m", "1", "rest")
    series.success(1000, 1000, 1000)
    metrics.failures.labels("m", "1", "rest", "invalid_argument").inc()
    metrics.batch_sizes("m", "1").observe(1)
    metrics.inflight_for("rest").inc()
    metrics.set_model_state("m", "1", "READY")
    metrics.model_provider.labels("m", "1", "CPUExecutionProvider").set(1)
    metrics.model_loaded("m", "1", "CPUExecutionProvider", cpu_fallback=True)
    metrics.model_unloaded("m", "1")
    metrics.model_loaded("m", "1", "CPUExecutionProvider", cpu_fallback=True)
    metrics.model_load_failed("m", "2", "invalid_model")
    metrics.watch_server(lambda: True, lambda: [QueueLevel("m", "1", 0, 8)])
    return {s.name for family in metrics.registry.collect() for s in family.samples}


def check_dashboard() -> list[str]:
    """The dashboard queries only exported metrics, and shows latency, queueing, batching, failures and model state
    (with p50/p99 from the histograms)."""
    problems: list[str] = []
    samples = exported_samples()
    used = {name for expr in dashboard_expressions() for name in re.findall(r"\bodetoode_[a-z_]+", expr)}
    for name in sorted(used - samples):
        problems.append(f"the dashboard queries {name}, which the server does not export")
    text = " ".join(dashboard_expressions())
    needed_families = (
        "odetoode_request_duration_seconds_bucket",
        "odetoode_queue_duration_seconds_bucket",
        "odetoode_batch_size_bucket",
        "odetoode_request_failures_total",
        "odetoode_model_state",
    )
    for needed in needed_families:
        if needed not in text:
            problems.append(f"the dashboard does not show {needed}")
    if "histogram_quantile(0.99" not in text or "histogram_quantile(0.5" not in text:
        problems.append("the dashboard has no p50/p99 from the histograms")
    return problems
