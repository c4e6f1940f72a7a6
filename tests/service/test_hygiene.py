"""Connection hygiene on every port: sockets that send nothing, half a request line or half a body are closed by the
server within their timeouts (REST, metrics, gRPC's handshake); idle keep-alive connections too; at the connection
bound, a new client takes the place of the socket that waited longest for nothing; ambiguous framing is refused; the
server raises its own open-file limit."""

from __future__ import annotations

import resource
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from odetoode.testing.clients import observation_json
from odetoode.testing.models import add_policy
from odetoode.testing.servers import RunningServer, running_server, server_process

TIMEOUT_S = 1.0


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hygiene")
    add_policy(root, "policy")
    return root


@pytest.fixture(scope="module")
def server(repo: Path) -> Iterator[RunningServer]:
    with running_server(
        repo, http_head_timeout_s=TIMEOUT_S, http_body_timeout_s=TIMEOUT_S, http_keep_alive_s=TIMEOUT_S,
        grpc_handshake_timeout_s=TIMEOUT_S, max_connections=32,
    ) as running:  # fmt: skip
        yield running


def closed_by_server(s: socket.socket, within: float) -> tuple[bool, bytes]:
    """Whether the server closes ``s`` within ``within`` s (reading what it sent before closing)."""
    s.settimeout(0.1)
    received = b""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            got = s.recv(1 << 16)
        except TimeoutError:
            continue
        except OSError:  # reset
            return True, received
        if not got:
            return True, received
        received += got
    return False, received


GREETINGS = {  # (HTTP, gRPC): the same stage of an unfinished start on each protocol
    "silent": (b"", b""),
    "half a request line": (b"POST /v2/models/policy/inf", b"PRI * HTTP/2.0\r\n"),  # half the HTTP/2 preface
    "headers without an end": (b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Slow: ",
                               b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),  # the preface, and no SETTINGS after it
}  # fmt: skip


@pytest.mark.parametrize("port", ["http", "metrics", "grpc"])
@pytest.mark.parametrize("greeting", GREETINGS)
def test_half_open_connections_are_closed_within_the_timeout(server: RunningServer, port: str, greeting: str) -> None:
    number = {"http": server.server.http_port, "metrics": server.server.metrics_port, "grpc": server.server.grpc_port}
    sent = GREETINGS[greeting][port == "grpc"]
    sockets = []
    for _ in range(5):
        s = socket.create_connection(("127.0.0.1", number[port]))
        s.sendall(sent)
        sockets.append(s)
    started = time.monotonic()
    for s in sockets:
        closed, _ = closed_by_server(s, within=TIMEOUT_S * 1.1 + 3 - (time.monotonic() - started))
        assert closed, f"{port}: a {greeting} socket still open after {time.monotonic() - started:.1f} s"
        s.close()
    assert time.monotonic() - started >= TIMEOUT_S * 0.9  # closed by the timeout, not at once


def test_a_body_that_stops_coming_gets_408_and_is_closed(server: RunningServer) -> None:
    for length in (200, 1 << 20):  # a body read on the event loop, and a large one for a bulk worker
        with socket.create_connection(("127.0.0.1", server.server.http_port)) as s:
            s.sendall(b"POST /v2/models/policy/infer HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n{" % length)
            closed, answer = closed_by_server(s, within=TIMEOUT_S + 3)
        assert closed and answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert b"request body: nothing received for 1 s" in answer


def test_idle_keep_alive_connections_are_closed(server: RunningServer) -> None:
    with httpx.Client(base_url=server.http) as client:
        assert client.get("/v2/health/live").status_code == 200
        connections = len(server.server.http_server.server_state.connections)  # type: ignore[union-attr]
        assert connections >= 1
        time.sleep(TIMEOUT_S + 1.0)
        assert len(server.server.http_server.server_state.connections) < connections  # type: ignore[union-attr]
        assert client.get("/v2/health/live").status_code == 200  # the client reconnects


def test_at_the_bound_a_new_client_takes_the_place_of_a_silent_socket(server: RunningServer) -> None:
    """32 silent sockets fill the REST port's bound: a health probe still gets in, and the oldest silent one goes."""
    silent = [socket.create_connection(("127.0.0.1", server.server.http_port)) for _ in range(32)]
    try:
        time.sleep(0.2)
        r = httpx.get(server.http + "/v2/health/live", timeout=5)
        assert r.status_code == 200
        closed, _ = closed_by_server(silent[0], within=0.5)
        assert closed, "the oldest silent socket should have made room"
        still_open = [closed_by_server(s, within=0.01)[0] for s in silent[-5:]]
        assert not any(still_open), "only the oldest ones go"
    finally:
        for s in silent:
            s.close()


def test_content_length_with_transfer_encoding_is_refused(server: RunningServer) -> None:
    body = b'{"inputs": []}'
    with socket.create_connection(("127.0.0.1", server.server.http_port)) as s:
        head = b"POST /v2/models/policy/infer HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n" % len(body)
        s.sendall(head + b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
        closed, answer = closed_by_server(s, within=5)
    assert answer.startswith(b"HTTP/1.1 400") and b"Content-Length and Transfer-Encoding" in answer, answer[:300]
    assert closed and b"connection: close" in answer.lower()


def test_the_server_raises_its_open_file_limit(repo: Path) -> None:
    """Started at 256 open files (under a hard limit of 4096), the server raises its own soft limit so that its
    connection bounds fit, and says so nowhere because it could."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 2048:
        pytest.skip(f"the hard open-file limit here is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
    try:
        with server_process(repo, "--max-connections", "512") as proc:
            limits = Path(f"/proc/{proc.process.pid}/limits").read_text()
            r = httpx.post(proc.http + "/v2/models/policy/infer", json=observation_json(), timeout=30)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    (line,) = [line for line in limits.splitlines() if line.startswith("Max open files")]
    assert int(line.split()[3]) >= 3 * 512 + 256, line
    assert r.status_code == 200
    assert not any("open-file limit" in line for line in proc.log_lines)


def test_a_client_that_reads_nothing_of_its_response_is_disconnected(repo: Path) -> None:
    """A 4 MB answer to a client that never reads: once the socket's buffers are full, the server waits
    ``http_write_timeout_s`` and drops the connection (it holds the answer, and a place among large requests)."""
    with running_server(repo, http_write_timeout_s=TIMEOUT_S) as server:
        rows = 50_000
        body = b'{"inputs":[{"name":"observation","shape":[%d,17],"datatype":"FP32","data":[%s]}]}' % (
            rows, b",".join([b"0.5"] * (rows * 17)))  # fmt: skip
        state = server.server.http_server.server_state  # type: ignore[union-attr]
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.connect(("127.0.0.1", server.server.http_port))
            s.sendall(b"POST /v2/models/policy/infer HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body))
            s.sendall(body)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and len(state.connections) > 0:
                time.sleep(0.1)
            assert len(state.connections) == 0, "the connection of a client that reads nothing is still open"
        assert server.server.bulk.admitted == 0


def test_answers_leave_without_waiting_for_nagle(server: RunningServer) -> None:
    """An answer is written in parts (head, body): with Nagle's algorithm on, the second part would wait for the
    client's delayed acknowledgement (~40 ms). Every accepted HTTP connection has TCP_NODELAY."""
    with httpx.Client(base_url=server.http) as client:
        assert client.get("/v2/health/live").status_code == 200
        connections = list(server.server.http_server.server_state.connections)  # type: ignore[union-attr]
        assert connections
        for protocol in connections:
            sock = protocol.transport.get_extra_info("socket")
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
