"""Large requests never touch the event loop that answers robots: they are refused from their headers when they
cannot fit the model, admitted (or refused at once) before their body is read, and decoded, computed and encoded by
a bulk worker process -- with the same answers as the event loop gives small ones. The pieces that keep the loop's
turns short (``Ration``, ``ByteRate``, the batcher's inline bound) are checked on their own.

The latency these buy is measured by ``benchmarks/isolation.py``, not here.
"""

from __future__ import annotations

import asyncio
import gzip
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import httpx
import numpy as np
import onnxruntime as ort
import orjson
import pytest

from odetoode.proto.inference import grpc_service_pb2 as pb
from odetoode.proto.inference import grpc_service_pb2_grpc as pb_grpc
from odetoode.proto.odetoode.v1 import policy_pb2 as ppb
from odetoode.proto.odetoode.v1 import policy_pb2_grpc as ppb_grpc
from odetoode.testing.abuse import binary_header, infer_json, post_head
from odetoode.testing.clients import OBS, observation_json
from odetoode.testing.models import add_policy
from odetoode.testing.servers import RunningServer, running_server
from service.batching import Batcher
from service.bulk import ByteRate
from service.errors import DeadlineExceeded
from service.ration import Ration

SMALL = 1024  # bulk_request_bytes of the servers here: a 20-row request is already a bulk one
ROWS = 300


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("isolation")
    add_policy(root, "policy", 1, seed=3)
    add_policy(root, "bounded", 1, seed=4, serving_config={"max_request_rows": 8})
    return root


@pytest.fixture(scope="module")
def server(repo: Path) -> Iterator[RunningServer]:
    with running_server(repo, bulk_request_bytes=SMALL) as running:
        yield running


@pytest.fixture(scope="module")
def oracle(repo: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(repo / "policy" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])


def observations(rows: int = ROWS, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(rows, OBS)).astype(np.float32)


def binary_body(x: np.ndarray, *, datatype: str = "FP32", shape: list[int] | None = None,
                size: int | None = None) -> tuple[bytes, dict[str, str]]:  # fmt: skip
    header = binary_header(shape or list(x.shape), datatype, x.nbytes if size is None else size)
    return header + x.tobytes(), {"Inference-Header-Content-Length": str(len(header))}


def test_large_requests_get_the_answers_small_ones_get(server: RunningServer, oracle: ort.InferenceSession) -> None:
    """Every protocol's large form -- REST JSON, binary, gzip, KServe V1, gRPC raw and typed, a stream -- is answered
    by a bulk worker with what ONNX Runtime computes for the same rows."""
    x = observations()
    expected = oracle.run(None, {"observation": x})[0]
    pool = server.server.bulk
    jobs = pool.jobs
    url = f"{server.http}/v2/models/policy/infer"
    doc = infer_json(x)

    def rest_json(r: httpx.Response) -> np.ndarray:
        assert r.status_code == 200, r.text
        return np.asarray(r.json()["outputs"][0]["data"], np.float32).reshape(ROWS, -1)

    predict = orjson.dumps({"instances": x.tolist()})
    answers = {
        "json": rest_json(httpx.post(url, content=doc, timeout=30)),
        "gzip": rest_json(httpx.post(url, content=gzip.compress(doc), headers={"Content-Encoding": "gzip"})),
        "v1": np.asarray(httpx.post(f"{server.http}/v1/models/policy:predict", content=predict).json()["predictions"]),
    }
    body, headers = binary_body(x)
    r = httpx.post(url, content=body, headers=headers, timeout=30)
    head = int(r.headers["inference-header-content-length"])
    answers["binary"] = np.frombuffer(r.content[head:], np.float32).reshape(ROWS, -1)
    raw = pb.ModelInferRequest(model_name="policy", id="raw-1")
    raw.inputs.add(name="observation", datatype="FP32", shape=[ROWS, OBS])
    raw.raw_input_contents.append(x.tobytes())
    typed = pb.ModelInferRequest(model_name="policy")
    typed.inputs.add(name="observation", datatype="FP32", shape=[ROWS, OBS]).contents.fp32_contents.extend(x.ravel())
    with grpc.insecure_channel(server.grpc) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for name, request in (("grpc raw", raw), ("grpc typed", typed)):
            response = stub.ModelInfer(request, timeout=30)
            answers[name] = np.frombuffer(response.raw_output_contents[0], np.float32).reshape(ROWS, -1)
        assert response.id == "" and stub.ModelInfer(raw, timeout=30).id == "raw-1"
        streamed = list(stub.ModelStreamInfer(iter([raw, pb.ModelInferRequest(model_name="nope", id="x"), raw])))
    assert [bool(s.error_message) for s in streamed] == [False, True, False]
    assert streamed[1].infer_response.id == "x"
    answers["stream"] = np.frombuffer(streamed[2].infer_response.raw_output_contents[0], np.float32).reshape(ROWS, -1)
    for name, answer in answers.items():
        np.testing.assert_allclose(answer, expected, atol=1e-6, err_msg=name)
    assert pool.jobs - jobs == 9  # every one went to a worker: the 8 above, and raw once more for its id


def test_an_unknown_model_is_refused_before_its_body_is_read(server: RunningServer) -> None:
    """404 from the path alone, and the connection closed: the server does not read 64 MiB to throw them away."""
    head = post_head("/v2/models/nope/infer", 64 << 20)
    status, sent = exchange(server, head, 64 << 20)
    assert status.startswith(b"HTTP/1.1 404"), status
    assert sent < 16 << 20, f"{sent >> 20} MiB sent before the answer"


def test_a_tensor_header_that_cannot_fit_is_refused_before_its_data_is_read(server: RunningServer) -> None:
    """A BYTES tensor of 15M elements for the FP32 input, and a batch over the row bound: refused from the JSON
    header of the binary extension, before the 60 MB that follow it are read."""
    for shape, datatype, size, message in (([15_000_000], "BYTES", 60_000_000, b"is FP32, got BYTES"),
                                           ([100_000, OBS], "FP32", 6_800_000, b"max_request_rows")):  # fmt: skip
        header = binary_header(shape, datatype, size, binary_output=False)
        head = post_head("/v2/models/policy/infer", len(header) + size,
                         f"Inference-Header-Content-Length: {len(header)}\r\n")  # fmt: skip
        status, sent = exchange(server, head + header, size)
        assert status.split(b"\r\n")[0] in (b"HTTP/1.1 400 Bad Request", b"HTTP/1.1 413 Request Entity Too Large")
        assert message in status, status
        assert sent < 16 << 20, f"{sent >> 20} MiB sent before the answer"


def exchange(server: RunningServer, head: bytes, body_size: int) -> tuple[bytes, int]:
    """Sends ``head`` then zeros until the server answers (or ``body_size``); returns the answer and the bytes of
    body sent until then."""
    sent = 0
    chunk = bytes(1 << 20)
    with socket.create_connection(("127.0.0.1", server.server.http_port), timeout=30) as s:
        s.sendall(head)
        s.setblocking(False)
        answer = b""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                got = s.recv(1 << 16)
                answer += got
                if answer and (not got or answer.endswith(b"}")):  # the server closed, or the JSON error is whole
                    break
            except BlockingIOError:
                pass
            except OSError:
                break
            if sent < body_size:
                try:
                    sent += s.send(chunk[: body_size - sent])
                except BlockingIOError:
                    time.sleep(0.01)
                except OSError:
                    break
            else:
                time.sleep(0.01)
    return answer, sent


def test_rows_are_bounded_per_model_whatever_the_size(server: RunningServer) -> None:
    """``max_request_rows: 8`` in the model's config.yaml: 9 rows are refused however few bytes they take, on the
    event loop's path and the bulk workers', over REST and gRPC; 8 are served."""
    for rows, small in ((9, True), (9, False), (8, True), (8, False)):
        x = observations(rows)
        body, headers = binary_body(x)  # 700-odd bytes
        if not small:  # the same rows as JSON: a few KB
            body, headers = infer_json(x), {}
        assert (len(body) <= SMALL) == small
        r = httpx.post(f"{server.http}/v2/models/bounded/infer", content=body, headers=headers, timeout=30)
        assert r.status_code == (413 if rows > 8 else 200), r.text
        if rows > 8:
            assert "a batch of 9 rows is more than this model takes in one request (8, max_request_rows)" in r.text
    request = pb.ModelInferRequest(model_name="bounded")
    request.inputs.add(name="observation", datatype="FP32", shape=[9, OBS])
    request.raw_input_contents.append(observations(9).tobytes())
    with grpc.insecure_channel(server.grpc) as channel, pytest.raises(grpc.RpcError) as caught:
        pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "max_request_rows" in (caught.value.details() or "")


def test_json_with_more_values_than_the_model_takes_is_refused_unparsed(server: RunningServer) -> None:
    """The commas of a JSON body bound its values: 9 rows' worth for the 8-row model is refused before parsing."""
    body = orjson.dumps({"inputs": [{"name": "observation", "shape": [1, OBS], "datatype": "FP32",
                                     "data": [0.0] * (9 * OBS + 4200)}]})  # fmt: skip
    r = httpx.post(f"{server.http}/v2/models/bounded/infer", content=body, timeout=30)
    assert r.status_code == 413 and "JSON values, more than this model takes" in r.text, r.text


def test_large_requests_beyond_the_bound_are_refused_at_once(repo: Path) -> None:
    """``bulk_max_requests: 1``: while one large body trickles in, a second large request is refused 429 without
    waiting, and small requests and robots are served as ever."""
    with running_server(repo, bulk_request_bytes=SMALL, bulk_max_requests=1) as server:
        head = post_head("/v2/models/policy/infer", 100000)
        with socket.create_connection(("127.0.0.1", server.server.http_port)) as slow:
            slow.sendall(head + b'{"inputs": [')  # admitted, then waits for the rest of its body
            assert wait_until(lambda: server.server.bulk.admitted == 1)
            body, headers = binary_body(observations())
            started = time.monotonic()
            r = httpx.post(f"{server.http}/v2/models/policy/infer", content=body, headers=headers, timeout=30)
            assert r.status_code == 429 and "bulk_max_requests" in r.text, r.text
            assert time.monotonic() - started < 5
            assert httpx.post(f"{server.http}/v2/models/policy/infer", json=observation_json(), timeout=30).is_success
            with grpc.insecure_channel(server.grpc) as channel:
                act = ppb.ActRequest(policy="policy", observation=bytes(4 * OBS))
                assert len(ppb_grpc.PolicyServiceStub(channel).Act(act, timeout=30).action) == 24
            assert server.server.bulk.refused == 1
        assert wait_until(lambda: server.server.bulk.admitted == 0)  # the slow one hung up: its place is free


def test_a_bulk_worker_that_dies_is_replaced(repo: Path) -> None:
    """The worker computing a request is killed: that request fails (500, the details in the log); a new worker
    takes its place and the next large request is served."""
    with running_server(repo, bulk_request_bytes=SMALL, bulk_workers=1) as server:
        pool = server.server.bulk
        body, headers = binary_body(observations())
        url = f"{server.http}/v2/models/policy/infer"
        assert httpx.post(url, content=body, headers=headers, timeout=30).status_code == 200
        (worker,) = pool._workers
        assert worker.process is not None
        os.kill(worker.process.pid, signal.SIGKILL)
        statuses = [httpx.post(url, content=body, headers=headers, timeout=60).status_code for _ in range(3)]
        assert statuses[-1] == 200 and set(statuses) <= {200, 500}, statuses
        assert pool.restarts == 1 and pool._workers[0] is not worker


def test_a_policy_message_over_the_bound_is_refused_unparsed(server: RunningServer) -> None:
    """A robot's message larger than ``bulk_request_bytes`` is refused before protobuf parses it."""
    act = ppb.ActRequest(policy="policy", observation_values=[0.0] * 4096)
    with grpc.insecure_channel(server.grpc) as channel, pytest.raises(grpc.RpcError) as caught:
        ppb_grpc.PolicyServiceStub(channel).Act(act, timeout=30)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "more than this method takes (1024, bulk_request_bytes)" in (caught.value.details() or "")


def wait_until(condition: object, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.02)
    return False


# -- the pieces that keep the event loop's turns short ----------------------------------------------------------------


def test_the_ration_runs_waiting_work_in_order_a_few_pieces_per_turn() -> None:
    """Within a turn's slice work runs at once; past it, pieces wait in arrival order and at most ``wake_per_turn``
    resume per turn, while a callback that never asks (a robot's) runs in every turn."""

    async def main() -> tuple[list[int], list[int]]:
        ration = Ration(slice_s=0.0, wake_per_turn=2)  # every piece after the first of a turn waits
        order: list[int] = []
        turns: list[int] = []
        turn = 0

        async def piece(i: int) -> None:
            await ration.turn()
            order.append(i)
            turns.append(turn)

        async def robot() -> None:
            nonlocal turn
            for _ in range(20):
                turn += 1
                await asyncio.sleep(0)

        await asyncio.gather(robot(), *(piece(i) for i in range(10)))
        return order, turns

    order, turns = asyncio.run(main())
    assert order == list(range(10))
    assert max(turns.count(t) for t in set(turns)) <= 3  # the one that passed at once, plus two woken
    assert turns[-1] >= 4  # spread over several turns


def test_the_ration_defers_callbacks_that_cannot_wait() -> None:
    async def main() -> list[str]:
        ration = Ration(slice_s=0.0, wake_per_turn=1)
        seen: list[str] = []
        ration.charge()
        assert ration.spent()
        for name in ("a", "b", "c"):
            ration.later(lambda name=name: seen.append(name))  # type: ignore[misc]
        for _ in range(6):
            await asyncio.sleep(0)
        return seen

    assert asyncio.run(main()) == ["a", "b", "c"]


def test_the_byte_rate_holds_a_client_to_its_pace() -> None:
    async def main() -> float:
        rate = ByteRate(per_second=1000.0, burst=100.0)
        started = time.monotonic()
        for _ in range(5):
            await rate.take(100, None)  # 500 bytes: the burst, then 400 at 1000 per second
        elapsed = time.monotonic() - started
        with pytest.raises(DeadlineExceeded, match="bulk_bytes_per_s"):
            await rate.take(1000, time.monotonic_ns() + 100_000_000)  # a second's worth within 0.1 s
        return elapsed

    assert 0.35 < asyncio.run(main()) < 2.0


def test_batches_over_the_inline_bound_leave_the_event_loop() -> None:
    """An inline batcher computes up to ``inline_rows`` rows on the event loop's thread and larger batches in the
    thread pool."""
    threads: list[tuple[int, bool]] = []

    def run(feeds: dict[str, np.ndarray], outputs: object) -> list[np.ndarray]:
        x = feeds["x"]
        threads.append((len(x), threading.current_thread() is threading.main_thread()))
        return [x * 2]

    async def main() -> None:
        with ThreadPoolExecutor(1) as executor:
            b = Batcher(run, max_batch_size=64, max_queue_delay_us=0, max_queue_size=8, inline_rows=10,
                        executor=executor)  # fmt: skip
            for rows in (1, 10, 11, 500):
                out, _ = await b.submit({"x": np.ones((rows, 2), np.float32)}, ["y"])
                assert out[0].shape == (rows, 2)

    asyncio.run(main())
    assert threads == [(1, True), (10, True), (11, False), (500, False)]
