"""The benchmark harness (``odetoode.testing.bench``): the floor server answers every path it serves with the
session's own action and nothing it does not serve; alternating rounds time every row in every round, in rotating
order; an A/B run's server comes from the checkout it names; ratio tables divide by each row's floor; process-tree
sampling sees children."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from odetoode.client import PolicyClient
from odetoode.testing.bench import (
    FloorProcess,
    ModelStreamCall,
    Row,
    StreamRoundTrip,
    Timing,
    alternate,
    checkout_server,
    cpu_session,
    floor_process,
    process_tree,
    ratio,
    ratio_table,
    rss_mib,
    tree_usage,
    value,
)
from odetoode.testing.clients import action_of, infer_proto, stub
from odetoode.testing.models import add_policy

OBS = 17


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return add_policy(tmp_path_factory.mktemp("repo"), "policy")


@pytest.fixture(scope="module")
def floor(model_file: Path) -> Iterator[FloorProcess]:
    with floor_process(model_file, "policy", "oip", "rest") as running:
        yield running


def test_the_floor_answers_every_path_with_the_sessions_action(model_file: Path, floor: FloorProcess) -> None:
    obs = np.random.default_rng(0).normal(size=(1, OBS)).astype(np.float32)
    expected = cpu_session(model_file).run(None, {"observation": obs})[0]
    assert floor.grpc_port is not None and floor.http_port is not None

    with PolicyClient(floor.grpc, timeout=30) as client:
        client.wait_ready(30)
        assert np.array_equal(client.act("policy", obs[0]).values.reshape(expected.shape), expected)
        stream = client.stream("policy")
        try:
            round_trip = StreamRoundTrip(stream, [obs[0]])
            for _ in range(3):  # the sequence numbers advance and are checked
                assert np.array_equal(round_trip().values.reshape(expected.shape), expected)
        finally:
            stream.close()

    channel, oip = stub(floor.grpc)
    with channel:
        request = infer_proto("policy")
        request.raw_input_contents[0] = obs.tobytes()
        assert np.array_equal(action_of(oip.ModelInfer(request, timeout=30)), expected)

    g_in = grpcclient.InferInput("observation", [1, OBS], "FP32")
    g_in.set_data_from_numpy(obs)
    g_client = grpcclient.InferenceServerClient(floor.grpc)
    try:
        streamed = ModelStreamCall(g_client, "policy", [g_in])
        assert np.array_equal(streamed().as_numpy("action"), expected)
        g_client.stop_stream()
    finally:
        g_client.close()

    h_in = httpclient.InferInput("observation", [1, OBS], "FP32")
    h_in.set_data_from_numpy(obs, binary_data=True)
    h_client = httpclient.InferenceServerClient(f"127.0.0.1:{floor.http_port}")
    try:
        result = h_client.infer("policy", [h_in])
        assert result.get_response()["model_name"] == "policy"
        assert np.array_equal(result.as_numpy("action"), expected)
    finally:
        h_client.close()


def test_a_floor_serves_only_what_it_is_asked_for(model_file: Path) -> None:
    with floor_process(model_file, "policy") as policy_only:
        assert policy_only.http_port is None and policy_only.grpc_port is not None
        channel, oip = stub(policy_only.grpc)
        with channel, pytest.raises(grpc.RpcError) as raised:
            oip.ModelInfer(infer_proto("policy"), timeout=30)
        assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED
    with pytest.raises(ValueError, match="services must be some of"):
        floor_process(model_file, "graphql").__enter__()


def test_alternate_times_every_row_each_round_in_rotating_order() -> None:
    calls: list[str] = []

    def work(name: str) -> None:
        calls.append(name)
        sum(range(200_000))  # a few ms of CPU: more than the kernel's accounting tick over the rounds

    def call(name: str) -> Row:
        return Row(name, lambda: work(name), None if name.startswith("floor") else "floor a", os.getpid())

    rows = [call("floor a"), call("ours a")]
    measured = alternate([rows], requests=12, rounds=3, warmup=2, rewarm=1)
    assert calls[:4] == ["floor a", "floor a", "ours a", "ours a"]  # the warm-up, row after row
    floor_first, ours_first = ["floor a"] * 5 + ["ours a"] * 5, ["ours a"] * 5 + ["floor a"] * 5
    assert calls[4:] == floor_first + ours_first + ours_first  # 1 untimed + 4 timed calls per row and round
    assert [len(c) for c in measured.chunks["ours a"]] == [4, 4, 4]
    assert measured.per_round("ours a", "floor a").shape == (3,)
    ours, floor = measured.pairs(rows)[1]
    assert floor.name == "floor a" and ours.name == "ours a"
    assert np.isfinite(ours.server_cpu_us) and ours.server_cpu_us > 0


def test_over_whole_cycles_every_row_takes_every_place_and_neighbours_swap() -> None:
    calls: list[str] = []
    names = ["floor", "a", "b", "c"]
    rows = [Row(n, lambda n=n: calls.append(n), None if n == "floor" else "floor") for n in names]  # type: ignore[misc]
    alternate([rows], requests=8, rounds=8, warmup=0, rewarm=0)  # 2 cycles of 4 rotations, 1 call per row and round
    orders = [calls[i : i + 4] for i in range(0, len(calls), 4)]
    assert len(orders) == 8 and all(sorted(o) == sorted(names) for o in orders)
    for name in names:
        assert sorted(o.index(name) for o in orders) == [0, 0, 1, 1, 2, 2, 3, 3]
    pairs = [(o[i], o[i + 1]) for o in orders for i in range(3)]
    assert all(pairs.count((x, y)) == pairs.count((y, x)) for x in names for y in names)


def test_a_ratio_table_divides_by_each_rows_floor(capsys: pytest.CaptureFixture[str]) -> None:
    floor = Timing("floor", 100.0, 150.0, 200.0, 110.0)
    ours = Timing("ours", 125.0, 180.0, 300.0, 130.0)
    ratio_table([(floor, floor), (ours, floor)], [value("p50_us", "p50 us"), ratio("p99_us", "p99 x floor")],
                name_width=8)  # fmt: skip
    assert capsys.readouterr().out == (
        f"\n{'':<8}{'p50 us':>9}{'p99 x floor':>13}\n"
        f"{'floor':<8}{100.0:>9.1f}{1.0:>13.2f}\n"
        f"{'ours':<8}{125.0:>9.1f}{1.5:>13.2f}\n"
    )


def test_tree_usage_counts_the_children() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert child.pid in process_tree(os.getpid())
        rss, fds = tree_usage(os.getpid())
        assert rss > rss_mib(os.getpid()) and fds > 0
    finally:
        child.kill()
        child.wait(10)


def test_a_checkout_server_runs_the_checkouts_own_service_package(tmp_path: Path) -> None:
    """``python -m`` puts the working directory first on the path: run anywhere else, the installed ``service`` would
    answer instead of the checkout's (which is what an A/B run compares)."""
    checkout = tmp_path / "checkout"
    (checkout / "service").mkdir(parents=True)
    (checkout / "service" / "__init__.py").write_text("")
    # a stand-in server: says where it was loaded from and the ports line server_process waits for, then exits
    (checkout / "service" / "__main__.py").write_text(
        "import service, sys\nprint('loaded', service.__file__)\nprint('http :1, grpc :2, metrics :3', flush=True)\n"
    )
    with checkout_server(checkout, tmp_path) as server:
        server.process.wait(30)
    assert f"loaded {checkout.resolve() / 'service' / '__init__.py'}" in "".join(server.log_lines)
    with pytest.raises(SystemExit, match="not a checkout"):
        checkout_server(tmp_path / "nowhere", tmp_path).__enter__()
