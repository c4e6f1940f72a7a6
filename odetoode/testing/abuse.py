"""Hostile and careless clients: each kind of abuse a server must survive, as a function that runs it back-to-back
against a server on loopback for a while and counts what came back, and the raw requests they are made of (the
service tests send some of them too).

A kind is a function of an ``Abuser`` (the server's ports, how long, the server's limits, the outcomes so far);
``KINDS`` names them, ``abuse`` runs one by name. ``benchmarks/isolation.py`` runs each in a process of its own
while a robot measures its round trips.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import select
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import grpc
import numpy as np
import orjson

from odetoode.proto.inference import grpc_service_pb2 as pb
from odetoode.proto.odetoode.v1 import policy_pb2 as ppb
from odetoode.testing.bench.watch import series_count
from odetoode.testing.clients import OBS

if TYPE_CHECKING:
    from service.settings import ServerSettings

MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
ACT = "/odetoode.v1.PolicyService/Act"


@dataclass
class Ports:
    """A server's ports on 127.0.0.1."""

    http: int
    grpc: int
    metrics: int


# -- raw requests ---------------------------------------------------------------------------------------------------


def post_head(path: str, length: int, extra: str = "") -> bytes:
    """The head of an HTTP/1.1 JSON POST declaring a body of ``length`` bytes; ``extra``: more header lines, each
    ending in CRLF."""
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n{extra}\r\n"
    ).encode()


def http_exchange(port: int, head: bytes, body: bytes | memoryview = b"", chunk: int = 1 << 20) -> str:
    """Sends a request (``head`` then ``body`` in chunks) and returns the response's status, or how the connection
    ended: the server may answer and close before the body is all sent, as it should for a refused body."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        try:
            s.sendall(head)
            view = memoryview(body)
            for start in range(0, len(view), chunk):
                if select.select([s], [], [], 0)[0]:
                    break  # answered early
                s.sendall(view[start : start + chunk])
        except OSError:
            pass
        try:
            answer = s.recv(256)
        except OSError:
            return "reset"
    match = re.match(rb"HTTP/1.1 (\d+)", answer)
    return match.group(1).decode() if match else "closed"


def infer_json(x: np.ndarray) -> bytes:
    """An OIP REST infer body carrying the rows ``x`` (rows x observation values) as FP32 JSON."""
    return orjson.dumps({"inputs": [{"name": "observation", "shape": list(x.shape), "datatype": "FP32",
                                     "data": x.tolist()}]})  # fmt: skip


def policy_json(rows: int, seed: int = 0) -> bytes:
    """``infer_json`` of ``rows`` normal observations drawn with ``seed``."""
    return infer_json(np.random.default_rng(seed).normal(size=(rows, OBS)).astype(np.float32))


def json_just_under(limit: int) -> bytes:
    """A valid policy JSON body just under ``limit`` bytes."""
    per_row = len(policy_json(1000)) / 1000
    rows = int(limit / per_row)
    while True:
        body = policy_json(rows)
        if len(body) < limit:
            return body
        rows = int(rows * 0.99)


def binary_header(shape: list[int], datatype: str, size: int, *, binary_output: bool = True) -> bytes:
    """The JSON header of an OIP REST binary-extension request whose ``observation`` input is ``size`` bytes;
    ``binary_output`` asks for the outputs as binary too."""
    doc: dict[str, Any] = {"inputs": [{"name": "observation", "shape": shape, "datatype": datatype,
                                       "parameters": {"binary_data_size": size}}]}  # fmt: skip
    if binary_output:
        doc["parameters"] = {"binary_data_output": True}
    return orjson.dumps(doc)


def binary_request(
    rows: int, datatype: str = "FP32", shape: list[int] | None = None, size: int | None = None
) -> tuple[bytes, bytes]:
    """(header, zeros) of a binary-extension request: ``rows`` policy observations unless ``shape`` and ``size``
    say otherwise."""
    size = rows * OBS * 4 if size is None else size
    return binary_header(shape or [rows, OBS], datatype, size), bytes(size)


def unary(channel: grpc.Channel, method: str, wire: bytes, timeout: float = 30) -> tuple[grpc.StatusCode, str, bytes]:
    """One unary call of serialized bytes: (status code, details, serialized answer)."""
    try:
        answer = channel.unary_unary(method)(wire, timeout=timeout)
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or "", b""
    return grpc.StatusCode.OK, "", answer


def grpc_call(target: str, method: str, payload: bytes, timeout: float = 30) -> str:
    """One unary call on a channel of its own that sends and takes messages up to 1 GiB: the status code's name."""
    with grpc.insecure_channel(target, options=[("grpc.max_send_message_length", 1 << 30),
                                                ("grpc.max_receive_message_length", 1 << 30)]) as channel:  # fmt: skip
        return unary(channel, method, payload, timeout)[0].name


def server_settings(server_args: list[str]) -> ServerSettings:
    """The server's effective settings for these flags (its defaults otherwise): the largest requests it accepts."""
    from pydantic_settings import CliApp

    from service.settings import ServerSettings

    return CliApp.run(ServerSettings, cli_args=server_args)


# -- the kinds --------------------------------------------------------------------------------------------------------


@dataclass
class Abuser:
    """One run of one kind of abuse: the server's ports and limits, how long, and each outcome's count."""

    ports: Ports
    seconds: float
    limits: ServerSettings
    policy: str = "halfcheetah"
    outcomes: dict[str, int] = field(default_factory=dict)

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.ports.grpc}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.metrics}/metrics"

    def infer_path(self, model: str | None = None) -> str:
        return f"/v2/models/{model or self.policy}/infer"

    def count(self, outcome: str) -> None:
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1

    def repeat(self, step: Callable[[], str]) -> None:
        """``step`` back-to-back (``ABUSE_PAUSE`` seconds apart, 0 unless set) for ``seconds``, counting outcomes."""
        deadline = time.monotonic() + self.seconds
        while time.monotonic() < deadline:
            self.count(step())
            time.sleep(float(os.environ.get("ABUSE_PAUSE", "0")))

    def repeat_post(self, body: bytes, model: str | None = None, extra: str = "") -> None:
        head = post_head(self.infer_path(model), len(body), extra)
        self.repeat(lambda: http_exchange(self.ports.http, head, body))

    def repeat_binary(self, header: bytes, blob: bytes) -> None:
        self.repeat_post(header + blob, extra=f"Inference-Header-Content-Length: {len(header)}\r\n")

    def repeat_grpc(self, method: str, payload: bytes) -> None:
        self.repeat(lambda: grpc_call(self.grpc_target, method, payload))


def json_60mib(a: Abuser) -> None:
    """REST v2 infer, a valid FP32 JSON body just under 60 MiB, to the policy."""
    a.repeat_post(json_just_under(60 << 20))


def json_60mib_unknown_model(a: Abuser) -> None:
    """The same body to a model that does not exist."""
    a.repeat_post(json_just_under(60 << 20), model="does-not-exist")


def bytes_15m(a: Abuser) -> None:
    """REST binary extension: a BYTES tensor of 15M empty elements for the FP32 input."""
    a.repeat_binary(*binary_request(0, "BYTES", [15_000_000], 15_000_000 * 4))


def grpc_typed_64mib(a: Abuser) -> None:
    """gRPC ModelInfer with 64 MiB of typed fp32_contents."""
    request = pb.ModelInferRequest(model_name=a.policy)
    values = 64 * (1 << 20) // 4
    request.inputs.add(name="observation", datatype="FP32", shape=[values // OBS, OBS])
    request.inputs[0].contents.fp32_contents.extend(np.zeros(values // OBS * OBS, np.float32).tolist())
    a.repeat_grpc(MODEL_INFER, request.SerializeToString())


def act_16m_values(a: Abuser) -> None:
    """One Act with 16.7M observation_values."""
    a.repeat_grpc(ACT, ppb.ActRequest(policy=a.policy, observation_values=[0.0] * 16_700_000).SerializeToString())


def binary_1e6_rows(a: Abuser) -> None:
    """REST binary extension: 1e6 rows for the policy."""
    a.repeat_binary(*binary_request(1_000_000))


def made_up_versions(a: Abuser) -> None:
    """Requests naming made-up versions (REST, gRPC, Act), one of them 1 MiB long; the metrics' series count after
    the first round and at the end are kept as the outcomes "series after the first round" and "series at the
    end": every kind of made-up version has been seen once after the first round, so later ones must add none."""
    rng = random.Random(0)
    small = policy_json(1)
    act = ppb.ActRequest(policy=a.policy, observation=np.zeros(OBS, "<f4").tobytes())
    huge = "9" * (1 << 20)
    a.count(grpc_call(a.grpc_target, MODEL_INFER,
                      pb.ModelInferRequest(model_name=a.policy, model_version=huge).SerializeToString()))  # fmt: skip
    act.version = huge
    a.count(grpc_call(a.grpc_target, ACT, act.SerializeToString()))
    with grpc.insecure_channel(a.grpc_target) as channel:
        deadline = time.monotonic() + a.seconds
        baseline = None
        while time.monotonic() < deadline:
            version = str(rng.randrange(2, 10**9))
            path = f"/v2/models/{a.policy}/versions/{version}/infer"
            a.count(http_exchange(a.ports.http, post_head(path, len(small)), small))
            for method, message in ((MODEL_INFER, pb.ModelInferRequest(model_name=a.policy, model_version=version)),
                                    (ACT, ppb.ActRequest(policy=a.policy, version=version,
                                                         observation=act.observation))):  # fmt: skip
                a.count(unary(channel, method, message.SerializeToString(), timeout=5)[0].name)
            if baseline is None:
                baseline = series_count(a.metrics_url)
    a.outcomes["series after the first round"] = baseline or 0
    a.outcomes["series at the end"] = series_count(a.metrics_url)


def hold_connections(a: Abuser, wanted: dict[int, int], greeting: dict[int, bytes]) -> None:
    """Keeps ``wanted[port]`` connections open to each port for ``seconds``, each having sent ``greeting[port]``
    (nothing if absent), reopening those the server closes."""
    names = {a.ports.http: "rest", a.ports.grpc: "grpc", a.ports.metrics: "metrics"}
    held: dict[socket.socket, int] = {}
    deadline = time.monotonic() + a.seconds
    while time.monotonic() < deadline:
        for port, n in wanted.items():
            while sum(1 for p in held.values() if p == port) < n:
                try:
                    s = socket.create_connection(("127.0.0.1", port), timeout=1)
                    s.sendall(greeting.get(port, b""))
                    held[s] = port
                    a.count(f"opened on {names[port]}")
                except OSError:
                    a.count(f"refused on {names[port]}")
                    break
        poller = select.poll()  # select() cannot watch descriptors above 1023
        by_fd = {s.fileno(): s for s in held}
        for fd in by_fd:
            poller.register(fd, select.POLLIN)
        for fd, _ in poller.poll(200):
            s = by_fd[fd]  # closed by the server (or answered: it is not waiting any longer)
            with contextlib.suppress(OSError):
                if s.recv(1 << 16):
                    continue
            a.count(f"closed by the server on {names[held.pop(s)]}")
            s.close()
    for s in held:
        s.close()


def half_open_800(a: Abuser) -> None:
    """800 sockets that send half a request line (REST 400, gRPC 200, metrics 200)."""
    greeting = {a.ports.http: f"POST /v2/models/{a.policy}/inf".encode(), a.ports.grpc: b"PRI * HTTP/2.0\r\n",
                a.ports.metrics: b"GET /metr"}  # fmt: skip
    hold_connections(a, {a.ports.http: 400, a.ports.grpc: 200, a.ports.metrics: 200}, greeting)


def silent_1100(a: Abuser) -> None:
    """1,100 sockets that send nothing (REST 500, gRPC 400, metrics 200)."""
    hold_connections(a, {a.ports.http: 500, a.ports.grpc: 400, a.ports.metrics: 200}, {})


def disconnect_mid_body_500(a: Abuser) -> None:
    """500 clients that send half a body and hang up."""
    head = post_head(a.infer_path(), 1 << 20)
    for _ in range(500):
        with socket.create_connection(("127.0.0.1", a.ports.http)) as s:
            s.sendall(head + b"[" * (256 << 10))
        a.count("hung up")


def largest_json(a: Abuser) -> None:
    """The largest JSON request the server accepts for the policy (``max_request_rows``)."""
    a.repeat_post(policy_json(a.limits.max_request_rows))


def largest_binary(a: Abuser) -> None:
    """The largest binary-extension request it accepts for the policy."""
    a.repeat_binary(*binary_request(a.limits.max_request_rows))


def largest_grpc(a: Abuser) -> None:
    """The largest gRPC ModelInfer it accepts for the policy (``grpc_max_message_bytes``)."""
    rows = a.limits.grpc_max_message_bytes // (OBS * 4) - 16  # the message's other fields take a few dozen bytes
    request = pb.ModelInferRequest(model_name=a.policy)
    request.inputs.add(name="observation", datatype="FP32", shape=[rows, OBS])
    request.raw_input_contents.append(np.zeros((rows, OBS), np.float32).tobytes())
    a.repeat_grpc(MODEL_INFER, request.SerializeToString())


KINDS: dict[str, Callable[[Abuser], None]] = {
    "json-60MiB": json_60mib,
    "json-60MiB-unknown-model": json_60mib_unknown_model,
    "bytes-15M": bytes_15m,
    "grpc-typed-64MiB": grpc_typed_64mib,
    "act-16.7M-values": act_16m_values,
    "binary-1e6-rows": binary_1e6_rows,
    "made-up-versions": made_up_versions,
    "half-open-800": half_open_800,
    "silent-1100": silent_1100,
    "disconnect-mid-body-500": disconnect_mid_body_500,
    "largest-json": largest_json,
    "largest-binary": largest_binary,
    "largest-grpc": largest_grpc,
}
"""Every kind of abuse by name, in the order a run takes them."""


def abuse(
    kind: str, ports: Ports, seconds: float, limits: ServerSettings, policy: str = "halfcheetah"
) -> dict[str, int]:
    """Runs one kind of abuse back-to-back for ``seconds``; returns the count of each outcome. Raises ``KeyError``
    for an unknown kind."""
    abuser = Abuser(ports, seconds, limits, policy)
    KINDS[kind](abuser)
    return abuser.outcomes
