"""Conformance with clients we did not write: ``tritonclient.grpc`` and ``tritonclient.http`` (and their ``aio``
variants) against a live server, plus plain JSON over httpx as curl would send it.

Every call's outputs must equal onnxruntime run directly on the model file (within 1e-6). tritonclient imports beside
our stubs in one process because those register package ``inference`` in a private descriptor pool
(``odetoode/proto/pool.py``).

Known differences from Triton, pinned here so that a change is noticed:

- REST model readiness of an unknown model answers 404 (``tritonclient.http`` maps any non-200 to False);
- the trace, logging and shared-memory extensions are not implemented (and not advertised); statistics are
  (tests/service/test_statistics.py).
"""

from __future__ import annotations

import asyncio
import json
import queue
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcclient_aio
import tritonclient.http as httpclient
import tritonclient.http.aio as httpclient_aio
from tritonclient.grpc import model_config_pb2 as triton_config_pb
from tritonclient.utils import InferenceServerException

from odetoode.testing.servers import RunningServer, running_server

pytestmark = pytest.mark.timeout(120)

ATOL = 1e-6
PROTOCOLS = ("grpc", "http")
NOT_FOUND = {"grpc": "StatusCode.NOT_FOUND", "http": "404"}
INVALID = {"grpc": "StatusCode.INVALID_ARGUMENT", "http": "400"}
UNAVAILABLE = {"grpc": "StatusCode.UNAVAILABLE", "http": "503"}
FORBIDDEN = {"grpc": "StatusCode.PERMISSION_DENIED", "http": "403"}

Reference = Callable[[str, str, np.ndarray], dict[str, np.ndarray]]
Client = grpcclient.InferenceServerClient | httpclient.InferenceServerClient


# -- fixtures and helpers -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reference(model_repo: Path) -> Reference:
    """``(model, version, input) -> {output name: array}`` from onnxruntime on the model file itself."""
    sessions: dict[tuple[str, str], ort.InferenceSession] = {}

    def run(model: str, version: str, x: np.ndarray) -> dict[str, np.ndarray]:
        if (model, version) not in sessions:
            path = model_repo / model / version / "model.onnx"
            sessions[model, version] = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        session = sessions[model, version]
        names = [o.name for o in session.get_outputs()]
        return dict(zip(names, session.run(names, {session.get_inputs()[0].name: x}), strict=True))

    return run


def http_url(server: RunningServer) -> str:
    return server.http.removeprefix("http://")


def connect(protocol: str, server: RunningServer, **kwargs: Any) -> Client:
    if protocol == "grpc":
        return grpcclient.InferenceServerClient(server.grpc, **kwargs)
    return httpclient.InferenceServerClient(http_url(server), **kwargs)


@pytest.fixture(scope="module")
def grpc_client(server: RunningServer) -> Iterator[grpcclient.InferenceServerClient]:
    client = grpcclient.InferenceServerClient(server.grpc)
    yield client
    client.close()


@pytest.fixture(scope="module")
def http_client(server: RunningServer) -> Iterator[httpclient.InferenceServerClient]:
    client = httpclient.InferenceServerClient(http_url(server), concurrency=4)
    yield client
    client.close()


@pytest.fixture(params=PROTOCOLS)
def client(request: pytest.FixtureRequest) -> Client:
    """Each test that takes ``client`` runs once per protocol."""
    return request.getfixturevalue(f"{request.param}_client")  # type: ignore[no-any-return]


def protocol_of(client: Client) -> str:
    return "grpc" if isinstance(client, grpcclient.InferenceServerClient) else "http"


def observations(batch: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(batch, 17)).astype(np.float32)


def images(batch: int = 2, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).uniform(size=(batch, 1, 28, 28)).astype(np.float32)


def grpc_input(name: str, x: np.ndarray) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput(name, list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return tensor


def http_input(name: str, x: np.ndarray, binary: bool = True) -> httpclient.InferInput:
    tensor = httpclient.InferInput(name, list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary)
    return tensor


def make_input(protocol: str, name: str, x: np.ndarray) -> Any:
    return grpc_input(name, x) if protocol == "grpc" else http_input(name, x)


def assert_same(actual: np.ndarray | None, expected: np.ndarray) -> None:
    assert actual is not None
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, rtol=0, atol=ATOL)


def raises_status(expected: dict[str, str], protocol: str, call: Callable[[], Any]) -> InferenceServerException:
    """Runs ``call`` and returns the InferenceServerException it raised, checking its ``status()``."""
    with pytest.raises(InferenceServerException) as info:
        call()
    assert info.value.status() == expected[protocol], info.value
    return info.value


def tensor_shape(spec: Any) -> tuple[str, str, list[int]]:
    """(name, datatype, shape) of a tensor in a metadata answer: a dict over HTTP, a message over gRPC."""
    if isinstance(spec, dict):
        return spec["name"], spec["datatype"], [int(d) for d in spec["shape"]]
    return spec.name, spec.datatype, list(spec.shape)


# -- health, metadata, configuration, repository index ------------------------------------------------------------


def test_liveness_and_readiness(client: Client) -> None:
    assert client.is_server_live() is True
    assert client.is_server_ready() is True
    assert client.is_model_ready("policy") is True
    assert client.is_model_ready("policy", "1") is True
    assert client.is_model_ready("policy", "2") is True
    assert client.is_model_ready("digits", "1") is True


def test_readiness_of_unknown_models(grpc_client: grpcclient.InferenceServerClient, http_client: Any) -> None:
    # tritonclient.http turns any non-200 into False; the server answers 404 for what it does not know.
    assert http_client.is_model_ready("nosuch") is False
    assert http_client.is_model_ready("policy", "7") is False
    # Over gRPC, as Triton, an unknown model or version is simply not ready.
    assert grpc_client.is_model_ready("nosuch") is False
    assert grpc_client.is_model_ready("policy", "7") is False


def test_server_metadata(client: Client) -> None:
    meta = client.get_server_metadata()
    if protocol_of(client) == "grpc":
        name, version, extensions = meta.name, meta.version, list(meta.extensions)
    else:
        name, version, extensions = meta["name"], meta["version"], meta["extensions"]
    assert name == "odetoode" and version
    implemented = {"binary_tensor_data", "classification", "model_repository", "model_configuration", "statistics"}
    assert implemented <= set(extensions)  # classification: tests/service/test_classification.py
    # Extensions the server does not implement are not advertised (see test_unimplemented_extensions_fail_cleanly).
    assert not {"trace", "logging", "system_shared_memory", "cuda_shared_memory"} & set(extensions)


@pytest.mark.parametrize("version", ["", "1", "2"])
def test_policy_metadata(client: Client, version: str) -> None:
    meta = client.get_model_metadata("policy", version)
    as_dict = isinstance(meta, dict)
    name = meta["name"] if as_dict else meta.name
    versions = meta["versions"] if as_dict else list(meta.versions)
    platform = meta["platform"] if as_dict else meta.platform
    inputs = meta["inputs"] if as_dict else meta.inputs
    outputs = meta["outputs"] if as_dict else meta.outputs
    assert (name, versions, platform) == ("policy", ["1", "2"], "onnxruntime_onnx")
    assert [tensor_shape(t) for t in inputs] == [("observation", "FP32", [-1, 17])]
    assert [tensor_shape(t) for t in outputs] == [("action", "FP32", [-1, 6])]


def test_classifier_metadata(client: Client) -> None:
    meta = client.get_model_metadata("digits", "1")
    inputs = meta["inputs"] if isinstance(meta, dict) else meta.inputs
    outputs = meta["outputs"] if isinstance(meta, dict) else meta.outputs
    assert [tensor_shape(t) for t in inputs] == [("image", "FP32", [-1, 1, 28, 28])]
    assert [tensor_shape(t) for t in outputs] == [("logits", "FP32", [-1, 10]), ("probabilities", "FP32", [-1, 10])]


def test_grpc_metadata_as_json(grpc_client: grpcclient.InferenceServerClient) -> None:
    # as_json goes through protobuf's JSON mapping (int64 as strings): the stock way many users read answers.
    meta = grpc_client.get_model_metadata("digits", as_json=True)
    assert meta["name"] == "digits" and meta["versions"] == ["1"]
    assert [tensor_shape(t) for t in meta["outputs"]][1] == ("probabilities", "FP32", [-1, 10])


@pytest.mark.parametrize("version", ["", "1"])
def test_model_config(client: Client, version: str) -> None:
    config = client.get_model_config("policy", version)
    if protocol_of(client) == "grpc":
        c = config.config
        assert (c.name, c.platform, c.backend, c.max_batch_size) == ("policy", "onnxruntime_onnx", "onnxruntime", 256)
        assert [(t.name, t.data_type, list(t.dims)) for t in c.input] == [
            ("observation", triton_config_pb.TYPE_FP32, [17])
        ]
        assert [(t.name, t.data_type, list(t.dims)) for t in c.output] == [("action", triton_config_pb.TYPE_FP32, [6])]
        assert c.parameters["version"].string_value == (version or "2")
        assert c.parameters["odetoode.arch"].string_value == "iso-odetoode"
    else:
        assert (config["name"], config["platform"], config["max_batch_size"]) == ("policy", "onnxruntime_onnx", 256)
        assert config["input"] == [{"name": "observation", "data_type": "TYPE_FP32", "dims": [17]}]
        assert config["output"] == [{"name": "action", "data_type": "TYPE_FP32", "dims": [6]}]
        assert config["version"] == (version or "2")
        assert config["odetoode"]["arch"] == "iso-odetoode"


def index_of(client: Client) -> set[tuple[str, str, str]]:
    index = client.get_model_repository_index()
    if protocol_of(client) == "grpc":
        return {(m.name, m.version, m.state) for m in index.models}
    return {(m["name"], m.get("version", ""), m["state"]) for m in index}


def test_repository_index(client: Client) -> None:
    assert index_of(client) == {("digits", "1", "READY"), ("policy", "1", "READY"), ("policy", "2", "READY")}


# -- inference ----------------------------------------------------------------------------------------------------


def test_grpc_infer_policy_and_classifier(grpc_client: grpcclient.InferenceServerClient, reference: Reference) -> None:
    x = observations()
    result = grpc_client.infer("policy", [grpc_input("observation", x)], request_id="p-1")
    response = result.get_response()
    assert (response.model_name, response.model_version, response.id) == ("policy", "2", "p-1")
    assert [(o.name, o.datatype, list(o.shape)) for o in response.outputs] == [("action", "FP32", [3, 6])]
    assert_same(result.as_numpy("action"), reference("policy", "2", x)["action"])

    im = images()
    result = grpc_client.infer("digits", [grpc_input("image", im)])
    expected = reference("digits", "1", im)
    assert_same(result.as_numpy("logits"), expected["logits"])
    assert_same(result.as_numpy("probabilities"), expected["probabilities"])


def test_infer_with_model_version(client: Client, reference: Reference) -> None:
    x = observations(seed=3)
    v1, v2 = reference("policy", "1", x)["action"], reference("policy", "2", x)["action"]
    assert not np.allclose(v1, v2, atol=1e-3)  # the versions differ, so routing is visible in the numbers
    protocol = protocol_of(client)
    for version, expected in (("1", v1), ("2", v2)):
        result = client.infer("policy", [make_input(protocol, "observation", x)], model_version=version)
        response = result.get_response()
        assert (response.model_version if protocol == "grpc" else response["model_version"]) == version
        assert_same(result.as_numpy("action"), expected)


def test_infer_a_subset_of_outputs(client: Client, reference: Reference) -> None:
    protocol = protocol_of(client)
    im = images(batch=3, seed=4)
    requested = (grpcclient if protocol == "grpc" else httpclient).InferRequestedOutput("probabilities")
    result = client.infer("digits", [make_input(protocol, "image", im)], outputs=[requested])
    assert result.get_output("logits") is None and result.as_numpy("logits") is None
    assert_same(result.as_numpy("probabilities"), reference("digits", "1", im)["probabilities"])


@pytest.mark.parametrize("binary_in", [True, False], ids=["in-binary", "in-json"])
@pytest.mark.parametrize("binary_out", [True, False, None], ids=["out-binary", "out-json", "out-default"])
def test_http_binary_and_json_tensors(
    http_client: httpclient.InferenceServerClient, reference: Reference, binary_in: bool, binary_out: bool | None
) -> None:
    im = images(seed=5)
    outputs = (
        None
        if binary_out is None
        else [httpclient.InferRequestedOutput(n, binary_data=binary_out) for n in ("logits", "probabilities")]
    )
    result = http_client.infer("digits", [http_input("image", im, binary_in)], outputs=outputs, request_id="d-1")
    response = result.get_response()
    assert (response["model_name"], response["model_version"], response["id"]) == ("digits", "1", "d-1")
    expected = reference("digits", "1", im)
    for name in ("logits", "probabilities"):
        entry = result.get_output(name)
        assert entry["datatype"] == "FP32" and entry["shape"] == [2, 10]
        # Without requested outputs tritonclient asks for binary_data_output, so the default is binary too.
        assert ("data" in entry) is (binary_out is False)
        assert ("binary_data_size" in entry.get("parameters", {})) is (binary_out is not False)
        assert_same(result.as_numpy(name), expected[name])


def test_http_mixed_binary_and_json_outputs(
    http_client: httpclient.InferenceServerClient, reference: Reference
) -> None:
    x = observations(batch=4, seed=6)
    result = http_client.infer("policy", [http_input("observation", x, binary=False)])
    assert_same(result.as_numpy("action"), reference("policy", "2", x)["action"])

    im = images(seed=7)
    outputs = [
        httpclient.InferRequestedOutput("logits", binary_data=True),
        httpclient.InferRequestedOutput("probabilities", binary_data=False),
    ]
    result = http_client.infer("digits", [http_input("image", im, binary=True)], outputs=outputs)
    assert result.get_output("logits")["parameters"]["binary_data_size"] == 2 * 10 * 4
    assert "data" in result.get_output("probabilities")
    expected = reference("digits", "1", im)
    assert_same(result.as_numpy("logits"), expected["logits"])
    assert_same(result.as_numpy("probabilities"), expected["probabilities"])


def test_grpc_async_infer(grpc_client: grpcclient.InferenceServerClient, reference: Reference) -> None:
    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    inputs = {f"a{i}": observations(batch=i + 1, seed=10 + i) for i in range(4)}
    for request_id, x in inputs.items():
        grpc_client.async_infer(
            "policy",
            [grpc_input("observation", x)],
            callback=lambda result, error: answers.put((result, error)),
            request_id=request_id,
        )
    seen = set()
    for _ in inputs:
        result, error = answers.get(timeout=30)
        assert error is None
        request_id = result.get_response().id
        assert_same(result.as_numpy("action"), reference("policy", "2", inputs[request_id])["action"])
        seen.add(request_id)
    assert seen == set(inputs)


def test_http_async_infer(http_client: httpclient.InferenceServerClient, reference: Reference) -> None:
    inputs = [observations(batch=i + 1, seed=20 + i) for i in range(4)]
    pending = [
        http_client.async_infer("policy", [http_input("observation", x)], model_version="1", request_id=f"h{i}")
        for i, x in enumerate(inputs)
    ]
    for i, (handle, x) in enumerate(zip(pending, inputs, strict=True)):
        result = handle.get_result(timeout=30)
        assert result.get_response()["id"] == f"h{i}"
        assert_same(result.as_numpy("action"), reference("policy", "1", x)["action"])


def test_grpc_stream_in_order_and_survives_a_bad_request(server: RunningServer, reference: Reference) -> None:
    """ModelStreamInfer: answers come back in request order; a bad request yields an error on the callback and the
    requests after it are still answered."""
    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    sent: list[tuple[str, str, np.ndarray | None]] = [
        ("s0", "policy", observations(batch=1, seed=30)),
        ("s1", "digits", images(batch=2, seed=31)),
        ("s2", "policy", observations(batch=2, seed=32)),
        ("bad", "policy", None),
        ("s4", "policy", observations(batch=3, seed=34)),
        ("s5", "digits", images(batch=1, seed=35)),
    ]
    client = grpcclient.InferenceServerClient(server.grpc)
    try:
        client.start_stream(callback=lambda result, error: answers.put((result, error)))
        for request_id, model, x in sent:
            if x is None:  # wrong shape: the server rejects it inside the stream
                tensor = grpc_input("observation", np.zeros((1, 5), np.float32))
            else:
                tensor = grpc_input("observation" if model == "policy" else "image", x)
            client.async_stream_infer(model, [tensor], request_id=request_id)
        client.stop_stream()  # closes the request side and waits for every answer
    finally:
        client.close()
    received = [answers.get(timeout=30) for _ in sent]
    assert answers.empty()
    for (request_id, model, x), (result, error) in zip(sent, received, strict=True):
        if x is None:
            assert result is None and isinstance(error, InferenceServerException)
            assert "inputs[0].shape" in error.message() and "[1, 5]" in error.message()
            continue
        assert error is None, error
        assert result.get_response().id == request_id
        expected = reference(model, "1" if model == "digits" else "2", x)
        for name, array in expected.items():
            assert_same(result.as_numpy(name), array)


def test_compression(server: RunningServer, reference: Reference) -> None:
    x = observations(seed=40)
    expected = reference("policy", "2", x)["action"]
    grpc_c = grpcclient.InferenceServerClient(server.grpc)
    http_c = httpclient.InferenceServerClient(http_url(server))
    try:
        result = grpc_c.infer("policy", [grpc_input("observation", x)], compression_algorithm="gzip")
        assert_same(result.as_numpy("action"), expected)
        for algorithm in ("gzip", "deflate"):
            result = http_c.infer("policy", [http_input("observation", x)], response_compression_algorithm=algorithm)
            assert_same(result.as_numpy("action"), expected)
    finally:
        grpc_c.close()
        http_c.close()


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_http_request_compression(
    http_client: httpclient.InferenceServerClient, reference: Reference, algorithm: str
) -> None:
    x = observations(seed=41)
    result = http_client.infer("policy", [http_input("observation", x)], request_compression_algorithm=algorithm)
    assert_same(result.as_numpy("action"), reference("policy", "2", x)["action"])


def test_aio_clients(server: RunningServer, reference: Reference) -> None:
    x = observations(seed=50)
    expected = reference("policy", "2", x)["action"]

    async def main() -> None:
        async with grpcclient_aio.InferenceServerClient(server.grpc) as g:
            assert await g.is_server_ready() and await g.is_model_ready("policy")
            result = await g.infer("policy", [grpc_input("observation", x)])
            assert_same(result.as_numpy("action"), expected)

            async def requests() -> Any:
                for i in range(3):
                    yield {"model_name": "policy", "inputs": [grpc_input("observation", x[: i + 1])],
                           "request_id": f"aio-{i}"}  # fmt: skip

            ids = []
            async for result, error in g.stream_infer(requests()):
                assert error is None
                ids.append(result.get_response().id)
                assert_same(result.as_numpy("action"), expected[: len(ids)])
            assert ids == ["aio-0", "aio-1", "aio-2"]
        async with httpclient_aio.InferenceServerClient(http_url(server)) as h:
            assert await h.is_server_live() and await h.is_model_ready("digits")
            meta = await h.get_model_metadata("policy")
            assert meta["inputs"][0]["shape"] == [-1, 17]
            result = await h.infer("policy", [http_input("observation", x, binary=False)])
            assert_same(result.as_numpy("action"), expected)

    asyncio.run(main())


# -- errors as the clients surface them ---------------------------------------------------------------------------


def test_unknown_model_and_version(client: Client) -> None:
    protocol = protocol_of(client)
    x = observations(batch=1)
    for call in (
        lambda: client.get_model_metadata("nosuch"),
        lambda: client.get_model_config("nosuch"),
        lambda: client.infer("nosuch", [make_input(protocol, "observation", x)]),
    ):
        error = raises_status(NOT_FOUND, protocol, call)
        assert "unknown model 'nosuch'" in error.message()
    error = raises_status(
        NOT_FOUND, protocol, lambda: client.infer("policy", [make_input(protocol, "observation", x)], model_version="7")
    )
    assert "no version 7" in error.message()
    raises_status(NOT_FOUND, protocol, lambda: client.get_model_metadata("policy", "7"))


def test_invalid_requests(client: Client) -> None:
    protocol = protocol_of(client)
    module = grpcclient if protocol == "grpc" else httpclient
    cases: list[tuple[list[Any], list[Any] | None, str]] = [
        ([make_input(protocol, "observation", np.zeros((2, 16), np.float32))], None, "inputs[0].shape"),
        ([make_input(protocol, "obs", observations(batch=1))], None, "unknown input 'obs'"),
        (
            [make_input(protocol, "observation", observations(batch=1))],
            [module.InferRequestedOutput("value")],
            "unknown output 'value'",
        ),
    ]
    wrong_type = module.InferInput("observation", [1, 17], "FP64")
    wrong_type.set_data_from_numpy(np.zeros((1, 17), np.float64))
    cases.append(([wrong_type], None, "inputs[0].datatype"))
    for inputs, outputs, message in cases:
        error = raises_status(INVALID, protocol, lambda i=inputs, o=outputs: client.infer("policy", i, outputs=o))
        assert message in error.message()


def test_unimplemented_extensions_fail_cleanly(client: Client) -> None:
    """Trace, logging and shared memory are Triton extensions this server does not offer."""
    expected = {"grpc": "StatusCode.UNIMPLEMENTED", "http": "404"}
    protocol = protocol_of(client)
    for call in (
        client.get_trace_settings,
        client.get_log_settings,
        client.get_system_shared_memory_status,
        client.get_cuda_shared_memory_status,
    ):
        raises_status(expected, protocol, call)
    assert client.is_server_ready()


# -- repository load / unload, on a server of its own ------------------------------------------------------------


@pytest.fixture(scope="module")
def explicit_server(model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    root = tmp_path_factory.mktemp("tritonclient") / "models"
    shutil.copytree(model_repo, root)
    with running_server(root, repository_api=True, model_control_mode="explicit") as running:
        yield running


@pytest.mark.parametrize(("unloader", "loader"), [("grpc", "http"), ("http", "grpc")])
def test_unload_and_load(explicit_server: RunningServer, reference: Reference, unloader: str, loader: str) -> None:
    clients = {p: connect(p, explicit_server) for p in PROTOCOLS}
    im = images(seed=60)
    try:
        assert index_of(clients["grpc"]) == index_of(clients["http"])
        assert ("digits", "1", "READY") in index_of(clients["http"])

        clients[unloader].unload_model("digits")
        for protocol, c in clients.items():
            assert c.is_model_ready("digits") is False
            assert c.is_model_ready("policy") is True
            assert ("digits", "1", "READY") not in index_of(c)
            raises_status(
                UNAVAILABLE, protocol, lambda c=c, p=protocol: c.infer("digits", [make_input(p, "image", im)])
            )

        clients[loader].load_model("digits")
        for protocol, c in clients.items():
            assert c.is_model_ready("digits") is True and c.is_model_ready("digits", "1") is True
            assert ("digits", "1", "READY") in index_of(c)
            result = c.infer("digits", [make_input(protocol, "image", im)])
            for name, array in reference("digits", "1", im).items():
                assert_same(result.as_numpy(name), array)
    finally:
        for c in clients.values():
            c.close()


def test_load_and_unload_errors(explicit_server: RunningServer, model_repo: Path) -> None:
    for protocol in PROTOCOLS:
        c = connect(protocol, explicit_server)
        try:
            error = raises_status(NOT_FOUND, protocol, lambda c=c: c.load_model("nosuch"))
            assert "nosuch" in error.message()
            raises_status(NOT_FOUND, protocol, lambda c=c: c.unload_model("nosuch"))
            assert c.is_model_ready("policy") is True
        finally:
            c.close()
    with running_server(model_repo, repository_api=False) as locked:
        for protocol in PROTOCOLS:
            c = connect(protocol, locked)
            try:
                error = raises_status(FORBIDDEN, protocol, lambda c=c: c.unload_model("policy"))
                assert "repository unload is disabled" in error.message()
                raises_status(FORBIDDEN, protocol, lambda c=c: c.load_model("policy"))
                assert c.is_model_ready("policy") is True
            finally:
                c.close()


# -- plain JSON, as curl sends it ---------------------------------------------------------------------------------


def test_curl_style_json(server: RunningServer, reference: Reference) -> None:
    x = observations(batch=2, seed=70)
    body = {
        "id": "curl-1",
        "inputs": [{"name": "observation", "shape": [2, 17], "datatype": "FP32", "data": x.tolist()}],
    }
    headers = {"Content-Type": "application/json"}
    r = httpx.post(server.http + "/v2/models/policy/infer", content=json.dumps(body), headers=headers, timeout=30)
    assert r.status_code == 200 and r.headers["content-type"] == "application/json", r.text
    answer = r.json()
    assert (answer["model_name"], answer["model_version"], answer["id"]) == ("policy", "2", "curl-1")
    (output,) = answer["outputs"]
    assert (output["name"], output["datatype"], output["shape"]) == ("action", "FP32", [2, 6])
    assert_same(np.asarray(output["data"], np.float32).reshape(2, 6), reference("policy", "2", x)["action"])

    body = {"instances": x.tolist()}
    r = httpx.post(server.http + "/v1/models/policy:predict", content=json.dumps(body), headers=headers, timeout=30)
    assert r.status_code == 200, r.text
    assert_same(np.asarray(r.json()["predictions"], np.float32), reference("policy", "2", x)["action"])

    r = httpx.post(server.http + "/v1/models/nosuch:predict", content=json.dumps(body), headers=headers, timeout=30)
    assert r.status_code == 404, r.text
    assert r.json()["error"].startswith("unknown model 'nosuch'; the models served are ") and "'policy'" in r.text
