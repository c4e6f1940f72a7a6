"""Faults while serving: damaged and vanishing model files, reload storms, cancelling clients, stream churn, slow
readers, SIGTERM with streams open. Every test runs real traffic over every transport (OIP REST, OIP gRPC, ``Act``,
``ActStream``) while the fault happens, and counts: a model that always has a good version loses no request.

What each test proves:

* a file truncated or replaced with garbage in place, and a new version copied in non-atomically (first half, then
  the rest): the version that serves keeps answering, with its own outputs, until a good file is ready;
* a model directory deleted under traffic: that model goes away cleanly (404/503 then 404; streams get an error per
  observation), the other models do not notice;
* a reload storm (versions added and removed every few tens of milliseconds): zero failed requests;
* clients cancelling mid-request and mid-stream (pending requests in ``ModelStreamInfer`` and ``ActStream``) and
  REST clients timing out: the server stays healthy, answers others, and nothing stays in flight;
* thousands of ``ActStream`` calls opened and closed (a server process: its fd count and RSS are read from ``/proc``);
* a client that streams observations and never reads the answers: the server stops reading from it instead of
  buffering (RSS bounded) and keeps serving everyone else;
* SIGTERM with streams open (``test_shutdown.py`` covers unary calls): every observation sent before the signal is
  answered, the streams then end with a status, the process exits 0 within its grace period.
"""

from __future__ import annotations

import logging
import os
import queue
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import onnxruntime as ort
import pytest

from odetoode.client import ActFailure, Action, PolicyClient
from odetoode.proto.odetoode.v1 import policy_pb2 as ppb
from odetoode.testing.clients import OBS, action_of, infer_proto, observation_json, stub
from odetoode.testing.models import add_policy
from odetoode.testing.servers import RunningServer, ServerProcess, running_server, server_process

ACT_STREAM = "/odetoode.v1.PolicyService/ActStream"
OBSERVATION = np.full(OBS, 0.1, np.float32)
POLL = {"model_control_mode": "poll", "poll_interval_s": 0.1, "repository_api": True}  # the index tells states


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"{what} not reached in {timeout} s")


def index(server: RunningServer, name: str) -> list[dict[str, str]]:
    entries = httpx.post(server.http + "/v2/repository/index", timeout=10).json()
    return [e for e in entries if e["name"] == name]


def direct(path: Path) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {"observation": OBSERVATION.reshape(1, OBS)})[0]).ravel()


def inflight(metrics_url: str) -> list[float]:
    lines = httpx.get(metrics_url, timeout=10).text.splitlines()
    return [float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith("odetoode_inflight_requests{")]


class ErrorLog(logging.Handler):
    """Unhandled errors the in-thread servers log (expected load failures are logged too, and filtered out)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info or "unhandled" in record.getMessage():
            self.messages.append(self.format(record))


@pytest.fixture
def error_log() -> Iterator[ErrorLog]:
    handler = ErrorLog()
    loggers = [logging.getLogger("service"), logging.getLogger("uvicorn.error")]
    for logger in loggers:
        logger.addHandler(handler)
    yield handler
    for logger in loggers:
        logger.removeHandler(handler)
    assert not handler.messages, handler.messages[:3]


# -- traffic ------------------------------------------------------------------------------------------------------


@dataclass
class Answer:
    transport: str
    ok: bool
    version: str  # the version that answered, or the error
    values: np.ndarray | None = None


@dataclass
class Traffic:
    """One client per transport, each sending requests for ``model`` back to back until stopped."""

    server: RunningServer
    model: str
    answers: list[Answer] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def __enter__(self) -> Traffic:
        for run in (self._rest, self._grpc, self._act, self._stream):
            thread = threading.Thread(target=self._guard(run), daemon=True)
            thread.start()
            self._threads.append(thread)
        wait_for(lambda: {a.transport for a in self.answers} == {"rest", "grpc", "act", "stream"}, what="traffic")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def _guard(self, run: Callable[[], None]) -> Callable[[], None]:
        def guarded() -> None:
            try:
                run()
            except Exception as exc:  # a client that crashed is a failure too
                self.answers.append(Answer("crash", False, f"{type(exc).__name__}: {exc}"))

        return guarded

    def count(self) -> int:
        return len(self.answers)

    def failures(self) -> list[Answer]:
        return [a for a in self.answers if not a.ok]

    def _rest(self) -> None:
        with httpx.Client(base_url=self.server.http, timeout=30) as client:
            while not self._stop.is_set():
                r = client.post(f"/v2/models/{self.model}/infer", json=observation_json())
                if r.status_code == 200:
                    body = r.json()
                    self.answers.append(Answer("rest", True, body["model_version"],
                                               np.asarray(body["outputs"][0]["data"], np.float32)))  # fmt: skip
                else:
                    self.answers.append(Answer("rest", False, f"{r.status_code} {r.text[:200]}"))

    def _grpc(self) -> None:
        channel, s = stub(self.server.grpc)
        with channel:
            while not self._stop.is_set():
                try:
                    response = s.ModelInfer(infer_proto(self.model), timeout=30)
                except grpc.RpcError as exc:
                    self.answers.append(Answer("grpc", False, f"{exc.code()} {exc.details()}"))
                    continue
                self.answers.append(Answer("grpc", True, response.model_version, action_of(response).ravel()))

    def _act(self) -> None:
        with PolicyClient(self.server.grpc, timeout=30) as client:
            while not self._stop.is_set():
                try:
                    action = client.act(self.model, OBSERVATION)
                except grpc.RpcError as exc:
                    self.answers.append(Answer("act", False, f"{exc.code()} {exc.details()}"))
                    continue
                self.answers.append(Answer("act", True, action.version, action.values))

    def _stream(self) -> None:
        """A robot that follows the latest version (a pinned stream is meant to fail when its version goes)."""
        with PolicyClient(self.server.grpc, timeout=30) as client:
            stream = client.stream(self.model, follow_latest=True)
            sequence = 0
            try:
                while not self._stop.is_set():
                    stream.send(OBSERVATION, sequence)
                    answer = stream.receive(timeout=30)
                    if isinstance(answer, Action) and answer.sequence == sequence:
                        self.answers.append(Answer("stream", True, answer.version, answer.values))
                    else:
                        self.answers.append(Answer("stream", False, repr(answer)))
                    sequence += 1
            finally:
                stream.close()


# -- damaged files ------------------------------------------------------------------------------------------------


def test_damaged_files_under_traffic_never_replace_the_serving_version(tmp_path: Path, error_log: ErrorLog) -> None:
    path = add_policy(tmp_path, "m", 1, seed=1)
    good = path.read_bytes()
    expected_v1 = direct(path)
    with running_server(tmp_path, **POLL) as server, Traffic(server, "m") as traffic:
        # 1. truncated in place
        path.write_bytes(good[: len(good) // 3])
        wait_for(lambda: "reload failed" in index(server, "m")[0].get("reason", ""), what="failed reload")
        mark = traffic.count()
        wait_for(lambda: traffic.count() > mark + 40)
        # 2. replaced with garbage of the same size (a different mtime)
        path.write_bytes(os.urandom(len(good)))
        mark = traffic.count()
        wait_for(lambda: traffic.count() > mark + 40)
        assert "reload failed" in index(server, "m")[0]["reason"]
        # 3. a new version copied non-atomically: half of the file for several polls, then the rest
        new = tmp_path / "staging"
        v2 = add_policy(new, "m", 2, seed=2)
        expected_v2 = direct(v2)
        target = tmp_path / "m" / "2" / "model.onnx"
        target.parent.mkdir()
        with target.open("wb") as f:
            content = v2.read_bytes()
            f.write(content[: len(content) // 2])
            f.flush()
            wait_for(lambda: any(e["version"] == "2" and e["state"] == "FAILED" for e in index(server, "m")),
                     what="v2 half-written and failed")  # fmt: skip
            mark = traffic.count()
            wait_for(lambda: traffic.count() > mark + 40)
            f.write(content[len(content) // 2 :])
        wait_for(lambda: all(a.version == "2" for a in traffic.answers[-8:]), what="v2 serving")
        mark = traffic.count()
        wait_for(lambda: traffic.count() > mark + 20)
    assert traffic.failures() == []
    versions = [a.version for a in traffic.answers]
    first_v2 = versions.index("2")
    assert set(versions[:first_v2]) == {"1"}
    for a in traffic.answers:
        assert a.values is not None
        assert np.allclose(a.values, expected_v1 if a.version == "1" else expected_v2, atol=1e-5)


def test_deleted_model_directory_goes_away_cleanly(tmp_path: Path, error_log: ErrorLog) -> None:
    add_policy(tmp_path, "gone", seed=1)
    add_policy(tmp_path, "stays", seed=2)
    with running_server(tmp_path, **POLL) as server, Traffic(server, "stays") as stays, \
            Traffic(server, "gone") as gone:  # fmt: skip
        mark = gone.count()
        wait_for(lambda: gone.count() > mark + 20)
        shutil.rmtree(tmp_path / "gone")
        wait_for(lambda: httpx.post(server.http + "/v2/models/gone/infer", json=observation_json()).status_code == 404,
                 what="gone is unknown")  # fmt: skip
        mark = stays.count()
        wait_for(lambda: len(gone.failures()) > 20 and stays.count() > mark + 40)
        assert index(server, "gone") == []
        assert httpx.get(server.http + "/v2/models/stays/ready").status_code == 200
        assert httpx.get(server.http + "/v2/models/gone/ready").status_code == 404
    assert stays.failures() == []
    # the gone model: answers until it went, then failures that say so -- never an internal error, never a hang
    last_ok = max(i for i, a in enumerate(gone.answers) if a.ok)
    after = gone.answers[last_ok + 1 :]
    assert after and all(not a.ok for a in after)
    unexpected = [a for a in after if not any(r in a.version for r in ("404", "503", "NOT_FOUND", "UNAVAILABLE"))]
    assert unexpected == [], unexpected[:5]


def test_reload_storm_loses_no_request(tmp_path: Path, error_log: ErrorLog) -> None:
    """Version 1 stays; versions 2..n appear and disappear every 20-80 ms for 4 s (atomically: prepared in a staging
    directory the scan ignores, then renamed). Every request, on every transport, is answered."""
    source = add_policy(tmp_path, "storm", 1)
    rng = np.random.default_rng(0)
    model_dir = tmp_path / "storm"
    present: list[int] = []
    changes = 0
    with running_server(tmp_path, **POLL) as server, Traffic(server, "storm") as traffic:
        deadline = time.monotonic() + 4.0
        next_version = 2
        while time.monotonic() < deadline:
            if present and (len(present) >= 3 or rng.random() < 0.5):
                v = present.pop(int(rng.integers(len(present))))
                (model_dir / str(v)).rename(model_dir / f".gone-{v}")
                shutil.rmtree(model_dir / f".gone-{v}")
            else:
                staging = model_dir / f".staging-{next_version}"
                staging.mkdir()
                shutil.copy(source, staging / "model.onnx")
                staging.rename(model_dir / str(next_version))
                present.append(next_version)
                next_version += 1
            changes += 1
            time.sleep(float(rng.uniform(0.02, 0.08)))
        served = {a.version for a in traffic.answers}
        mark = traffic.count()
        wait_for(lambda: traffic.count() > mark + 20)
    assert changes > 40
    assert traffic.failures() == [], traffic.failures()[:5]
    assert len(served) > 3, served  # the storm really moved traffic between versions
    assert traffic.count() > 200


# -- cancelling clients -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def slow_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("faults")
    add_policy(root, "slow", serving_config={"max_queue_delay_us": 200_000, "max_batch_size": 256})
    add_policy(root, "fast")
    return root


def test_cancelled_requests_and_streams_leave_the_server_healthy(slow_repo: Path, error_log: ErrorLog) -> None:
    with running_server(slow_repo) as server:
        channel, s = stub(server.grpc)
        with channel, PolicyClient(server.grpc, timeout=30) as client:
            # unary calls cancelled while they wait in the batcher
            futures = [s.ModelInfer.future(infer_proto("slow"), timeout=30) for _ in range(20)]
            policy_stub = client._stub
            futures += [policy_stub.Act.future(ppb.ActRequest(policy="slow", observation=OBSERVATION.tobytes()))
                        for _ in range(20)]  # fmt: skip
            time.sleep(0.05)
            for f in futures:
                f.cancel()
            assert all(f.cancelled() for f in futures)
            # REST clients that give up (one may be answered in time: it joined a batch that was about to close)
            gave_up = 0
            for _ in range(10):
                try:
                    r = httpx.post(server.http + "/v2/models/slow/infer", json=observation_json(), timeout=0.02)
                except httpx.TimeoutException:
                    gave_up += 1
                else:
                    assert r.status_code == 200
            assert gave_up >= 5
            # streams cancelled with requests pending
            requests = [infer_proto("slow") for _ in range(10)]
            call = s.ModelStreamInfer(iter(requests), timeout=30)
            time.sleep(0.05)
            call.cancel()
            for options in STREAM_OPTIONS:  # every stream mode
                first = ppb.ActRequest(policy="slow", observation=OBSERVATION.tobytes(), options=options)
                more = [ppb.ActRequest(observation=OBSERVATION.tobytes(), sequence=i) for i in range(1, 10)]
                call = policy_stub.ActStream(iter([first, *more]), timeout=30)
                time.sleep(0.05)
                call.cancel()
            # ... and the server answers everyone else, at once
            started = time.monotonic()
            for _ in range(20):
                assert client.act("fast", OBSERVATION).version == "1"
            assert time.monotonic() - started < 5
            assert client.act("slow", OBSERVATION).version == "1"
            r = httpx.post(server.http + "/v2/models/slow/infer", json=observation_json(), timeout=30)
            assert r.status_code == 200
        wait_for(lambda: inflight(server.metrics_url) == [0.0] * len(inflight(server.metrics_url)),
                 timeout=10, what="nothing in flight")  # fmt: skip
        assert httpx.get(server.http + "/v2/health/ready").status_code == 200


# -- a server process: stream churn, slow readers, SIGTERM --------------------------------------------------------


def proc_stats(pid: int) -> tuple[int, float]:
    """(open fds, RSS in MiB) of process ``pid``."""
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return fds, int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.fixture(scope="module")
def process(slow_repo: Path) -> Iterator[ServerProcess]:
    with server_process(slow_repo, "--model-control-mode", "none") as proc:
        yield proc


STREAM_OPTIONS = [
    ppb.StreamOptions(),
    ppb.StreamOptions(max_pending=8),
    ppb.StreamOptions(overflow=ppb.OVERFLOW_LATEST_ONLY),
    ppb.StreamOptions(deadline_us=5_000_000),
]


def churn(target: str, streams: int) -> None:
    """``streams`` ActStream calls, each a few observations; every 10th cancelled with observations pending, every
    50th on a connection of its own."""
    obs = OBSERVATION.tobytes()
    channel = grpc.insecure_channel(target)
    try:
        for i in range(streams):
            if i % 50 == 49:
                channel.close()
                channel = grpc.insecure_channel(target)
            call_fn = channel.stream_stream(ACT_STREAM, ppb.ActRequest.SerializeToString,
                                            ppb.ActStreamResponse.FromString)  # fmt: skip
            first = ppb.ActRequest(policy="fast", observation=obs, options=STREAM_OPTIONS[i % 4], sequence=0)
            requests = [first] + [ppb.ActRequest(observation=obs, sequence=k) for k in (1, 2)]
            if i % 10 == 9:
                call = call_fn(iter(requests), timeout=30)
                next(call)
                call.cancel()
                continue
            answers = list(call_fn(iter(requests), timeout=30))
            assert len(answers) == 3, answers
            assert all(a.WhichOneof("result") in ("action", "dropped") for a in answers), answers
    finally:
        channel.close()


def check_churn(process: ServerProcess, streams: int) -> None:
    pid = process.process.pid
    churn(process.grpc, 200)  # warm-up: allocator pools, gRPC's per-connection state
    time.sleep(0.3)
    fds_before, rss_before = proc_stats(pid)
    started = time.monotonic()
    churn(process.grpc, streams)
    elapsed = time.monotonic() - started
    time.sleep(0.5)  # closed connections are released
    fds_after, rss_after = proc_stats(pid)
    print(f"{streams} streams in {elapsed:.1f} s: fds {fds_before} -> {fds_after}, "
          f"RSS {rss_before:.0f} -> {rss_after:.0f} MiB")  # fmt: skip
    assert fds_after <= fds_before + 20
    assert rss_after - rss_before < 50
    assert inflight(f"http://127.0.0.1:{process.metrics_port}/metrics") in ([], [0.0], [0.0, 0.0], [0.0] * 3)
    with PolicyClient(process.grpc, timeout=30) as client:
        assert client.act("fast", OBSERVATION).values.shape == (6,)


def test_a_thousand_streams_opened_and_closed(process: ServerProcess) -> None:
    check_churn(process, 1000)


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_ten_thousand_streams_opened_and_closed(process: ServerProcess) -> None:
    check_churn(process, 10_000)


# A client whose HTTP/2 receive window is small, so that the server's writes back up as soon as it stops reading.
SMALL_WINDOW = [("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 16384)]


@pytest.mark.parametrize("mode", range(len(STREAM_OPTIONS)), ids=["default", "max-pending", "latest-only", "deadline"])
def test_a_client_that_never_reads_is_held_back_not_buffered(process: ServerProcess, mode: int) -> None:
    """The client streams 16 KiB observations as fast as it can for 2 s and reads nothing. The server must stop
    taking them off the wire (its RSS stays within 50 MiB, and the client's writes block) while it goes on
    answering another client promptly."""
    pid = process.process.pid
    _, rss_before = proc_stats(pid)
    big = np.zeros(4096, "<f4").tobytes()  # the wrong size: each will be answered with an error, if read
    sent = [0]
    stop = threading.Event()

    def observations() -> Iterator[ppb.ActRequest]:
        yield ppb.ActRequest(policy="fast", observation=big, options=STREAM_OPTIONS[mode])
        while not stop.is_set():
            sent[0] += 1
            yield ppb.ActRequest(observation=big, sequence=sent[0])

    latencies: list[float] = []
    with grpc.insecure_channel(process.grpc, options=SMALL_WINDOW) as channel:
        call = channel.stream_stream(ACT_STREAM, ppb.ActRequest.SerializeToString,
                                     ppb.ActStreamResponse.FromString)(observations(), timeout=60)  # fmt: skip
        try:
            with PolicyClient(process.grpc, timeout=30) as other:
                deadline = time.monotonic() + 2.0
                while time.monotonic() < deadline:
                    t = time.monotonic()
                    assert other.act("fast", OBSERVATION).values.shape == (6,)
                    latencies.append(time.monotonic() - t)
                    time.sleep(0.01)
            held_at = sent[0]
            time.sleep(0.5)
            _, rss_during = proc_stats(pid)
            still_sending = sent[0] > held_at
        finally:
            stop.set()
            call.cancel()
    print(
        f"mode {mode}: client held back after {held_at} observations ({held_at * 16 >> 10} MiB); server RSS "
        f"{rss_before:.0f} -> {rss_during:.0f} MiB; other client p99 {1e3 * np.percentile(latencies, 99):.1f} ms"
    )
    assert rss_during - rss_before < 50
    assert not still_sending, "the server kept reading from a client that reads nothing"
    assert np.percentile(latencies, 99) < 0.5
    with PolicyClient(process.grpc, timeout=30) as client:
        assert client.act("fast", OBSERVATION).values.shape == (6,)


def test_sigterm_with_streams_open(tmp_path: Path) -> None:
    """Robots streaming at 100 Hz when the server is told to stop: every observation sent before the signal gets its
    action; after it, observations are answered UNAVAILABLE (or the stream ends with a status) -- never dropped
    silently; the process exits 0 within its grace period."""
    add_policy(tmp_path, "p")
    with server_process(tmp_path, "--drain-grace-s", "3") as proc:
        results: list[list[tuple[float, Action | ActFailure | str]]] = [[] for _ in range(4)]
        signalled = [float("inf")]

        def robot(k: int) -> None:
            with PolicyClient(proc.grpc, timeout=10) as client:
                stream = client.stream("p", overflow="queue" if k % 2 else "latest")
                try:
                    for sequence in range(10_000):
                        sent = time.monotonic()
                        stream.send(OBSERVATION, sequence)
                        try:
                            answer = stream.receive(timeout=10)
                        except grpc.RpcError as exc:
                            results[k].append((sent, f"stream ended: {exc.code()}"))
                            return
                        except queue.Empty:
                            results[k].append((sent, "no answer"))
                            return
                        if answer is None:
                            results[k].append((sent, "stream ended: OK"))
                            return
                        results[k].append((sent, answer))
                        time.sleep(0.01)
                finally:
                    stream.close()

        threads = [threading.Thread(target=robot, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        time.sleep(1.0)
        signalled[0] = time.monotonic()
        proc.process.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(30)
        code = proc.process.wait(30)
        elapsed = time.monotonic() - signalled[0]
    assert code == 0 and elapsed < 3 + 5
    for k, answers in enumerate(results):
        before = [a for sent, a in answers if sent < signalled[0] - 0.05]
        assert len(before) > 20
        assert all(isinstance(a, Action) for a in before), (k, [a for a in before if not isinstance(a, Action)][:3])
        end = answers[-1][1]
        assert isinstance(end, str) and end.startswith("stream ended"), (k, end)
        after = [a for sent, a in answers[:-1] if sent >= signalled[0]]
        for a in after:
            assert isinstance(a, Action) or (isinstance(a, ActFailure) and a.code == grpc.StatusCode.UNAVAILABLE), a
