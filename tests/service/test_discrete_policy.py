"""A policy with a discrete action space, served: its index travels in ``ActResponse.action_index`` (Act and
ActStream, both SDKs), ``GetPolicy`` states ``Discrete(n)``, and OIP answers the ``action`` index (INT64) and the
``logits``.

The policy is made here with ``onnx.helper`` (``logits = observation @ K``, ``action = argmax(logits)``) and described
the way the exporter describes one; the oracle is numpy.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from odetoode.client import PolicyClient
from odetoode.client.aio import AsyncPolicyClient
from odetoode.modelfile import EXTERNAL, Box, Discrete, Golden, ModelDescription, TrainingRecord
from odetoode.testing.servers import RunningServer, running_server

pytestmark = pytest.mark.timeout(120)

OBS, ACTIONS = 4, 3
K = np.random.default_rng(3).standard_normal((OBS, ACTIONS)).astype(np.float32)


def discrete_policy(path: Path) -> None:
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["observation", "K"], ["logits"]),
            helper.make_node("ArgMax", ["logits"], ["action"], axis=1, keepdims=0),
        ],
        "discrete",
        [helper.make_tensor_value_info("observation", TensorProto.FLOAT, ["batch", OBS])],
        [
            helper.make_tensor_value_info("action", TensorProto.INT64, ["batch"]),
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", ACTIONS]),
        ],
        [numpy_helper.from_array(K, "K")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    inputs = np.random.default_rng(4).standard_normal((4, OBS)).astype(np.float32)
    description = ModelDescription(
        kind="policy",
        arch=EXTERNAL,
        steps=None,
        hidden=None,
        golden=Golden(tuple(map(tuple, inputs.tolist())), tuple((float(a),) for a in np.argmax(inputs @ K, axis=1))),
        env_id="CartPole-v1",
        observation_space=Box((OBS,), (float("-inf"),) * OBS, (float("inf"),) * OBS),
        action_space=Discrete(ACTIONS),
        training=TrainingRecord(note="made by a test"),
    )
    for key, value in description.to_metadata_props().items():
        model.metadata_props.add(key=key, value=value)
    path.parent.mkdir(parents=True)
    onnx.save(model, str(path))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    root = tmp_path_factory.mktemp("discrete")
    discrete_policy(root / "chooser" / "1" / "model.onnx")
    with running_server(root) as running:
        yield running


def observations(n: int) -> np.ndarray:
    return np.random.default_rng(5).standard_normal((n, OBS)).astype(np.float32)


def test_get_policy_states_a_discrete_space(server: RunningServer) -> None:
    with PolicyClient(server.grpc) as client:
        info = client.get_policy("chooser")
    assert info.action_space.HasField("discrete") and info.action_space.discrete.n == ACTIONS
    assert (info.arch, info.steps, info.hidden, info.lipschitz_bound) == (EXTERNAL, 0, 0, 0.0)
    assert not info.HasField("normalization")


def test_act_and_act_stream_answer_the_index(server: RunningServer) -> None:
    xs = observations(16)
    expected = np.argmax(xs.astype(np.float64) @ K.astype(np.float64), axis=1)
    with PolicyClient(server.grpc) as client:
        for x, want in zip(xs[:4], expected[:4], strict=True):
            action = client.act("chooser", x)
            assert action.index == want and action.command == want and action.values.size == 0
        stream = client.stream("chooser")
        for sequence, x in enumerate(xs):
            stream.send(x, sequence)
        answers = [stream.receive(timeout=10) for _ in xs]
        stream.close()
    assert [a.index for a in answers] == expected.tolist()  # type: ignore[union-attr]


def test_the_asyncio_client_answers_the_index(server: RunningServer) -> None:
    x = observations(1)[0]

    async def act() -> int | None:
        async with AsyncPolicyClient(server.grpc) as client:
            return (await client.act("chooser", x)).index

    assert asyncio.run(act()) == int(np.argmax(x @ K))


def test_oip_answers_the_index_and_the_logits(server: RunningServer) -> None:
    xs = observations(5)
    body = {"inputs": [{"name": "observation", "datatype": "FP32", "shape": [5, OBS], "data": xs.ravel().tolist()}]}
    r = httpx.post(server.http + "/v2/models/chooser/infer", json=body)
    assert r.status_code == 200, r.text
    outputs = {o["name"]: o for o in r.json()["outputs"]}
    assert (outputs["action"]["datatype"], outputs["action"]["shape"]) == ("INT64", [5])
    session = ort.InferenceSession(str(server.server.settings.repository / "chooser" / "1" / "model.onnx"))
    action, logits = session.run(None, {"observation": xs})
    assert outputs["action"]["data"] == action.tolist()
    np.testing.assert_allclose(np.reshape(outputs["logits"]["data"], (5, ACTIONS)), logits, rtol=1e-6)


BUNDLED = Path(__file__).resolve().parents[2] / "models"


@pytest.mark.parametrize("seed", [2_000_000_000, 2_000_000_001])
def test_the_bundled_cartpole_balances_for_500_steps_over_act_stream(seed: int) -> None:
    """The bundled CartPole-v1 policy (trained by ES, discrete actions) driven in closed loop through the server:
    the full 500 steps, the same return as ONNX Runtime on the file with the same seed."""
    from odetoode.demo import run_demo

    with running_server(BUNDLED, model_control_mode="explicit", startup_models=["cartpole"]) as running:
        result = run_demo(running.grpc, "cartpole", hz=1000.0, seed=seed, repository=BUNDLED)
    assert result.env_id == "CartPole-v1" and result.report.missed == 0
    assert result.served_return == result.local_return == 500.0
