"""Triton's statistics extension, asked by tritonclient over HTTP and gRPC of a live server driven with known traffic.

The traffic (``traffic`` fixture) goes down every inference path -- OIP over both transports, a bulk request (a gzip
body), the robots' policy API -- and includes failures inside the data plane (a NaN observation, an unknown requested
output) and refusals that reach no served version (an unknown model, an unknown version). The answers must count
exactly what was sent: requests, rows, batches per size, failures, attributed to the version that served them.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from odetoode.client import PolicyClient
from odetoode.testing.models import OBS, add_policy
from odetoode.testing.servers import RunningServer, running_server

pytestmark = pytest.mark.timeout(120)

PROTOCOLS = ("http", "grpc")
NOT_FOUND = {"grpc": "StatusCode.NOT_FOUND", "http": "404"}
INVALID = {"grpc": "StatusCode.INVALID_ARGUMENT", "http": "400"}
DURATIONS = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")


@dataclass
class Expected:
    """What one version was sent: successes, failures and the rows of each executed request (one batch each)."""

    success: int = 0
    fail: int = 0
    batches: list[int] = field(default_factory=list)


@dataclass
class Traffic:
    expected: dict[tuple[str, str], Expected]
    started_ms: int
    ended_ms: int


@pytest.fixture(scope="module")
def stats_server(model_repo: Path) -> Iterator[RunningServer]:
    """A server of its own: its statistics count this module's traffic and nothing else."""
    with running_server(model_repo) as running:
        yield running


def connect(protocol: str, server: RunningServer, **kwargs: Any) -> Any:
    if protocol == "grpc":
        return grpcclient.InferenceServerClient(server.grpc, **kwargs)
    return httpclient.InferenceServerClient(server.http.removeprefix("http://"), **kwargs)


def observation(protocol: str, rows: int, value: float = 0.1) -> Any:
    module = grpcclient if protocol == "grpc" else httpclient
    tensor = module.InferInput("observation", [rows, OBS], "FP32")
    tensor.set_data_from_numpy(np.full((rows, OBS), value, np.float32))
    return tensor


def raises_status(expected: dict[str, str], protocol: str, call: Any) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as info:
        call()
    assert info.value.status() == expected[protocol], info.value
    return info.value


@pytest.fixture(scope="module")
def traffic(stats_server: RunningServer) -> Traffic:
    """Sends the module's traffic, one request at a time (so each executed batch is one request), and says what each
    version must have counted."""
    policy1, policy2 = Expected(), Expected()
    started = time.time_ns() // 1_000_000
    http, grpc = connect("http", stats_server), connect("grpc", stats_server)
    try:
        for rows in (1, 2, 3):  # no version: the highest, 2
            assert http.infer("policy", [observation("http", rows)]).as_numpy("action").shape == (rows, 6)
            policy2.success += 1
            policy2.batches.append(rows)
        jobs = stats_server.server.bulk.jobs
        bulk = http.infer("policy", [observation("http", 4)], request_compression_algorithm="gzip")
        assert bulk.as_numpy("action").shape == (4, 6)
        assert stats_server.server.bulk.jobs == jobs + 1  # a compressed body: decoded and computed by a bulk worker
        policy2.success += 1
        policy2.batches.append(4)
        for _ in range(2):
            assert grpc.infer("policy", [observation("grpc", 5)], model_version="1").as_numpy("action").shape == (5, 6)
            policy1.success += 1
            policy1.batches.append(5)
        with PolicyClient(stats_server.grpc) as robot:
            assert robot.act("policy", np.zeros(OBS)).values.shape == (6,)
        policy2.success += 1
        policy2.batches.append(1)

        # failures inside the data plane, counted against the version they reached
        raises_status(INVALID, "http", lambda: http.infer("policy", [observation("http", 1, float("nan"))]))
        policy2.fail += 1
        unknown_output = [grpcclient.InferRequestedOutput("nosuch")]
        raises_status(
            INVALID, "grpc", lambda: grpc.infer("policy", [observation("grpc", 2)], "1", outputs=unknown_output)
        )
        policy1.fail += 1
        # refusals that reach no served version: counted nowhere
        raises_status(NOT_FOUND, "http", lambda: http.infer("nosuch", [observation("http", 1)]))
        raises_status(NOT_FOUND, "grpc", lambda: grpc.infer("policy", [observation("grpc", 1)], model_version="7"))
    finally:
        http.close()
        grpc.close()
    return Traffic(
        {("policy", "1"): policy1, ("policy", "2"): policy2, ("digits", "1"): Expected()},
        started,
        time.time_ns() // 1_000_000,
    )


def figures(stat: Any) -> dict[str, Any]:
    """One ``model_stats`` entry as plain numbers, from tritonclient.http's JSON or tritonclient.grpc's message."""
    if isinstance(stat, dict):
        inference = {k: (stat["inference_stats"][k]["count"], stat["inference_stats"][k]["ns"]) for k in DURATIONS}
        batches = {
            b["batch_size"]: (b["compute_infer"]["count"], b["compute_infer"]["ns"]) for b in stat["batch_stats"]
        }
        return {"name": stat["name"], "version": stat["version"], "last_inference": stat["last_inference"],
                "inference_count": stat["inference_count"], "execution_count": stat["execution_count"],
                "inference": inference, "batches": batches}  # fmt: skip
    inference = {k: (getattr(stat.inference_stats, k).count, getattr(stat.inference_stats, k).ns) for k in DURATIONS}
    batches = {b.batch_size: (b.compute_infer.count, b.compute_infer.ns) for b in stat.batch_stats}
    return {"name": stat.name, "version": stat.version, "last_inference": stat.last_inference,
            "inference_count": stat.inference_count, "execution_count": stat.execution_count,
            "inference": inference, "batches": batches}  # fmt: skip


def statistics(protocol: str, server: RunningServer, model: str = "", version: str = "") -> dict[tuple[str, str], Any]:
    """``get_inference_statistics`` of a stock client, keyed by (name, version)."""
    client = connect(protocol, server)
    try:
        answer = client.get_inference_statistics(model, version)
    finally:
        client.close()
    stats = answer["model_stats"] if protocol == "http" else answer.model_stats
    found = {(f["name"], f["version"]): f for f in map(figures, stats)}
    assert len(found) == len(stats), "a version reported twice"
    return found


def check(found: dict[str, Any], expected: Expected, traffic: Traffic) -> None:
    inference = found["inference"]
    assert found["inference_count"] == sum(expected.batches)
    assert found["execution_count"] == len(expected.batches)
    assert inference["success"][0] == expected.success
    assert inference["fail"][0] == expected.fail
    for stage in ("queue", "compute_input", "compute_infer", "compute_output"):
        assert inference[stage][0] == expected.success, stage
    sizes = {size: expected.batches.count(size) for size in set(expected.batches)}
    assert {size: count for size, (count, _) in found["batches"].items()} == sizes
    if expected.success:
        assert inference["success"][1] >= inference["compute_infer"][1] > 0
        assert inference["compute_infer"][1] >= sum(ns for _, ns in found["batches"].values()) > 0
        assert inference["compute_input"][1] == inference["compute_output"][1] == 0  # inside ONNX Runtime's run
    if expected.fail:
        assert inference["fail"][1] > 0
    if expected.success or expected.fail:
        assert traffic.started_ms <= found["last_inference"] <= traffic.ended_ms
    else:
        assert found["last_inference"] == 0 and found["batches"] == {} and inference["success"] == (0, 0)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_every_model(stats_server: RunningServer, traffic: Traffic, protocol: str) -> None:
    found = statistics(protocol, stats_server)
    assert sorted(found) == sorted(traffic.expected)
    for key, expected in traffic.expected.items():
        check(found[key], expected, traffic)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_one_model_and_one_version(stats_server: RunningServer, traffic: Traffic, protocol: str) -> None:
    found = statistics(protocol, stats_server, "policy")
    assert sorted(found) == [("policy", "1"), ("policy", "2")]
    for key, stat in found.items():
        check(stat, traffic.expected[key], traffic)
    for version in ("1", "2"):
        one = statistics(protocol, stats_server, "policy", version)
        assert list(one) == [("policy", version)]
        check(one["policy", version], traffic.expected["policy", version], traffic)


def test_both_transports_tell_the_same(stats_server: RunningServer, traffic: Traffic) -> None:
    """Asking is not traffic: the figures do not move between the two answers, which must agree to the nanosecond."""
    assert statistics("http", stats_server) == statistics("grpc", stats_server)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_unknown_model_or_version(stats_server: RunningServer, traffic: Traffic, protocol: str) -> None:
    client = connect(protocol, stats_server)
    try:
        error = raises_status(NOT_FOUND, protocol, lambda: client.get_inference_statistics("nosuch"))
        assert "unknown model 'nosuch'" in error.message()
        raises_status(NOT_FOUND, protocol, lambda: client.get_inference_statistics("policy", "7"))
        if protocol == "grpc":  # the REST paths cannot say "a version of every model"
            raises_status(INVALID, protocol, lambda: client.get_inference_statistics("", "1"))
        meta = client.get_server_metadata()
        extensions = meta["extensions"] if protocol == "http" else list(meta.extensions)
        assert "statistics" in extensions
    finally:
        client.close()


def test_rest_answer_is_tritons_json(stats_server: RunningServer, traffic: Traffic) -> None:
    """The exact keys of Triton's ``$stats_model_response`` (tritonclient.http hands the JSON through as it is)."""
    r = httpx.get(stats_server.http + "/v2/models/policy/versions/2/stats", timeout=30)
    assert r.status_code == 200, r.text
    (stat,) = r.json()["model_stats"]
    assert set(stat) == {"name", "version", "last_inference", "inference_count", "execution_count",
                         "inference_stats", "batch_stats"}  # fmt: skip
    assert set(stat["inference_stats"]) == set(DURATIONS)
    assert all(set(d) == {"count", "ns"} and all(type(v) is int for v in d.values())
               for d in stat["inference_stats"].values())  # fmt: skip
    assert [b["batch_size"] for b in stat["batch_stats"]] == sorted({1, 2, 3, 4})
    assert set(stat["batch_stats"][0]) == {"batch_size", "compute_input", "compute_infer", "compute_output"}
    assert httpx.get(stats_server.http + "/v2/models/nosuch/stats", timeout=30).status_code == 404


def test_statistics_need_the_token_like_metadata(tmp_path: Path) -> None:
    add_policy(tmp_path, "policy")
    token = "stats-token"
    with running_server(tmp_path, auth_tokens=[token]) as server:
        for path in ("/v2/models/stats", "/v2/models/policy/stats", "/v2/models/policy/versions/1/stats"):
            r = httpx.get(server.http + path, timeout=30)
            assert r.status_code == 401 and r.json()["error"].startswith("authorization:"), path
            ok = httpx.get(server.http + path, headers={"authorization": f"Bearer {token}"}, timeout=30)
            assert ok.status_code == 200 and ok.json()["model_stats"][0]["name"] == "policy", path
        grpc = connect("grpc", server)
        try:
            raises_status({"grpc": "StatusCode.UNAUTHENTICATED"}, "grpc", grpc.get_inference_statistics)
            answer = grpc.get_inference_statistics(headers={"authorization": f"Bearer {token}"})
            assert [(s.name, s.version) for s in answer.model_stats] == [("policy", "1")]
        finally:
            grpc.close()
