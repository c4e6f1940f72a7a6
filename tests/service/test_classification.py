"""Triton's classification extension, asked by tritonclient (``class_count``) over HTTP and gRPC of a live server.

The oracle is ONNX Runtime run on the model file itself and ranked with numpy's ``argsort``: every answer's indices
must be its top classes, highest first, its values ONNX Runtime's (within 1e-6), its labels those of ``config.yaml``.
Requests small enough to be answered in the server process and requests over ``bulk_request_bytes`` (answered by a
bulk worker) must answer the same. Models: the fixture digits classifier with and without labels, and small graphs
made here with ``onnx.helper`` for Triton's rules on other ranks and datatypes.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import yaml
from onnx import TensorProto, helper
from tritonclient.utils import InferenceServerException

from odetoode.proto.inference import grpc_service_pb2 as pb
from odetoode.proto.inference import grpc_service_pb2_grpc as pb_grpc
from odetoode.testing.models import add_classifier, add_graph
from odetoode.testing.servers import RunningServer, running_server
from service.classification import MAX_CLASSES_PER_REQUEST

pytestmark = pytest.mark.timeout(120)

PROTOCOLS = ("grpc", "http")
INVALID = {"grpc": "StatusCode.INVALID_ARGUMENT", "http": "400"}
DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
ENTRY = re.compile(r"^(-?\d+\.\d{6}|nan|-?inf):(\d+)(?::(.*))?$")
"""One class as Triton writes a floating-point value: ``<value>:<index>[:<label>]``, the value as C's ``%f``."""
RNG = np.random.default_rng(11)


def write_config(repository: Path, name: str, config: dict[str, Any]) -> None:
    (repository / name / "config.yaml").write_text(yaml.safe_dump(config))


def scores_graph() -> onnx.GraphProto:
    """A batched model with classes of every kind: FP32 ``scores = x`` [N, C] (C variable), INT32
    ``counts = int(x)`` and BOOL ``positive = x > 0``."""
    nodes = [
        helper.make_node("Identity", ["x"], ["scores"]),
        helper.make_node("Cast", ["x"], ["counts"], to=TensorProto.INT32),
        helper.make_node("Greater", ["x", "zero"], ["positive"]),
    ]
    zero = helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])
    return helper.make_graph(
        nodes,
        "scores",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "C"])],
        [
            helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", "C"]),
            helper.make_tensor_value_info("counts", TensorProto.INT32, ["N", "C"]),
            helper.make_tensor_value_info("positive", TensorProto.BOOL, ["N", "C"]),
        ],
        [zero],
    )


def grid_graph() -> onnx.GraphProto:
    """A model without a batch dimension: ``y = x``, FP32 [2, 3] (Triton ranks all six values as one row)."""
    return helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "grid",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
    )


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("classification")
    add_classifier(root, "labelled", 1)
    write_config(root, "labelled", {"labels": {"probabilities": DIGIT_NAMES, "logits": [str(d) for d in range(10)]}})
    add_classifier(root, "plain", 1)
    add_classifier(root, "mislabelled", 1)
    write_config(root, "mislabelled", {"labels": {"probabilities": DIGIT_NAMES[:9]}})
    add_classifier(root, "misnamed", 1)
    write_config(root, "misnamed", {"labels": {"classes": DIGIT_NAMES}})
    add_graph(root, "scores", scores_graph())
    add_graph(root, "grid", grid_graph(), {"labels": {"y": ["a", "b", "c", "d", "e", "f"]}})
    return root


@pytest.fixture(scope="module")
def server(repository: Path) -> Iterator[RunningServer]:
    with running_server(repository, repository_api=True) as running:
        yield running


def client_for(server: RunningServer, protocol: str) -> Any:
    if protocol == "grpc":
        return grpcclient.InferenceServerClient(server.grpc)
    return httpclient.InferenceServerClient(server.http.removeprefix("http://"), network_timeout=60)


def infer(server: RunningServer, protocol: str, model: str, inputs: dict[str, np.ndarray],
          outputs: list[tuple[str, int]], binary: bool = True) -> Any:  # fmt: skip
    """tritonclient's ``infer`` of ``inputs`` asking for ``outputs`` as (name, class_count) pairs."""
    module = grpcclient if protocol == "grpc" else httpclient
    wire = []
    for name, array in inputs.items():
        tensor = module.InferInput(name, list(array.shape), "FP32")
        if protocol == "grpc":
            tensor.set_data_from_numpy(array)
        else:
            tensor.set_data_from_numpy(array, binary_data=binary)
        wire.append(tensor)
    if protocol == "grpc":
        requested = [grpcclient.InferRequestedOutput(name, class_count=k) for name, k in outputs]
    else:
        requested = [httpclient.InferRequestedOutput(name, binary_data=binary, class_count=k) for name, k in outputs]
    client = client_for(server, protocol)
    try:
        return client.infer(model, wire, outputs=requested)
    finally:
        client.close()


def texts(array: np.ndarray) -> list[list[str]]:
    """A BYTES answer as rows of strings (tritonclient gives bytes for binary data, strings for JSON)."""
    rows = array.reshape(array.shape[0], -1) if array.ndim > 1 else array.reshape(1, -1)
    return [[x.decode() if isinstance(x, bytes) else str(x) for x in row] for row in rows]


def oracle(model_file: Path, feeds: dict[str, np.ndarray], output: str) -> np.ndarray:
    return ort.InferenceSession(str(model_file), providers=["CPUExecutionProvider"]).run([output], feeds)[0]


def check_top(answer: np.ndarray, expected: np.ndarray, k: int, labels: list[str] | None) -> None:
    """``answer`` ([rows, k] BYTES) is the top ``k`` of ``expected`` ([rows, n], ONNX Runtime's values) per row."""
    assert answer.shape == (expected.shape[0], k)
    order = np.argsort(-expected.astype(np.float64), axis=1, kind="stable")[:, :k]
    for row, (entries, top) in enumerate(zip(texts(answer), order, strict=True)):
        parsed = [ENTRY.fullmatch(entry) for entry in entries]
        assert all(parsed), entries
        assert [int(m[2]) for m in parsed if m] == top.tolist(), (row, entries)
        values = [float(m[1]) for m in parsed if m]
        assert np.allclose(values, expected[row, top], atol=1e-6, rtol=0)
        assert [m[3] for m in parsed if m] == ([labels[i] for i in top] if labels else [None] * k)


def images(rows: int) -> np.ndarray:
    return RNG.random((rows, 1, 28, 28), dtype=np.float32)


# -- the top classes, with and without labels --------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_top_classes_with_labels(server: RunningServer, repository: Path, protocol: str) -> None:
    x = images(4)
    result = infer(server, protocol, "labelled", {"image": x}, [("probabilities", 3), ("logits", 0)])
    model_file = repository / "labelled" / "1" / "model.onnx"
    check_top(result.as_numpy("probabilities"), oracle(model_file, {"image": x}, "probabilities"), 3, DIGIT_NAMES)
    # an output asked for without class_count keeps its values
    logits = result.as_numpy("logits")
    assert logits.dtype == np.float32
    assert np.allclose(logits, oracle(model_file, {"image": x}, "logits"), atol=1e-6)
    meta = result.get_output("probabilities")
    datatype, shape = (meta.datatype, list(meta.shape)) if protocol == "grpc" else (meta["datatype"], meta["shape"])
    assert (datatype, shape) == ("BYTES", [4, 3])


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_top_classes_without_labels_are_value_and_index(server: RunningServer, repository: Path, protocol: str) -> None:
    x = images(3)
    result = infer(server, protocol, "plain", {"image": x}, [("logits", 10)])
    expected = oracle(repository / "plain" / "1" / "model.onnx", {"image": x}, "logits")
    check_top(result.as_numpy("logits"), expected, 10, None)


def test_json_answer_is_the_same_strings(server: RunningServer, repository: Path) -> None:
    """REST without binary data: the classes travel as JSON strings, and a second labelled output gets its own."""
    x = images(2)
    result = infer(server, "http", "labelled", {"image": x}, [("logits", 2), ("probabilities", 1)], binary=False)
    model_file = repository / "labelled" / "1" / "model.onnx"
    check_top(result.as_numpy("logits"), oracle(model_file, {"image": x}, "logits"), 2, [str(d) for d in range(10)])
    check_top(result.as_numpy("probabilities"), oracle(model_file, {"image": x}, "probabilities"), 1, DIGIT_NAMES)


def test_curl_request_as_in_tritons_documentation(server: RunningServer) -> None:
    """The extension's own example, plain JSON: the integer output of [1.1, 3.3, 0.5, 2.4] is [1, 3, 0, 2], so its
    top two are index 1 then 3 (ties: the lower index first), written as integers."""
    body = {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1.1, 3.3, 0.5, 2.4]}],
        "outputs": [{"name": "scores", "parameters": {"classification": 2}},
                    {"name": "counts", "parameters": {"classification": 4}}],
    }  # fmt: skip
    r = httpx.post(f"{server.http}/v2/models/scores/infer", json=body)
    assert r.status_code == 200, r.text
    outputs = {o["name"]: o for o in r.json()["outputs"]}
    assert outputs["scores"]["datatype"] == "BYTES" and outputs["scores"]["shape"] == [1, 2]
    assert outputs["scores"]["data"] == [f"{np.float32(3.3):f}:1", f"{np.float32(2.4):f}:3"]
    assert outputs["counts"]["data"] == ["3:1", "2:3", "1:0", "0:2"]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_model_without_batch_dimension_ranks_the_whole_output(server: RunningServer, protocol: str) -> None:
    """Triton's rule for a model without a batch dimension: its whole output is one row of classes, answered [k],
    indices row-major over all of it, labels by that index."""
    x = RNG.standard_normal((2, 3)).astype(np.float32)
    result = infer(server, protocol, "grid", {"x": x}, [("y", 4)])
    answer = result.as_numpy("y")
    assert answer.shape == (4,)
    check_top(answer.reshape(1, 4), x.reshape(1, 6), 4, ["a", "b", "c", "d", "e", "f"])


# -- what is refused -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_more_classes_than_the_output_has_is_refused(server: RunningServer, protocol: str) -> None:
    with pytest.raises(InferenceServerException) as info:
        infer(server, protocol, "labelled", {"image": images(1)}, [("logits", 0), ("probabilities", 11)])
    assert INVALID[protocol] in str(info.value.status())
    assert "outputs[1].parameters.classification: 11 classes asked, output 'probabilities' has 10" in str(info.value)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_more_class_strings_than_a_request_may_ask_for_are_refused_before_computing(
    server: RunningServer, protocol: str
) -> None:
    """A small body of many rows asking for many classes each would make the event loop build that many strings: the
    product is bounded, refused from the declared rows before anything runs."""
    rows = MAX_CLASSES_PER_REQUEST // 64 + 1
    with pytest.raises(InferenceServerException) as info:
        infer(server, protocol, "scores", {"x": RNG.standard_normal((rows, 64)).astype(np.float32)}, [("scores", 64)])
    assert {"grpc": "StatusCode.RESOURCE_EXHAUSTED", "http": "413"}[protocol] in str(info.value.status())
    assert f"{64 * rows} strings, more than one request may ask for ({MAX_CLASSES_PER_REQUEST})" in str(info.value)
    answer = infer(server, protocol, "scores", {"x": RNG.standard_normal((rows - 1, 64)).astype(np.float32)},
                   [("scores", 64)])  # fmt: skip
    assert answer.as_numpy("scores").shape == (rows - 1, 64)


def raw_grpc(server: RunningServer, request: pb.ModelInferRequest) -> grpc.RpcError:
    with grpc.insecure_channel(server.grpc) as channel, pytest.raises(grpc.RpcError) as info:
        pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
    return info.value


@pytest.mark.parametrize("count", [0, -1, 2.0, "3", True])
def test_a_count_that_is_not_a_positive_whole_number_is_refused(server: RunningServer, count: Any) -> None:
    body = {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}],
        "outputs": [{"name": "scores", "parameters": {"classification": count}}],
    }
    r = httpx.post(f"{server.http}/v2/models/scores/infer", json=body)
    assert r.status_code == 400
    assert r.json()["error"].startswith("outputs[0].parameters.classification: expected a whole number"), r.text

    request = pb.ModelInferRequest(model_name="scores")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 4])
    request.raw_input_contents.append(np.arange(4, dtype=np.float32).tobytes())
    parameter = request.outputs.add(name="scores").parameters["classification"]
    field = {bool: "bool_param", int: "int64_param", float: "double_param", str: "string_param"}[type(count)]
    setattr(parameter, field, count)
    error = raw_grpc(server, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (error.details() or "").startswith("outputs[0].parameters.classification: expected a whole number")


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_variable_class_count_is_checked_against_the_computed_output(server: RunningServer, protocol: str) -> None:
    """``scores`` is [N, C] with C variable: a count is checked once the output exists (C = 4 here)."""
    x = np.asarray([[0.5, -1.0, 2.0, 0.25]], np.float32)
    check_top(infer(server, protocol, "scores", {"x": x}, [("scores", 4)]).as_numpy("scores"), x, 4, None)
    with pytest.raises(InferenceServerException) as info:
        infer(server, protocol, "scores", {"x": x}, [("scores", 5)])
    assert INVALID[protocol] in str(info.value.status())
    assert "outputs[0].parameters.classification: 5 classes asked, output 'scores' has 4" in str(info.value)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_an_output_without_an_order_is_refused(server: RunningServer, protocol: str) -> None:
    with pytest.raises(InferenceServerException) as info:
        infer(server, protocol, "scores", {"x": np.ones((1, 3), np.float32)}, [("positive", 1)])
    assert INVALID[protocol] in str(info.value.status())
    assert "outputs[0].parameters.classification: output 'positive' is BOOL" in str(info.value)


def test_labels_that_do_not_fit_the_model_fail_its_load(server: RunningServer) -> None:
    index = {e["name"]: e for e in httpx.post(f"{server.http}/v2/repository/index", json={}).json()}
    assert index["mislabelled"]["state"] == "FAILED"
    assert index["mislabelled"]["reason"].startswith(
        "mislabelled/config.yaml: labels.probabilities: 9 labels, but output 'probabilities' (shape [-1, 10]) has 10 "
        "classes per row"
    )
    assert index["misnamed"]["state"] == "FAILED"
    assert index["misnamed"]["reason"].startswith(
        "misnamed/config.yaml: labels.classes: the model has no output 'classes'; its outputs are"
    )
    assert index["labelled"]["state"] == "READY" and index["plain"]["state"] == "READY"


# -- the bulk workers and the model configuration --------------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_bulk_request_answers_the_same(server: RunningServer, repository: Path, protocol: str) -> None:
    """64 images (200 KB of binary data) are over ``bulk_request_bytes`` (64 KiB): a bulk worker answers, with the
    labels it got from the server, what the server answers for the same rows sent in small requests."""
    x = images(64)
    before = server.server.bulk.jobs
    large = infer(server, protocol, "labelled", {"image": x}, [("probabilities", 3)]).as_numpy("probabilities")
    assert server.server.bulk.jobs == before + 1
    small = np.concatenate([
        infer(server, protocol, "labelled", {"image": part}, [("probabilities", 3)]).as_numpy("probabilities")
        for part in np.array_split(x, 8)
    ])  # fmt: skip
    assert server.server.bulk.jobs == before + 1
    expected = oracle(repository / "labelled" / "1" / "model.onnx", {"image": x}, "probabilities")
    check_top(large, expected, 3, DIGIT_NAMES)
    check_top(small, expected, 3, DIGIT_NAMES)
    assert [[e.split(":", 1)[1] for e in row] for row in texts(large)] == [
        [e.split(":", 1)[1] for e in row] for row in texts(small)
    ]


def test_bulk_worker_takes_new_labels_with_the_unchanged_file(tmp_path: Path) -> None:
    """``config.yaml`` edited, the model file untouched: the server reloads the version, and the bulk worker -- which
    opened the file with the old labels -- answers with the new ones too, as the server does."""
    add_classifier(tmp_path, "digits", 1)
    write_config(tmp_path, "digits", {"labels": {"probabilities": DIGIT_NAMES}})
    x = images(64)

    def top_labels(server: RunningServer, rows: np.ndarray) -> list[str]:
        answer = infer(server, "http", "digits", {"image": rows}, [("probabilities", 1)]).as_numpy("probabilities")
        return [row[0].split(":")[2] for row in texts(answer)]

    with running_server(tmp_path, bulk_workers=1) as server:
        first = top_labels(server, x)
        renamed = [f"digit {d}" for d in range(10)]
        write_config(tmp_path, "digits", {"labels": {"probabilities": renamed}})
        config = tmp_path / "digits" / "config.yaml"
        os.utime(config, ns=(config.stat().st_atime_ns, config.stat().st_mtime_ns + 10**9))  # a new mtime, surely
        server.call(server.server.repository.reconcile(["digits"]))
        again = top_labels(server, x)
        inline = top_labels(server, x[:2])
        assert server.server.bulk.jobs == 2
    assert set(first) <= set(DIGIT_NAMES)
    assert again == [renamed[DIGIT_NAMES.index(label)] for label in first]
    assert inline == again[:2]


def test_model_configuration_lists_the_labels(server: RunningServer) -> None:
    config = httpx.get(f"{server.http}/v2/models/labelled/config").json()
    outputs = {o["name"]: o for o in config["output"]}
    assert outputs["probabilities"] == {"name": "probabilities", "data_type": "TYPE_FP32", "dims": [10],
                                        "labels": DIGIT_NAMES}  # fmt: skip
    assert outputs["logits"]["labels"] == [str(d) for d in range(10)]
    assert all("labels" not in i for i in config["input"])
    plain = httpx.get(f"{server.http}/v2/models/plain/config").json()
    assert all("labels" not in o for o in plain["output"])
    # gRPC's ModelConfig has no field for inline labels (label_filename names a file): none is made up
    client = grpcclient.InferenceServerClient(server.grpc)
    try:
        grpc_config = client.get_model_config("labelled").config
    finally:
        client.close()
    assert [o.label_filename for o in grpc_config.output] == ["", ""]


def test_server_metadata_advertises_classification(server: RunningServer) -> None:
    assert "classification" in httpx.get(f"{server.http}/v2").json()["extensions"]


def test_bundled_digits_labels_load(tmp_path: Path) -> None:
    """The bundled digits classifier's labels (models/digits/config.yaml) fit it, over both transports."""
    root = Path(__file__).resolve().parents[2] / "models"
    shutil.copytree(root / "digits", tmp_path / "digits")
    x = images(2)
    with running_server(tmp_path) as server:
        for protocol in PROTOCOLS:
            result = infer(server, protocol, "digits", {"image": x}, [("probabilities", 2), ("logits", 2)])
            for name in ("probabilities", "logits"):
                expected = oracle(tmp_path / "digits" / "1" / "model.onnx", {"image": x}, name)
                check_top(result.as_numpy(name), expected, 2, [str(d) for d in range(10)])
