"""The per-request series are kept by hand (``service.metrics_requests``) and read through a custom collector: the
oracle is prometheus_client's own ``Counter``/``Histogram`` fed the same values -- the exposition must not differ. And
label values only ever come from the repository: what clients make up collapses to one value."""

from __future__ import annotations

import contextlib
import random

import grpc
import httpx
import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from odetoode.proto.inference import grpc_service_pb2_grpc as pb_grpc
from odetoode.proto.odetoode.v1 import policy_pb2 as ppb
from odetoode.proto.odetoode.v1 import policy_pb2_grpc as ppb_grpc
from odetoode.testing.clients import OBS, infer_proto, observation_json
from odetoode.testing.servers import RunningServer
from service.metrics import ServerMetrics, build_info
from service.metrics_requests import BATCH_BUCKETS, LATENCY_BUCKETS
from service.metrics_state import QueueLevel


def samples(registry: CollectorRegistry, families: set[str]) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """``{(sample name, labels): value}`` of ``families`` in the text exposition; ``_created`` samples (a clock, whose
    value cannot match) are there with the value 0."""
    text = generate_latest(registry).decode()
    return {
        (s.name, frozenset(s.labels.items())): 0.0 if s.name.endswith("_created") else s.value
        for family in text_string_to_metric_families(text)
        if family.name.removesuffix("_created") in families
        for s in family.samples
    }


def test_request_series_and_batch_sizes_expose_what_the_library_would() -> None:
    rng = np.random.default_rng(0)
    ours = ServerMetrics()
    oracle = CollectorRegistry()
    labels = ("model", "version", "protocol")
    requests = Counter("odetoode_requests", "", labels, registry=oracle)
    histograms = {
        name: Histogram(name, "", labels, buckets=LATENCY_BUCKETS, registry=oracle)
        for name in ("odetoode_request_duration_seconds", "odetoode_queue_duration_seconds",
                     "odetoode_compute_duration_seconds")
    }  # fmt: skip
    batch = Histogram("odetoode_batch_size", "", ("model", "version"), buckets=BATCH_BUCKETS, registry=oracle)
    for key in (("policy", "1", "policy"), ("policy", "1", "rest"), ("digits", "3", "grpc")):
        # log-uniform over 1 us .. 30 s, plus values exactly on bucket bounds (le is inclusive)
        on_bounds = np.repeat(np.array(LATENCY_BUCKETS)[:, None] * 1e9, 3, axis=1)
        ns = np.concatenate([10 ** rng.uniform(3, 10.5, size=(500, 3)), on_bounds]).round().astype(np.int64)
        series = ours.series(*key)
        for total, queue, compute in ns:
            series.success(int(total), int(queue), int(compute))
            requests.labels(*key).inc()
            for h, value in zip(histograms.values(), (total, queue, compute), strict=True):
                h.labels(*key).observe(int(value) / 1e9)
    for rows in [*rng.integers(1, 5000, size=300), *BATCH_BUCKETS]:
        ours.batch_sizes("policy", "1").observe(int(rows))
        batch.labels("policy", "1").observe(int(rows))

    families = {"odetoode_requests", *histograms, "odetoode_batch_size"}
    got, expected = samples(ours.registry, families), samples(oracle, families)
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert np.isclose(got[key], value, rtol=1e-12, atol=0), key


def test_inflight_gauge_reads_the_level_when_scraped() -> None:
    ours = ServerMetrics()
    oracle = CollectorRegistry()
    gauge = Gauge("odetoode_inflight_requests", "", ("protocol",), registry=oracle)
    level = ours.inflight_for("grpc")
    for step in (+1, +1, +1, -1, +1, -1):
        level.inc() if step > 0 else level.dec()
        gauge.labels("grpc").inc(step)
        family = {"odetoode_inflight_requests"}
        assert samples(ours.registry, family) == samples(oracle, family)
    assert ours.inflight_for("grpc") is level  # looked up, not re-created


def test_a_series_appears_as_soon_as_it_is_looked_up() -> None:
    """As labelled library children do: a version that has served nothing yet shows zeros, not nothing."""
    ours = ServerMetrics()
    ours.series("m", "1", "rest")
    ours.batch_sizes("m", "1")
    got = samples(ours.registry, {"odetoode_requests", "odetoode_request_duration_seconds", "odetoode_batch_size"})
    assert got[("odetoode_requests_total", frozenset({("model", "m"), ("version", "1"), ("protocol", "rest")}))] == 0
    count = ("odetoode_batch_size_count", frozenset({("model", "m"), ("version", "1")}))
    assert got[count] == 0


def test_made_up_names_and_versions_create_no_series(server: RunningServer) -> None:
    """Client-chosen model names and versions never become label values: after one round of every kind of request
    naming what does not exist (REST, gRPC, Act; made-up versions, unknown models, a 100 KiB version string), hundreds
    more add no series and nothing to the exposition; the one value they collapse to is ``_unknown``."""
    rng = random.Random(0)
    act = ppb.ActRequest(policy="policy", observation=np.zeros(OBS, "<f4").tobytes())

    def round_of_nonsense(version: str, model: str) -> None:
        for path in (f"policy/versions/{version[:2000]}", model[:2000]):  # (URLs stop at a few KB)
            httpx.post(f"{server.http}/v2/models/{path}/infer", json=observation_json(), timeout=30)
        with grpc.insecure_channel(server.grpc) as channel:
            for request in (infer_proto("policy", version=version), infer_proto(model)):
                with contextlib.suppress(grpc.RpcError):
                    pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
            act.version = version
            with contextlib.suppress(grpc.RpcError):
                ppb_grpc.PolicyServiceStub(channel).Act(act, timeout=30)

    def exposition() -> str:
        return httpx.get(server.metrics_url, timeout=30).text

    round_of_nonsense("7", "no-such-model")  # every kind once: a version that does not exist, one that cannot
    round_of_nonsense("9" * 20, "no-such-model")  # (two failure reasons: NOT_FOUND and INVALID_ARGUMENT)
    before = exposition()
    round_of_nonsense("9" * (100 << 10), "x" * 1000)
    for _ in range(100):
        round_of_nonsense(str(rng.randrange(3, 10**9)), f"model-{rng.randrange(10**9)}")
    after = exposition()
    series = [line.rsplit(" ", 1)[0] for line in after.splitlines() if line and not line.startswith("#")]
    assert series == [line.rsplit(" ", 1)[0] for line in before.splitlines() if line and not line.startswith("#")]
    labels = {v for family in text_string_to_metric_families(after) for sample in family.samples
              for v in sample.labels.values()}  # fmt: skip
    assert "_unknown" in labels
    assert not [v for v in labels if v.startswith("model-") or "xxxx" in v or "99999" in v]


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def test_load_failures_and_cpu_fallbacks_are_states_while_they_hold() -> None:
    """Alerts read these gauges, not ``increase()`` of the counters (which never sees a first increment)."""
    ours = ServerMetrics()
    r = ours.registry
    ours.model_load_failed("m", "1", "golden_check")
    assert value(r, "odetoode_model_load_failed", model="m", version="1", reason="golden_check") == 1
    assert value(r, "odetoode_model_load_failures_total", model="m", version="1") == 1
    ours.model_load_failed("m", "1", "invalid_model")  # the newest reason replaces the older one
    assert value(r, "odetoode_model_load_failed", model="m", version="1", reason="golden_check") is None
    ours.set_model_state("m", "1", "FAILED")
    assert value(r, "odetoode_model_load_failed", model="m", version="1", reason="invalid_model") == 1
    ours.model_loaded("m", "1", "CPUExecutionProvider", cpu_fallback=True)
    ours.set_model_state("m", "1", "READY")
    assert value(r, "odetoode_model_load_failed", model="m", version="1", reason="invalid_model") is None
    assert value(r, "odetoode_model_cpu_fallback", model="m", version="1") == 1
    assert value(r, "odetoode_provider_fallbacks_total", model="m", version="1") == 1
    assert value(r, "odetoode_model_loads_total", model="m", version="1") == 1
    ours.model_loaded("m", "1", "CUDAExecutionProvider", cpu_fallback=False)  # reloaded onto the GPU
    assert value(r, "odetoode_model_cpu_fallback", model="m", version="1") is None
    ours.model_load_failed("m", "2", "provider", attempted=False)
    assert value(r, "odetoode_model_load_failures_total", model="m", version="2") is None
    ours.model_unloaded("m", "1")
    ours.forget_model("m", "2")
    assert value(r, "odetoode_model_unloads_total", model="m", version="1") == 1
    assert (
        value(r, "odetoode_model_execution_provider", model="m", version="1", provider="CUDAExecutionProvider") is None
    )
    assert value(r, "odetoode_model_load_failed", model="m", version="2", reason="provider") is None
    with pytest.raises(ValueError, match="not one of"):
        ours.model_load_failed("m", "1", "disk on fire")


def test_readiness_queues_build_and_process_are_read_when_scraped() -> None:
    ours = ServerMetrics()
    state = {"ready": 0, "queued": 3}
    ours.watch_server(lambda: state["ready"] == 1, lambda: [QueueLevel("m", "1", state["queued"], 8)])
    r = ours.registry
    assert value(r, "odetoode_server_ready") == 0
    assert value(r, "odetoode_queue_requests", model="m", version="1") == 3
    assert value(r, "odetoode_queue_requests_limit", model="m", version="1") == 8
    state.update(ready=1, queued=8)
    assert value(r, "odetoode_server_ready") == 1
    assert value(r, "odetoode_queue_requests", model="m", version="1") == 8
    info = build_info()
    assert value(r, "odetoode_build_info", **info) == 1 and info["version"] and info["onnxruntime"]
    assert (value(r, "process_resident_memory_bytes") or 0) > 1 << 20
    assert (value(r, "process_open_fds") or 0) > 0
    assert value(r, "process_cpu_seconds_total") is not None
    # every refusal series exists from the start, at 0
    assert value(r, "odetoode_request_refusals_total", protocol="policy", reason="PayloadTooLarge") == 0


def test_requests_refused_before_a_model_are_counted_apart_from_failures(server: RunningServer) -> None:
    """A malformed REST body and an oversized Act are refused before they reach a model: refusals by reason; a
    request for a model that does not exist is a failed request, counted once, not also as a refusal."""

    def scrape() -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        text = httpx.get(server.metrics_url, timeout=30).text
        return {(x.name, frozenset(x.labels.items())): x.value
                for family in text_string_to_metric_families(text) for x in family.samples}  # fmt: skip

    def refusals(scraped: dict[tuple[str, frozenset[tuple[str, str]]], float], protocol: str, reason: str) -> float:
        return scraped[("odetoode_request_refusals_total", frozenset({("protocol", protocol), ("reason", reason)}))]

    def failures(scraped: dict[tuple[str, frozenset[tuple[str, str]]], float]) -> float:
        return sum(v for (name, _), v in scraped.items() if name == "odetoode_request_failures_total")

    before = scrape()
    malformed = httpx.post(f"{server.http}/v2/models/policy/infer", content=b"{not json", timeout=30)
    assert malformed.status_code == 400
    with grpc.insecure_channel(server.grpc) as channel, contextlib.suppress(grpc.RpcError):
        ppb_grpc.PolicyServiceStub(channel).Act(ppb.ActRequest(policy="policy", observation=bytes(1 << 17)), timeout=30)
    unknown = httpx.post(f"{server.http}/v2/models/no-such-model/infer", json=observation_json(), timeout=30)
    assert unknown.status_code == 404
    after = scrape()
    assert refusals(after, "rest", "InvalidArgument") - refusals(before, "rest", "InvalidArgument") == 1
    assert refusals(after, "policy", "PayloadTooLarge") - refusals(before, "policy", "PayloadTooLarge") == 1
    assert refusals(after, "rest", "ModelNotFound") == refusals(before, "rest", "ModelNotFound")
    assert failures(after) - failures(before) == 1
