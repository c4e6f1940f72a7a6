"""SIGTERM: readiness flips, accepted requests are answered, new ones refused, the process exits in its grace."""

from __future__ import annotations

import socket
import threading
import time
from contextlib import suppress
from pathlib import Path

import grpc
import httpx

from odetoode.testing.clients import infer_proto, observation_json, stub
from odetoode.testing.models import add_policy
from odetoode.testing.servers import server_process


def test_sigterm_during_traffic_loses_no_accepted_request(tmp_path: Path) -> None:
    # Requests wait 0.6 s in the batcher, so they are certainly in flight when the signal lands.
    add_policy(tmp_path, "slow", serving_config={"max_queue_delay_us": 600_000, "max_batch_size": 64})
    with server_process(tmp_path, "--drain-grace-s", "10") as proc:
        rest_results: list[int] = []
        grpc_results: list[grpc.StatusCode] = []

        def rest_call() -> None:
            r = httpx.post(proc.http + "/v2/models/slow/infer", json=observation_json(), timeout=30)
            rest_results.append(r.status_code)

        def grpc_call() -> None:
            channel, s = stub(proc.grpc)
            with channel:
                try:
                    s.ModelInfer(infer_proto("slow"), timeout=30)
                    grpc_results.append(grpc.StatusCode.OK)
                except grpc.RpcError as exc:
                    grpc_results.append(exc.code())

        threads = [threading.Thread(target=f) for f in [rest_call] * 6 + [grpc_call] * 6]
        for t in threads:
            t.start()
        time.sleep(0.3)
        signalled = time.monotonic()
        proc.process.send_signal(15)
        time.sleep(0.05)
        late = httpx.post(proc.http + "/v2/models/slow/infer", json=observation_json(), timeout=30)
        ready = httpx.get(proc.http + "/v2/health/ready", timeout=5)
        for t in threads:
            t.join(30)
        code = proc.process.wait(30)
        elapsed = time.monotonic() - signalled

    assert rest_results == [200] * 6
    assert grpc_results == [grpc.StatusCode.OK] * 6
    assert late.status_code == 503 and "shutting down" in late.json()["error"]
    assert ready.status_code == 503
    assert code == 0
    assert elapsed < 10
    assert any("draining" in line for line in proc.log_lines)


def test_sigterm_ends_within_the_grace_plus_a_second_and_says_so_to_every_waiting_request(tmp_path: Path) -> None:
    """Requests that cannot finish in the grace period (they wait 60 s in the batcher): the process still exits 0
    within drain_grace_s + 1 s; each is answered UNAVAILABLE / 503, a stream's with its request id; nothing in the
    log is an error or a traceback."""
    add_policy(tmp_path, "stuck", serving_config={"max_queue_delay_us": 60_000_000, "max_batch_size": 1024})
    grace = 2.0
    with server_process(tmp_path, "--drain-grace-s", str(grace)) as proc:
        rest: list[tuple[int, str]] = []
        unary: list[grpc.StatusCode] = []
        stream_answers: list[tuple[str, str]] = []

        def rest_call() -> None:
            r = httpx.post(proc.http + "/v2/models/stuck/infer", json=observation_json(), timeout=30)
            rest.append((r.status_code, r.json()["error"]))

        def grpc_call() -> None:
            channel, s = stub(proc.grpc)
            with channel:
                try:
                    s.ModelInfer(infer_proto("stuck"), timeout=30)
                    unary.append(grpc.StatusCode.OK)
                except grpc.RpcError as exc:
                    unary.append(exc.code())

        def stream_call(k: int) -> None:
            channel, s = stub(proc.grpc)
            requests = []
            for i in range(3):
                request = infer_proto("stuck")
                request.id = f"stream{k}-{i}"
                requests.append(request)
            with channel:
                try:
                    for response in s.ModelStreamInfer(iter(requests), timeout=30):
                        stream_answers.append((response.error_message, response.infer_response.id))
                except grpc.RpcError as exc:
                    stream_answers.append((f"ended {exc.code().name}", ""))

        threads = [threading.Thread(target=f) for f in [rest_call] * 4 + [grpc_call] * 4]
        threads += [threading.Thread(target=stream_call, args=(k,)) for k in range(2)]
        for t in threads:
            t.start()
        time.sleep(1.0)  # every request is queued, waiting for a batch that never fills
        signalled = time.monotonic()
        proc.process.send_signal(15)
        code = proc.process.wait(30)
        elapsed = time.monotonic() - signalled
        for t in threads:
            t.join(30)
    assert code == 0
    assert elapsed < grace + 1.0, f"SIGTERM took {elapsed:.2f} s for a {grace} s grace"
    assert rest == [(503, "the server shut down before this request was computed")] * 4
    assert unary == [grpc.StatusCode.UNAVAILABLE] * 4
    answered = {i for message, i in stream_answers if "shut down" in message}
    assert {f"stream{k}-0" for k in range(2)} <= answered, stream_answers  # the first of each was queued
    log = "".join(proc.log_lines)
    assert "Traceback" not in log and " ERROR " not in log, log[-3000:]


def test_a_client_that_hangs_up_mid_body_is_a_debug_line_not_an_error(tmp_path: Path) -> None:
    """200 clients send half a body and hang up: at the default level the log says nothing of it; at debug level,
    one line per client at most."""
    add_policy(tmp_path, "p")
    for level, most in (("INFO", 0), ("DEBUG", 1)):
        with server_process(tmp_path, "--log-level", level) as proc:
            mark = len(proc.log_lines)
            for small in (True, False) * 100:  # a body small enough for the event loop, and a bulk one
                declared = 4096 if small else 1 << 20
                head = b"POST /v2/models/p/infer HTTP/1.1\\r\\nHost: x\\r\\nContent-Length: %d\\r\\n\\r\\n" % declared
                # The server may refuse a bulk one before its half has arrived (429 while bulk_max_requests earlier
                # ones still count as being received) and close: this client is hanging up anyway.
                with socket.create_connection(("127.0.0.1", proc.http_port)) as s, suppress(ConnectionError):
                    s.sendall(head + b"[" * (declared // 2))
            r = httpx.post(proc.http + "/v2/models/p/infer", json=observation_json(), timeout=30)
            assert r.status_code == 200
            assert proc.terminate() == 0
        lines = proc.log_lines[mark:]
        about = [line for line in lines if "went away" in line]
        assert len(about) <= most * 200, about[:3]
        assert not any(" ERROR " in line or "Traceback" in line or " WARNING " in line for line in lines), lines[:5]
