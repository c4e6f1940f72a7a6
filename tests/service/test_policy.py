"""PolicyService: Act, ActStream and GetPolicy, driven through the robot client SDK against a real server."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest

from odetoode.client import ActFailure, Action, PolicyClient
from odetoode.testing.models import OBS, add_policy
from odetoode.testing.servers import RunningServer, running_server, server_process


def expected(repo: Path, model: str, version: str, obs: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(repo / model / version / "model.onnx"), providers=["CPUExecutionProvider"])
    return session.run(None, {"observation": obs.reshape(-1, OBS).astype(np.float32)})[0]  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def slow_server(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A policy whose batcher holds each request 30 ms, so observations pile up behind one in flight."""
    root = tmp_path_factory.mktemp("slow")
    add_policy(root, "slow", serving_config={"max_queue_delay_us": 30_000, "max_batch_size": 64})
    with running_server(root) as server:
        yield server


def test_act_matches_onnxruntime_and_echoes_the_sequence(server: RunningServer) -> None:
    obs = np.random.default_rng(0).normal(size=OBS).astype(np.float32)
    with PolicyClient(server.grpc) as client:
        action = client.act("policy", obs, sequence=42)
        pinned = client.act("policy", obs.tolist(), version="1")
    assert (action.sequence, action.version) == (42, "2")
    assert np.allclose(action.values, expected(server.server.settings.repository, "policy", "2", obs), atol=1e-6)
    assert pinned.version == "1"
    assert np.allclose(pinned.values, expected(server.server.settings.repository, "policy", "1", obs), atol=1e-6)
    assert action.compute_ns > 0 and action.server_ns >= action.compute_ns and action.batch_size == 1


def test_get_policy_describes_spaces_normalization_and_certificate(server: RunningServer) -> None:
    with PolicyClient(server.grpc) as client:
        info = client.get_policy("policy")
    assert (info.version, list(info.versions), info.env_id, info.arch) == ("2", ["1", "2"], "HalfCheetah-v5",
                                                                          "iso-odetoode")  # fmt: skip
    assert list(info.observation_space.shape) == [OBS] and np.isinf(info.observation_space.low).all()
    assert list(info.action_space.high) == [1.0] * 6 and len(info.normalization.mean) == OBS
    assert info.lipschitz_bound == pytest.approx(1.04**25, rel=1e-5)
    assert info.execution_provider == "CPUExecutionProvider" and '"seed": 2' in info.training_json


def test_bad_requests_name_the_field(server: RunningServer) -> None:
    with PolicyClient(server.grpc) as client:
        with pytest.raises(grpc.RpcError) as info:
            client.act("policy", np.zeros(OBS - 1))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "observation: 16 values, policy 'policy' expects 17" in info.value.details()
        with pytest.raises(grpc.RpcError) as info:
            client.act("digits", np.zeros(784))
        assert "'digits' is a classifier, not a policy" in info.value.details()
        with pytest.raises(grpc.RpcError) as info:
            client.act("policy", np.full(OBS, np.nan))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "NaN" in info.value.details()
        with pytest.raises(grpc.RpcError) as info:
            client.act("nosuch", np.zeros(OBS))
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        # the finiteness check, value by value: one NaN, one infinity, +inf and -inf together, and the largest
        # finite float32 everywhere (whose float32 sum would overflow) which must be served
        largest = np.finfo(np.float32).max
        one_nan, one_inf, both = np.zeros(OBS), np.ones(OBS), np.zeros(OBS)
        one_nan[5], one_inf[16], both[:2] = np.nan, -np.inf, [np.inf, -np.inf]
        for bad in (one_nan, one_inf, both):
            with pytest.raises(grpc.RpcError) as info:
                client.act("policy", bad.astype(np.float32))
            assert "observation: contains NaN or infinity" in info.value.details()
        extreme = np.full(OBS, largest, np.float32)
        assert np.isfinite(client.act("policy", extreme).values).all()
        assert np.isfinite(client.act("policy", -extreme).values).all()


def test_streams_answer_in_order_under_concurrency(server: RunningServer) -> None:
    repo = server.server.settings.repository
    rng = np.random.default_rng(1)
    observations = rng.normal(size=(8, 50, OBS)).astype(np.float32)
    results: dict[int, list[Action | ActFailure | None]] = {}

    def run(stream_index: int) -> None:
        with PolicyClient(server.grpc) as client:
            stream = client.stream("policy")
            for i, obs in enumerate(observations[stream_index]):
                stream.send(obs, 1000 * stream_index + i)
            results[stream_index] = [stream.receive(timeout=10) for _ in range(50)]
            stream.close()

    threads = [threading.Thread(target=run, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for k in range(8):
        answers = results[k]
        assert all(isinstance(a, Action) for a in answers)
        assert [a.sequence for a in answers] == [1000 * k + i for i in range(50)]  # type: ignore[union-attr]
        got = np.stack([a.values for a in answers])  # type: ignore[union-attr]
        assert np.allclose(got, expected(repo, "policy", "2", observations[k]), atol=1e-6)


def test_a_failed_observation_does_not_end_the_stream(server: RunningServer) -> None:
    with PolicyClient(server.grpc) as client:
        stream = client.stream("policy")
        stream.send(np.zeros(OBS), 1)
        stream.send(np.full(OBS, np.inf), 2)
        stream.send(np.zeros(OBS - 3), 3)
        stream.send(np.zeros(OBS), 4)
        answers = [stream.receive(timeout=10) for _ in range(4)]
        stream.close()
    assert isinstance(answers[0], Action) and isinstance(answers[3], Action)
    assert isinstance(answers[1], ActFailure) and answers[1].code == grpc.StatusCode.INVALID_ARGUMENT
    assert isinstance(answers[2], ActFailure) and answers[2].sequence == 3


def test_latest_only_answers_the_newest_and_reports_what_it_dropped(slow_server: RunningServer) -> None:
    with PolicyClient(slow_server.grpc) as client:
        stream = client.stream("slow", overflow="latest")
        for i in range(10):
            stream.send(np.full(OBS, i, dtype=np.float32), i)
        answers = [stream.receive(timeout=10) for _ in range(10)]
        stream.close()
    assert [a.sequence for a in answers] == list(range(10))  # type: ignore[union-attr]  # each answered once, in order
    dropped = [a for a in answers if isinstance(a, ActFailure) and a.dropped]
    acted = [a for a in answers if isinstance(a, Action)]
    assert len(dropped) >= 5 and acted[-1].sequence == 9  # the newest is always answered


def test_queue_bound_and_per_observation_deadline(slow_server: RunningServer) -> None:
    with PolicyClient(slow_server.grpc) as client:
        stream = client.stream("slow", max_pending=2)
        for i in range(6):
            stream.send(np.zeros(OBS), i)
        answers = [stream.receive(timeout=10) for _ in range(6)]
        stream.close()
        full = [a for a in answers if isinstance(a, ActFailure) and a.code == grpc.StatusCode.RESOURCE_EXHAUSTED]
        assert full and [a.sequence for a in answers] == list(range(6))  # type: ignore[union-attr]

        stream = client.stream("slow", deadline_us=10_000)  # 10 ms budget, 30 ms queue delay
        stream.send(np.zeros(OBS), 7)
        (answer,) = [stream.receive(timeout=10)]
        stream.close()
    assert isinstance(answer, ActFailure) and answer.code == grpc.StatusCode.DEADLINE_EXCEEDED


def test_a_stream_stays_on_its_version_unless_it_follows_the_latest(tmp_path: Path) -> None:
    add_policy(tmp_path, "p", 1, seed=1)
    with running_server(tmp_path, model_control_mode="poll", poll_interval_s=0.1) as server, \
            PolicyClient(server.grpc) as client:  # fmt: skip
        pinned, following = client.stream("p"), client.stream("p", follow_latest=True)
        for s in (pinned, following):
            s.send(np.zeros(OBS), 0)
            assert s.receive(timeout=10).version == "1"  # type: ignore[union-attr]
        add_policy(tmp_path, "p", 2, seed=2, serving_config={"version_policy": {"all": True}})
        deadline = time.monotonic() + 20
        while client.get_policy("p").version != "2" and time.monotonic() < deadline:
            time.sleep(0.05)
        for s in (pinned, following):
            s.send(np.zeros(OBS), 1)
        assert pinned.receive(timeout=10).version == "1"  # type: ignore[union-attr]
        assert following.receive(timeout=10).version == "2"  # type: ignore[union-attr]
        pinned.close()
        following.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_control_loop_survives_a_server_restart(tmp_path: Path) -> None:
    add_policy(tmp_path, "p")
    port = free_port()
    args = ("--grpc-port", str(port))
    tagged: list[tuple[int, int]] = []
    cycle = {"n": 0}
    report_box = {}

    def observe(sequence: int, _: Action | None) -> np.ndarray:
        cycle["n"] = sequence
        return np.full(OBS, sequence % 7, dtype=np.float32)

    with PolicyClient(f"127.0.0.1:{port}") as client:
        with server_process(tmp_path, *args) as first:
            client.wait_ready(30)
            loop = threading.Thread(target=lambda: report_box.update(r=client.control_loop(
                "p", hz=100, on_observation=observe, duration_s=8,
                on_action=lambda a: tagged.append((a.sequence, cycle["n"])))))  # fmt: skip
            loop.start()
            time.sleep(1.5)
            assert first.terminate() == 0
        restart_cycle = cycle["n"]
        with server_process(tmp_path, *args):
            loop.join(30)
    report = report_box["r"]
    assert report.reconnects >= 1
    assert report.answered > 0 and report.missed > 0
    assert all(sequence == at for sequence, at in tagged)  # every applied action answers its own cycle
    assert any(sequence > restart_cycle for sequence, _ in tagged)  # the loop resumed after the restart


def test_closed_loop_demo_return_equals_the_local_onnx_return(server: RunningServer) -> None:
    from odetoode.demo import run_demo

    result = run_demo(server.grpc, "policy", hz=500, max_steps=200, repository=server.server.settings.repository)
    assert result.env_id == "HalfCheetah-v5" and result.steps == 200
    assert result.report.answered == 200 and result.report.missed == 0
    assert result.local_return is not None
    assert result.served_return == pytest.approx(result.local_return, rel=1e-9, abs=1e-9)


def test_command_line_tools(server: RunningServer) -> None:
    import json
    import subprocess
    import sys

    def run(*args: str) -> str:
        out = subprocess.run([sys.executable, "-m", "service", *args, "--target", server.grpc], capture_output=True,
                             text=True, timeout=120)  # fmt: skip
        assert out.returncode == 0, out.stderr
        return out.stdout

    act = json.loads(run("act", "--policy", "policy", "--observation", " ".join(["0.5"] * OBS)))
    assert act["version"] == "2" and len(act["action"]) == 6
    repo = server.server.settings.repository
    assert np.allclose(act["action"], expected(repo, "policy", "2", np.full(OBS, 0.5, np.float32)).ravel(), atol=1e-5)
    assert json.loads(run("info", "--policy", "policy"))["arch"] == "iso-odetoode"
    bench = run("bench", "--policy", "policy", "--requests", "50")
    assert "ActStream  50 sequential calls: p50" in bench
