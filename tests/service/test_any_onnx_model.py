"""Any ONNX model is served over the Open Inference Protocol, as Triton's ONNX backend serves it.

The models are made here with ``onnx.helper`` and carry no ``odetoode.*`` metadata: inputs, outputs, datatypes and
shapes come from the graph; ``config.yaml`` may say ``max_batch_size: 0``. Every answer is compared with numpy in
float64 (the oracle), through stock clients (tritonclient over gRPC and over REST with binary tensors), plain JSON as
curl sends it, and KServe V1.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import onnx
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from onnx import TensorProto, helper, numpy_helper
from tritonclient.utils import InferenceServerException

from odetoode.client import PolicyClient
from odetoode.testing.models import add_graph
from odetoode.testing.servers import RunningServer, running_server

pytestmark = pytest.mark.timeout(120)

RNG = np.random.default_rng(7)
W = RNG.standard_normal((4, 2))
B = RNG.standard_normal(2)


def linear_graph() -> onnx.GraphProto:
    """``y = x W + b``: FP32 [N, 4] -> FP32 [N, 2], the plain 4->2 model a new user brings."""
    return helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["y"])],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])],
        [numpy_helper.from_array(W.astype(np.float32), "W"), numpy_helper.from_array(B.astype(np.float32), "b")],
    )


def mixed_graph() -> onnx.GraphProto:
    """Three inputs of three datatypes: ``total = sum over the row of where(mask, ids + half, 0)`` (FP32 [N]) and
    ``any = whether any mask is set`` (BOOL [N])."""
    nodes = [
        helper.make_node("Cast", ["ids"], ["ids_f"], to=TensorProto.FLOAT),
        helper.make_node("Cast", ["half"], ["half_f"], to=TensorProto.FLOAT),
        helper.make_node("Add", ["ids_f", "half_f"], ["both"]),
        helper.make_node("Where", ["mask", "both", "zero"], ["kept"]),
        helper.make_node("ReduceSum", ["kept", "axis"], ["total"], keepdims=0),
        helper.make_node("Cast", ["mask"], ["mask_f"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMax", ["mask_f"], ["any_f"], axes=[1], keepdims=0),
        helper.make_node("Cast", ["any_f"], ["any"], to=TensorProto.BOOL),
    ]
    return helper.make_graph(
        nodes,
        "mixed",
        [
            helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", 3]),
            helper.make_tensor_value_info("half", TensorProto.FLOAT16, ["N", 3]),
            helper.make_tensor_value_info("mask", TensorProto.BOOL, ["N", 3]),
        ],
        [
            helper.make_tensor_value_info("total", TensorProto.FLOAT, ["N"]),
            helper.make_tensor_value_info("any", TensorProto.BOOL, ["N"]),
        ],
        [numpy_helper.from_array(np.zeros((), np.float32), "zero"), numpy_helper.from_array(np.array([1]), "axis")],
    )


def transpose_graph() -> onnx.GraphProto:
    """No batch dimension: FP32 [3, 4] -> its transpose [4, 3]."""
    return helper.make_graph(
        [helper.make_node("Transpose", ["m"], ["t"], perm=[1, 0])],
        "transpose",
        [helper.make_tensor_value_info("m", TensorProto.FLOAT, [3, 4])],
        [helper.make_tensor_value_info("t", TensorProto.FLOAT, [4, 3])],
    )


def sequence_graph() -> onnx.GraphProto:
    """A variable dimension besides the batch: FP32 [N, T, 2] -> the sum over T, [N, 2]."""
    return helper.make_graph(
        [helper.make_node("ReduceSum", ["seq", "axis"], ["summed"], keepdims=0)],
        "sequence",
        [helper.make_tensor_value_info("seq", TensorProto.FLOAT, ["N", "T", 2])],
        [helper.make_tensor_value_info("summed", TensorProto.FLOAT, ["N", 2])],
        [numpy_helper.from_array(np.array([1]), "axis")],
    )


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("any-onnx")
    add_graph(root, "linear", linear_graph())
    add_graph(root, "mixed", mixed_graph())
    add_graph(root, "transpose", transpose_graph())
    add_graph(root, "sequence", sequence_graph())
    add_graph(root, "unbatched-linear", linear_graph(), {"max_batch_size": 0})
    escaping = add_graph(root, "escaping", linear_graph())
    model = onnx.load(str(escaping))
    weight = model.graph.initializer[0]
    np.asarray(W, np.float32).tofile(root / "escaping" / "outside.bin")
    weight.ClearField("raw_data")
    weight.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "../outside.bin"), ("offset", "0"), ("length", str(W.size * 4))):
        weight.external_data.add(key=key, value=value)
    onnx.save(model, str(escaping))
    return root


@pytest.fixture(scope="module")
def server(repository: Path) -> Iterator[RunningServer]:
    with running_server(repository, repository_api=True) as running:
        yield running


def linear(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float64) @ W + B


def test_a_plain_model_is_ready_and_described_from_its_graph(server: RunningServer) -> None:
    assert httpx.get(server.http + "/v2/health/ready").status_code == 200
    meta = httpx.get(server.http + "/v2/models/linear").json()
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
    assert meta["outputs"] == [{"name": "y", "datatype": "FP32", "shape": [-1, 2]}]
    config = httpx.get(server.http + "/v2/models/linear/config").json()
    assert config["max_batch_size"] > 0 and config["input"][0]["dims"] == [4] and config["odetoode"] == {}


def test_rest_json_as_curl_sends_it(server: RunningServer) -> None:
    x = RNG.standard_normal((3, 4)).astype(np.float32)
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [3, 4], "data": x.tolist()}]}
    r = httpx.post(server.http + "/v2/models/linear/infer", json=body)
    assert r.status_code == 200, r.text
    (out,) = r.json()["outputs"]
    assert (out["name"], out["datatype"], out["shape"]) == ("y", "FP32", [3, 2])
    np.testing.assert_allclose(np.reshape(out["data"], (3, 2)), linear(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_tritonclient_binary_and_grpc(server: RunningServer, protocol: str) -> None:
    x = RNG.standard_normal((5, 4)).astype(np.float32)
    if protocol == "grpc":
        client: Any = grpcclient.InferenceServerClient(server.grpc)
        feed = grpcclient.InferInput("x", [5, 4], "FP32")
        feed.set_data_from_numpy(x)
    else:
        client = httpclient.InferenceServerClient(server.http.removeprefix("http://"))
        feed = httpclient.InferInput("x", [5, 4], "FP32")
        feed.set_data_from_numpy(x, binary_data=True)
    result = client.infer("linear", [feed])
    np.testing.assert_allclose(result.as_numpy("y"), linear(x), rtol=1e-5, atol=1e-5)
    client.close()


def test_kserve_v1_predict(server: RunningServer) -> None:
    x = RNG.standard_normal((2, 4)).astype(np.float32)
    r = httpx.post(server.http + "/v1/models/linear:predict", content=json.dumps({"instances": x.tolist()}))
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(np.asarray(r.json()["predictions"]), linear(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_int64_fp16_and_bool_inputs(server: RunningServer, protocol: str) -> None:
    ids = RNG.integers(-1000, 1000, (4, 3)).astype(np.int64)
    half = RNG.standard_normal((4, 3)).astype(np.float16)
    mask = RNG.random((4, 3)) < 0.5
    mask[0] = False
    module: Any = grpcclient if protocol == "grpc" else httpclient
    client = (
        grpcclient.InferenceServerClient(server.grpc)
        if protocol == "grpc"
        else httpclient.InferenceServerClient(server.http.removeprefix("http://"))
    )
    feeds = []
    for name, value, datatype in (("ids", ids, "INT64"), ("half", half, "FP16"), ("mask", mask, "BOOL")):
        feed = module.InferInput(name, list(value.shape), datatype)
        feed.set_data_from_numpy(value)
        feeds.append(feed)
    result = client.infer("mixed", feeds)
    expected = np.where(mask, ids.astype(np.float64) + half.astype(np.float64), 0).sum(axis=1)
    np.testing.assert_allclose(result.as_numpy("total"), expected, rtol=1e-5)
    np.testing.assert_array_equal(result.as_numpy("any"), mask.any(axis=1))
    client.close()


def test_a_model_without_a_batch_dimension(server: RunningServer) -> None:
    config = httpx.get(server.http + "/v2/models/transpose/config").json()
    assert config["max_batch_size"] == 0 and config["input"][0]["dims"] == [3, 4]
    m = RNG.standard_normal((3, 4)).astype(np.float32)
    client = grpcclient.InferenceServerClient(server.grpc)
    feed = grpcclient.InferInput("m", [3, 4], "FP32")
    feed.set_data_from_numpy(m)
    np.testing.assert_array_equal(client.infer("transpose", [feed]).as_numpy("t"), m.T)
    wrong = grpcclient.InferInput("m", [2, 4], "FP32")
    wrong.set_data_from_numpy(m[:2])
    with pytest.raises(InferenceServerException, match=r"inputs\[0\]\.shape: input 'm' expects \[3, 4\]"):
        client.infer("transpose", [wrong])
    client.close()


def test_max_batch_size_0_in_config_turns_batching_off(server: RunningServer) -> None:
    config = httpx.get(server.http + "/v2/models/unbatched-linear/config").json()
    assert config["max_batch_size"] == 0 and config["input"][0]["dims"] == [-1, 4]
    x = RNG.standard_normal((3, 4)).astype(np.float32)
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [3, 4], "data": x.ravel().tolist()}]}
    r = httpx.post(server.http + "/v2/models/unbatched-linear/infer", json=body)
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(np.reshape(r.json()["outputs"][0]["data"], (3, 2)), linear(x), rtol=1e-5, atol=1e-5)


def test_a_variable_dimension_besides_the_batch(server: RunningServer) -> None:
    client = httpclient.InferenceServerClient(server.http.removeprefix("http://"))
    for steps in (1, 3, 7):
        seq = RNG.standard_normal((2, steps, 2)).astype(np.float32)
        feed = httpclient.InferInput("seq", list(seq.shape), "FP32")
        feed.set_data_from_numpy(seq, binary_data=True)
        summed = client.infer("sequence", [feed]).as_numpy("summed")
        np.testing.assert_allclose(summed, seq.astype(np.float64).sum(axis=1), rtol=1e-5, atol=1e-6)
    client.close()


def test_external_data_outside_the_model_directory_is_refused(server: RunningServer) -> None:
    entries = httpx.post(server.http + "/v2/repository/index", json={}).json()
    entry = next(e for e in entries if e["name"] == "escaping")
    assert entry["state"] == "FAILED" and "escapes model directory" in entry["reason"], entry
    assert httpx.get(server.http + "/v2/models/escaping/ready").status_code != 200


def test_a_plain_model_is_not_a_policy(server: RunningServer) -> None:
    with PolicyClient(server.grpc) as client, pytest.raises(grpc.RpcError) as caught:
        client.act("linear", np.zeros(4, np.float32))
    error: Any = caught.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "without a policy description" in error.details() and "describe-policy" in error.details()
