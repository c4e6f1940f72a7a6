"""``RestClient.infer`` sends each array as the datatype the model's metadata gives its input: safe conversions are
made (float64 -> FP32, integers -> floats, integers into a narrower type that holds them), lossy ones refused before
anything is sent, and outputs come back in their own datatypes. Against a real server and ONNX Runtime."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from odetoode.client import RestClient, RestError
from odetoode.client.rest import conform
from odetoode.testing.models import OBS, add_policy
from odetoode.testing.servers import RunningServer, running_server


def counts_graph() -> onnx.GraphProto:
    """``ids`` INT32 [N, 3] and ``half`` FP16 [N, 3] -> ``total`` FP32 [N] (the sum of both, as floats) and ``idsum``
    INT64 [N] (the sum of the ids)."""
    return helper.make_graph(
        [helper.make_node("Cast", ["ids"], ["ids_f"], to=TensorProto.FLOAT),
         helper.make_node("Cast", ["half"], ["half_f"], to=TensorProto.FLOAT),
         helper.make_node("Add", ["ids_f", "half_f"], ["both"]),
         helper.make_node("ReduceSum", ["both", "axis"], ["total"], keepdims=0),
         helper.make_node("Cast", ["ids"], ["ids_l"], to=TensorProto.INT64),
         helper.make_node("ReduceSum", ["ids_l", "axis"], ["idsum"], keepdims=0)],
        "counts",
        [helper.make_tensor_value_info("ids", TensorProto.INT32, ["N", 3]),
         helper.make_tensor_value_info("half", TensorProto.FLOAT16, ["N", 3])],
        [helper.make_tensor_value_info("total", TensorProto.FLOAT, ["N"]),
         helper.make_tensor_value_info("idsum", TensorProto.INT64, ["N"])],
        [numpy_helper.from_array(np.array([1]), "axis")],
    )  # fmt: skip


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    root = tmp_path_factory.mktemp("client")
    add_policy(root, "policy", 1)
    (root / "counts" / "1").mkdir(parents=True)
    model = helper.make_model(counts_graph(), opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(root / "counts" / "1" / "model.onnx"))
    with running_server(root) as running:
        yield running


def direct(server: RunningServer, model: str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    path = server.server.settings.repository / model / "1" / "model.onnx"
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)


def test_float64_and_integer_arrays_are_sent_as_fp32(server: RunningServer) -> None:
    x = np.random.default_rng(0).normal(size=(3, OBS))  # float64, as numpy makes them
    (expected,) = direct(server, "policy", {"observation": x.astype(np.float32)})
    with RestClient(server.http) as client:
        assert client.input_datatypes("policy") == {"observation": "FP32"}
        action = client.infer("policy", {"observation": x})["action"]
        assert action.dtype == np.float32 and action.shape == (3, 6)
        np.testing.assert_allclose(action, expected, atol=1e-6)
        ints = np.arange(2 * OBS).reshape(2, OBS) % 5 - 2
        (expected,) = direct(server, "policy", {"observation": ints.astype(np.float32)})
        np.testing.assert_allclose(client.infer("policy", {"observation": ints})["action"], expected, atol=1e-6)


def test_integers_narrow_when_they_fit_and_outputs_keep_their_datatypes(server: RunningServer) -> None:
    ids = np.array([[1, 2, 3], [-4, 5, 600]])  # int64 into INT32
    half = np.array([[0.5, 0.25, 1.0], [2.0, -1.0, 0.0]])  # float64 into FP16
    total, idsum = direct(server, "counts", {"ids": ids.astype(np.int32), "half": half.astype(np.float16)})
    with RestClient(server.http) as client:
        out = client.infer("counts", {"ids": ids, "half": half})
    assert out["idsum"].dtype == np.int64 and out["idsum"].tolist() == idsum.tolist() == [6, 601]
    assert out["total"].dtype == np.float32
    np.testing.assert_allclose(out["total"], total, atol=1e-6)


@pytest.mark.parametrize(("inputs", "error", "message"), [
    ({"ids": np.ones((1, 3)), "half": np.ones((1, 3))}, TypeError,
     "input 'ids' is INT32; got a float64 array: converting floats to integers would drop their fractions"),
    ({"ids": np.full((1, 3), 2**40), "half": np.ones((1, 3))}, ValueError,
     "input 'ids' is INT32; got a int64 array: its values 1099511627776..1099511627776 do not fit INT32"),
    ({"ids": np.ones((1, 3), np.int32), "half": np.full((1, 3), 1e6)}, ValueError,
     "input 'half' is FP16; got a float64 array: some finite values are beyond FP16's range"),
    ({"ids": np.array([["1", "2", "3"]]), "half": np.ones((1, 3))}, TypeError,
     "input 'ids' is INT32; got a <U1 array: converting it would lose information"),
])  # fmt: skip
def test_lossy_conversions_are_refused_before_sending(
    server: RunningServer, inputs: dict[str, np.ndarray], error: type[Exception], message: str
) -> None:
    with RestClient(server.http) as client:
        requests = server.server.metrics.registry.get_sample_value(
            "odetoode_requests_total", {"model": "counts", "version": "1", "protocol": "rest"}
        )
        with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
            client.infer("counts", inputs)
        after = server.server.metrics.registry.get_sample_value(
            "odetoode_requests_total", {"model": "counts", "version": "1", "protocol": "rest"}
        )
        assert after == requests  # nothing reached the model


def test_the_server_still_names_what_the_client_cannot_know(server: RunningServer) -> None:
    with RestClient(server.http) as client:
        with pytest.raises(RestError, match="HTTP 404: unknown model 'nobody'"):
            client.infer("nobody", {"x": np.zeros((1, 2))})
        with pytest.raises(RestError, match="unknown input 'obs'"):
            client.infer("policy", {"obs": np.zeros((1, OBS))})


def test_conform_rules() -> None:
    def dtype_after(array: np.ndarray, datatype: str) -> np.dtype[Any]:
        return conform(array, datatype, "x").dtype

    assert dtype_after(np.array([True, False]), "FP32") == np.float32
    assert dtype_after(np.array([True, False]), "INT8") == np.int8
    assert dtype_after(np.arange(3, dtype=np.uint8), "INT32") == np.int32
    assert dtype_after(np.arange(3, dtype=np.float32), "FP64") == np.float64
    assert conform(np.array(["a"]), "BYTES", "x").dtype.kind == "U"
    assert conform(np.zeros(2), None, "x").dtype == np.float64  # an input the model lacks: the server says so
    same = np.zeros(3, np.float32)
    assert conform(same, "FP32", "x") is same
    refused = [
        (np.array([70000]), "FP16", ValueError),
        (np.array([-1]), "UINT8", ValueError),
        (np.array([1, 0]), "BOOL", TypeError),
        (np.array([0.5]), "UINT8", TypeError),
        (np.zeros(2), "BYTES", TypeError),
        (np.zeros(2, complex), "FP64", TypeError),
    ]
    for array, datatype, error in refused:
        with pytest.raises(error, match="input 'x'"):
            conform(array, datatype, "x")
    assert conform(np.array([np.inf, np.nan]), "FP32", "x").dtype == np.float32  # non-finite stays what it was
