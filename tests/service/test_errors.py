"""The error table, walked over both transports: each error gets its HTTP status AND gRPC code, and the server
keeps serving afterwards. A new entry in ``ERROR_TABLE`` without a trigger here fails the suite."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from odetoode.proto.inference import grpc_service_pb2 as pb
from odetoode.testing.clients import infer_proto, observation_json, stub
from odetoode.testing.models import add_garbage, add_policy, add_runtime_failure
from odetoode.testing.servers import RunningServer, running_server
from service.errors import (
    ERROR_TABLE,
    DeadlineExceeded,
    InternalError,
    InvalidArgument,
    ModelLoadError,
    ModelNotFound,
    ModelNotReady,
    PayloadTooLarge,
    PermissionDenied,
    QueueFull,
    ServingError,
    Unauthenticated,
    Unavailable,
)

LIMIT = 64 * 1024


@dataclass
class Servers:
    main: RunningServer  # repository API on
    locked: RunningServer  # repository API off; drained at the end
    guarded: RunningServer  # bearer-token auth on


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    root: Path = tmp_path_factory.mktemp("errors")
    add_policy(root, "policy")
    add_policy(root, "queued", serving_config={"max_queue_size": 1, "max_queue_delay_us": 400_000})
    add_garbage(root, "broken")
    add_runtime_failure(root, "fragile")
    with (
        running_server(root, repository_api=True, max_request_bytes=LIMIT) as main,
        running_server(root, repository_api=False) as locked,
        running_server(
            root, auth_tokens=["token"], model_control_mode="explicit", startup_models=["policy"]
        ) as guarded,
    ):
        yield Servers(main, locked, guarded)


def rest(server: RunningServer, method: str, path: str, **kwargs: Any) -> httpx.Response:
    return httpx.request(method, server.http + path, timeout=30, **kwargs)


def grpc_code(server: RunningServer, call: Callable[[Any], Any]) -> grpc.StatusCode:
    channel, s = stub(server.grpc, **{"grpc.max_send_message_length": 16 * LIMIT})
    with channel:
        try:
            call(s)
        except grpc.RpcError as exc:
            return exc.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


def concurrently(first: Callable[[], Any], second: Callable[[], Any]) -> Any:
    """Starts ``first`` in a thread, lets it reach the queue, then returns ``second()``'s result."""
    thread = threading.Thread(target=first)
    thread.start()
    time.sleep(0.15)
    try:
        return second()
    finally:
        thread.join(10)


def big_json() -> dict[str, Any]:
    return observation_json(batch=LIMIT // 17 + 1)


# Each trigger: (REST call, gRPC call) on the servers, for one error class.
TRIGGERS: dict[type[ServingError], tuple[Callable[[Servers], httpx.Response], Callable[[Servers], grpc.StatusCode]]] = {
    InvalidArgument: (
        lambda s: rest(
            s.main,
            "POST",
            "/v2/models/policy/infer",
            json={"inputs": [{"name": "obs", "shape": [1, 17], "datatype": "FP32", "data": [0] * 17}]},
        ),
        lambda s: grpc_code(
            s.main,
            lambda st: st.ModelInfer(
                pb.ModelInferRequest(
                    model_name="policy",
                    inputs=[{"name": "observation", "datatype": "FP32", "shape": [1, 16]}],
                    raw_input_contents=[b"\0" * 64],
                )
            ),
        ),
    ),
    ModelNotFound: (
        lambda s: rest(s.main, "POST", "/v2/models/nosuch/infer", json=observation_json()),
        lambda s: grpc_code(s.main, lambda st: st.ModelInfer(infer_proto("nosuch"))),
    ),
    ModelNotReady: (
        lambda s: rest(s.main, "POST", "/v2/models/broken/infer", json=observation_json()),
        lambda s: grpc_code(s.main, lambda st: st.ModelInfer(infer_proto("broken"))),
    ),
    PayloadTooLarge: (
        lambda s: rest(s.main, "POST", "/v2/models/policy/infer", json=big_json()),
        lambda s: grpc_code(s.main, lambda st: st.ModelInfer(infer_proto("policy", LIMIT // 68 + 1))),
    ),
    QueueFull: (
        lambda s: concurrently(
            lambda: rest(s.main, "POST", "/v2/models/queued/infer", json=observation_json()),
            lambda: rest(s.main, "POST", "/v2/models/queued/infer", json=observation_json()),
        ),
        lambda s: concurrently(
            lambda: grpc_code(s.main, lambda st: st.ModelInfer(infer_proto("queued"))),
            lambda: grpc_code(s.main, lambda st: st.ModelInfer(infer_proto("queued"))),
        ),
    ),
    DeadlineExceeded: (
        lambda s: rest(
            s.main, "POST", "/v2/models/queued/infer", json=observation_json(), headers={"Request-Timeout-Ms": "100"}
        ),
        lambda s: grpc_code(s.main, lambda st: st.ModelInfer(infer_proto("queued"), timeout=0.1)),
    ),
    PermissionDenied: (
        lambda s: rest(s.locked, "POST", "/v2/repository/models/policy/unload"),
        lambda s: grpc_code(
            s.locked, lambda st: st.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="policy"))
        ),
    ),
    ModelLoadError: (
        lambda s: rest(s.main, "POST", "/v2/repository/models/broken/load"),
        lambda s: grpc_code(
            s.main, lambda st: st.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="broken"))
        ),
    ),
    Unauthenticated: (
        lambda s: rest(s.guarded, "POST", "/v2/models/policy/infer", json=observation_json()),
        lambda s: grpc_code(s.guarded, lambda st: st.ModelInfer(infer_proto("policy"))),
    ),
    InternalError: (
        lambda s: rest(s.main, "POST", "/v2/models/fragile/infer", json=observation_json(value=50.0)),
        lambda s: grpc_code(s.main, lambda st: st.ModelInfer(infer_proto("fragile", value=50.0))),
    ),
}


def test_every_error_class_has_a_trigger() -> None:
    assert set(TRIGGERS) | {Unavailable} == set(ERROR_TABLE)


@pytest.mark.parametrize("error", list(TRIGGERS), ids=lambda e: e.__name__)
def test_error_has_the_same_meaning_on_both_transports(servers: Servers, error: type[ServingError]) -> None:
    http_status, grpc_status = ERROR_TABLE[error]
    via_rest, via_grpc = TRIGGERS[error]
    response = via_rest(servers)
    assert response.status_code == http_status, response.text
    body = response.json()
    assert isinstance(body["error"], str) and body["error"]
    assert via_grpc(servers) == grpc_status
    # ... and the server still serves
    ok = rest(servers.main, "POST", "/v2/models/policy/infer", json=observation_json())
    assert ok.status_code == 200
    assert grpc_code(servers.main, lambda st: st.ModelInfer(infer_proto("policy"))) == grpc.StatusCode.OK


def test_messages_name_the_field(servers: Servers) -> None:
    r = rest(servers.main, "POST", "/v2/models/policy/infer", json={"inputs": [{"name": "observation",
             "shape": [1, 17], "datatype": "FP32", "data": [0] * 16}]})  # fmt: skip
    assert r.json()["error"].startswith("inputs[0].data:")
    r = rest(servers.main, "POST", "/v2/models/policy/infer", content=b"{not json")
    assert r.status_code == 400 and r.json()["error"].startswith("request body: not valid JSON")
    r = rest(servers.main, "POST", "/v2/models/policy/versions/abc/infer", json=observation_json())
    assert r.status_code == 400 and r.json()["error"].startswith("model_version:")


def test_malformed_protobuf_is_invalid_argument(servers: Servers) -> None:
    channel = grpc.insecure_channel(servers.main.grpc)
    with channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        with pytest.raises(grpc.RpcError) as info:
            call(b"\xff\xff\xff\xff garbage")
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "not a valid protobuf" in info.value.details()


def test_draining_refuses_new_requests_on_both_transports(servers: Servers) -> None:
    """Runs last in this module: it drains the locked server for good."""
    servers.locked.server.plane.start_drain()
    http_status, grpc_status = ERROR_TABLE[Unavailable]
    r = rest(servers.locked, "POST", "/v2/models/policy/infer", json=observation_json())
    assert r.status_code == http_status
    assert rest(servers.locked, "GET", "/v2/health/ready").status_code == 503
    assert grpc_code(servers.locked, lambda st: st.ModelInfer(infer_proto("policy"))) == grpc_status
