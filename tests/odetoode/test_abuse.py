"""The abusive clients (``odetoode.testing.abuse``): their requests are what they claim to be -- a good request built
from them is served, a refused one gets the refusal the server gives it -- and a short run of a kind counts what
came back; every kind is one ``benchmarks/isolation.py`` documents."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from odetoode.testing.abuse import (
    ACT,
    KINDS,
    MODEL_INFER,
    Abuser,
    Ports,
    abuse,
    binary_request,
    grpc_call,
    hold_connections,
    http_exchange,
    json_just_under,
    policy_json,
    post_head,
)
from odetoode.testing.clients import OBS, infer_proto
from odetoode.testing.models import add_policy
from odetoode.testing.servers import RunningServer, running_server

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    root = tmp_path_factory.mktemp("abuse")
    add_policy(root, "policy", 1, seed=3)
    with running_server(root, max_request_bytes=64 * 1024) as running:
        yield running


def ports(server: RunningServer) -> Ports:
    return Ports(server.server.http_port, server.server.grpc_port, server.server.metrics_port)


def test_good_requests_are_served_and_bad_ones_refused(server: RunningServer) -> None:
    http = server.server.http_port
    body = policy_json(3)
    assert http_exchange(http, post_head("/v2/models/policy/infer", len(body)), body) == "200"
    assert http_exchange(http, post_head("/v2/models/nope/infer", len(body)), body) == "404"
    header, blob = binary_request(3)
    extra = f"Inference-Header-Content-Length: {len(header)}\r\n"
    assert http_exchange(http, post_head("/v2/models/policy/infer", len(header + blob), extra), header + blob) == "200"
    too_big = policy_json(1000)  # over the 64 KiB limit: refused, whether or not the server reads it all
    assert http_exchange(http, post_head("/v2/models/policy/infer", len(too_big)), too_big) == "413"
    assert grpc_call(server.grpc, MODEL_INFER, infer_proto("policy", 3).SerializeToString()) == "OK"
    assert grpc_call(server.grpc, ACT, b"\xff") == "INVALID_ARGUMENT"


def test_a_json_body_just_under_a_limit_is_valid_and_close_to_it() -> None:
    limit = 200_000
    body = json_just_under(limit)
    assert 0.98 * limit < len(body) < limit
    (tensor,) = orjson.loads(body)["inputs"]
    assert tensor["shape"][1] == OBS and len(tensor["data"]) == tensor["shape"][0]


def test_made_up_versions_add_no_series_after_the_first_round(server: RunningServer) -> None:
    outcomes = abuse("made-up-versions", ports(server), 0.5, server.server.settings, policy="policy")
    assert outcomes.pop("series after the first round") == outcomes.pop("series at the end") > 0
    assert outcomes.get("404", 0) > 1 and outcomes.get("NOT_FOUND", 0) > 2, outcomes
    assert "OK" not in outcomes and "200" not in outcomes


def test_held_connections_are_kept_open(server: RunningServer) -> None:
    abuser = Abuser(ports(server), 0.3, server.server.settings, "policy")
    hold_connections(abuser, {abuser.ports.http: 5, abuser.ports.grpc: 3}, {abuser.ports.grpc: b"PRI * HTTP/2.0\r\n"})
    assert abuser.outcomes["opened on rest"] >= 5 and abuser.outcomes["opened on grpc"] >= 3, abuser.outcomes


def test_every_kind_is_documented_by_the_benchmark() -> None:
    doc = ast.get_docstring(ast.parse((ROOT / "benchmarks" / "isolation.py").read_text())) or ""
    documented = [line.split()[0] for line in doc.splitlines() if line.startswith("    ") and "  " in line.strip()]
    assert documented == list(KINDS)
