"""The bad-input catalogue: every way a client can get a request wrong, on every protocol, and what it gets back.

Protocols: OIP REST (``/v2/models/{m}/infer``, JSON and the binary extension), OIP gRPC (``ModelInfer`` and
``ModelStreamInfer``), KServe V1 REST (``:predict``) and ``odetoode.v1.PolicyService`` (``Act`` and ``ActStream``, in
both of its stream modes). Each case is one row: the request, the HTTP status or gRPC code it must get (the one
``service/errors.py`` gives that error), and a fragment of the message that names the field. After every row the
same transport must answer a good request -- a bad request never leaves the server or the connection worse off.

Oversized REST bodies are also sent to a server *process*, as a chunked body that would be gigabytes, to check that
the server refuses it without reading it (its ``VmRSS`` stays put and it closes the connection).

Content types: the server reads REST bodies by what they contain, not by ``Content-Type`` (``curl -d`` sends
``application/x-www-form-urlencoded``, and Triton ignores the header too), so a JSON body labelled ``text/plain`` is
served and a ``multipart/form-data`` body is refused as "not valid JSON".
"""

from __future__ import annotations

import gzip
import socket
import time
import urllib.parse
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import orjson
import pytest

from odetoode.proto.inference import grpc_service_pb2 as pb
from odetoode.proto.odetoode.v1 import policy_pb2 as ppb
from odetoode.testing.abuse import unary
from odetoode.testing.bench import rss_mib
from odetoode.testing.clients import OBS, infer_proto, observation_json
from odetoode.testing.servers import RunningServer, ServerProcess, running_server, server_process

LIMIT = 64 * 1024  # --max-request-bytes of the servers in this module
OK = grpc.StatusCode.OK
INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED
MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
MODEL_STREAM_INFER = "/inference.GRPCInferenceService/ModelStreamInfer"
ACT = "/odetoode.v1.PolicyService/Act"
ACT_STREAM = "/odetoode.v1.PolicyService/ActStream"
ZEROS = np.zeros(OBS, "<f4").tobytes()


@pytest.fixture(scope="module")
def server(model_repo: Path) -> Iterator[RunningServer]:
    """A server of this module over the shared repository: small request limit, repository API on (only ever asked
    to load names that do not exist, so what it serves never changes)."""
    with running_server(model_repo, repository_api=True, max_request_bytes=LIMIT) as running:
        yield running


@pytest.fixture(scope="module")
def channel(server: RunningServer) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.grpc, options=[("grpc.max_receive_message_length", 16 * LIMIT)]) as ch:
        yield ch


@pytest.fixture(scope="module")
def process(model_repo: Path) -> Iterator[ServerProcess]:
    with server_process(model_repo, "--max-request-bytes", str(LIMIT), "--model-control-mode", "none") as proc:
        yield proc


# -- request builders ---------------------------------------------------------------------------------------------


def tensor(**overrides: Any) -> dict[str, Any]:
    """The good policy input as JSON, with ``overrides`` (a value of ``...`` removes the member)."""
    t: dict[str, Any] = {"name": "observation", "shape": [1, OBS], "datatype": "FP32", "data": [0.1] * OBS}
    t.update(overrides)
    return {k: v for k, v in t.items() if v is not ...}


def oip(*tensors: dict[str, Any], **members: Any) -> bytes:
    return orjson.dumps({"inputs": list(tensors) or [tensor()], **members})


def binary(id: str, header: dict[str, Any], blob: bytes, status: int, message: str,
           declared: int | None = None) -> Rest:  # fmt: skip
    """A binary-extension case: JSON header then raw tensor bytes."""
    head = orjson.dumps(header)
    length = str(len(head) if declared is None else declared)
    return Rest(id, head + blob, status, message, {"Inference-Header-Content-Length": length})


def nested(depth: int) -> bytes:
    """A JSON document whose tensor data is one number nested ``depth`` lists deep (orjson parses up to 1024)."""
    data = b"[" * depth + b"0.1" + b"]" * depth
    return b'{"inputs":[{"name":"observation","shape":[1,17],"datatype":"FP32","data":' + data + b"}]}"


def gzip_bomb(size: int) -> bytes:
    """``size`` zero bytes, gzip-compressed (about a thousandth of that)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = bytes(1 << 20)
    return b"".join(packer.compress(block) for _ in range(size >> 20)) + packer.flush()


def infer(raw: bytes | None = None, *, typed: list[float] | None = None, model: str = "policy", version: str = "",
          shape: list[int] | None = None, datatype: str = "FP32", name: str = "observation",
          outputs: tuple[str, ...] = ()) -> pb.ModelInferRequest:  # fmt: skip
    """A ModelInferRequest with one input; ``raw`` and/or ``typed`` contents."""
    request = pb.ModelInferRequest(model_name=model, model_version=version)
    t = request.inputs.add(name=name, datatype=datatype, shape=[1, OBS] if shape is None else shape)
    if raw is not None:
        request.raw_input_contents.append(raw)
    if typed is not None:
        t.contents.fp32_contents.extend(typed)
    for out in outputs:
        request.outputs.add(name=out)
    return request


def typed(datatype: str, **contents: list[Any]) -> pb.ModelInferRequest:
    """One policy input with typed ``contents`` (e.g. ``int_contents=[...]``)."""
    request = infer(datatype=datatype)
    for name, values in contents.items():
        getattr(request.inputs[0].contents, name).extend(values)
    return request


def two_raw(request: pb.ModelInferRequest) -> pb.ModelInferRequest:
    request.raw_input_contents.append(ZEROS)
    return request


def two_inputs(first: pb.ModelInferRequest, name: str = "observation") -> pb.ModelInferRequest:
    first.inputs.add(name=name, datatype="FP32", shape=[1, OBS])
    first.raw_input_contents.append(ZEROS)
    return first


# -- the catalogue ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rest:
    id: str
    body: bytes
    status: int
    message: str  # a fragment of the error, naming the field
    headers: dict[str, str] = field(default_factory=dict)
    path: str = "/v2/models/policy/infer"


@dataclass(frozen=True)
class Grpc:
    id: str
    request: Any  # a message, or raw bytes sent as they are
    code: grpc.StatusCode
    message: str
    ends_call: bool = False  # refused before the method sees it (bad bytes, too large): a stream fails as a whole

    def wire(self) -> bytes:
        return self.request if isinstance(self.request, bytes) else self.request.SerializeToString()


# The catalogue is a table: one row per line, as far as the line length allows.
# fmt: off
NAN = np.full(OBS, np.nan, "<f4").tobytes()
INF = np.full(OBS, np.inf, "<f4").tobytes()
BIG = bytes(LIMIT + 1)

REST_OIP = [
    Rest("wrong-shape", oip(tensor(shape=[1, 16], data=[0.1] * 16)), 400, "inputs[0].shape: input 'observation'"),
    Rest("wrong-rank", oip(tensor(shape=[OBS])), 400, "inputs[0].shape"),
    Rest("wrong-dtype", oip(tensor(datatype="FP64")), 400, "inputs[0].datatype: input 'observation' is FP32"),
    Rest("unknown-dtype", oip(tensor(datatype="FLOAT32")), 400, "inputs[0].datatype: 'FLOAT32' is not one of"),
    Rest("dtype-not-string", oip(tensor(datatype=7)), 400, "inputs[0].datatype"),
    Rest("negative-dim", oip(tensor(shape=[-1, OBS])), 400, "inputs[0].shape: dimensions must be non-negative"),
    Rest("huge-dim", oip(tensor(shape=[1, 2**62])), 413, "inputs[0].shape: [1, 4611686018427387904] has"),
    Rest("huge-dims-product", oip(tensor(shape=[2**31, 2**31])), 413, "inputs[0].shape"),
    Rest("empty-with-huge-dims", oip(tensor(shape=[0, 2**62, 2**62], data=[])), 413, "inputs[0].shape: [0, 46"),
    Rest("dim-beyond-int64", oip().replace(b"[1,17]", b"[1,%d]" % 2**64), 400, "inputs[0].shape"),
    Rest("float-dim", oip(tensor(shape=[1, 17.0])), 400, "inputs[0].shape"),
    Rest("string-dim", oip(tensor(shape=["1", "17"])), 400, "inputs[0].shape"),
    Rest("shape-not-list", oip(tensor(shape="1,17")), 400, "inputs[0].shape"),
    Rest("rank-over-16", oip(tensor(shape=[1] * 17)), 400, "inputs[0].shape"),
    Rest("data-too-short", oip(tensor(data=[0.1] * 16)), 400, "inputs[0].data: 16 values for shape [1, 17]"),
    Rest("data-too-long", oip(tensor(data=[0.1] * 18)), 400, "inputs[0].data: 18 values"),
    Rest("data-missing", oip(tensor(data=...)), 400, "inputs[0].data: missing"),
    Rest("data-strings", oip(tensor(data=["0.1"] * OBS)), 400, "inputs[0].data: FP32 tensors take numbers"),
    Rest("data-booleans", oip(tensor(data=[True] * OBS)), 400, "inputs[0].data: FP32 tensors take numbers"),
    Rest("data-null", oip(tensor(data=[None] * OBS)), 400, "inputs[0].data"),
    Rest("data-ragged", oip(tensor(data=[[0.1] * 9, [0.1] * 9])), 400, "inputs[0].data: 18 values"),
    Rest("data-mixed-nesting", oip(tensor(data=[0.1, [0.1] * 16])), 400, "inputs[0].data: nested lists"),
    Rest("data-nested-1000-deep", nested(1000), 400, "inputs[0].data"),
    Rest("data-nested-2000-deep", nested(2000), 400, "request body: not valid JSON"),
    Rest("overflows-fp32", oip(tensor(data=[1e39] * OBS)), 400, "inputs[0].data: values do not fit FP32"),
    Rest("infinity-literal", oip().replace(b"0.1", b"1e400", 1), 400, "request body: not valid JSON"),
    Rest("nan-literal", oip().replace(b"0.1", b"NaN", 1), 400, "request body: not valid JSON"),
    binary("nan-binary", {"inputs": [tensor(data=..., parameters={"binary_data_size": 68})]}, NAN, 400,
         "inputs[0].data: input 'observation' contains NaN"),
    binary("inf-binary", {"inputs": [tensor(data=..., parameters={"binary_data_size": 68})]}, INF, 400,
         "inputs[0].data: input 'observation' contains NaN or infinity"),
    Rest("empty-batch", oip(tensor(shape=[0, OBS], data=[])), 400, "inputs[0].shape: the batch dimension"),
    Rest("no-inputs", b'{"inputs": []}', 400, "inputs: expected a non-empty list"),
    Rest("inputs-missing", b"{}", 400, "inputs: expected a non-empty list"),
    Rest("inputs-not-list", b'{"inputs": {"name": "observation"}}', 400, "inputs: expected a non-empty list"),
    Rest("input-not-object", b'{"inputs": [17]}', 400, "inputs[0]: expected an object"),
    Rest("unknown-input", oip(tensor(name="obs")), 400, "inputs[0].name: unknown input 'obs'"),
    Rest("input-name-not-string", oip(tensor(name=1)), 400, "inputs[0].name: expected a string"),
    Rest("duplicate-input", oip(tensor(), tensor()), 400, "inputs[1].name: input 'observation' is given more"),
    Rest("unknown-output", oip(outputs=[{"name": "q"}]), 400, "outputs[0].name: unknown output 'q'"),
    Rest("outputs-not-list", oip(outputs="action"), 400, "outputs: expected a list"),
    Rest("parameters-nested", oip(parameters={"x": {"y": 1}}), 400, "parameters.x"),
    Rest("parameters-not-object", oip(parameters=[1]), 400, "parameters: expected an object"),
    Rest("id-not-string", oip(id=5), 400, "id: expected a string"),
    binary("raw-and-typed", {"inputs": [tensor(parameters={"binary_data_size": 68})]}, ZEROS, 400,
         "inputs[0].data"),
    binary("binary-size-mismatch", {"inputs": [tensor(data=..., parameters={"binary_data_size": 64})]},
         ZEROS[:64], 400, "inputs[0]: 64 bytes of raw data for shape [1, 17] FP32, expected 68"),
    binary("binary-size-past-end", {"inputs": [tensor(data=..., parameters={"binary_data_size": 999})]},
         ZEROS, 400, "inputs[0].parameters.binary_data_size"),
    binary("binary-size-negative", {"inputs": [tensor(data=..., parameters={"binary_data_size": -1})]},
         ZEROS, 400, "inputs[0].parameters.binary_data_size"),
    binary("binary-bytes-unclaimed", {"inputs": [tensor()]}, ZEROS, 400, "binary data: 68 bytes"),
    binary("header-length-past-end", {"inputs": [tensor()]}, b"", 400, "Inference-Header-Content-Length",
           declared=10**6),
    Rest("header-length-not-int", oip(), 400, "Inference-Header-Content-Length: not an integer",
         {"Inference-Header-Content-Length": "12x"}),
    Rest("malformed-json", b'{"inputs": [', 400, "request body: not valid JSON"),
    Rest("json-array", b"[1, 2]", 400, "request body: expected a JSON object"),
    Rest("invalid-utf8", b'{"inputs": "\xff\xfe"}', 400, "request body: not valid JSON"),
    Rest("empty-body", b"", 400, "inputs: expected a non-empty list"),
    Rest("multipart", b'--b\r\nContent-Disposition: form-data; name="inputs"\r\n\r\n1\r\n--b--\r\n', 400,
         "request body: not valid JSON", {"Content-Type": "multipart/form-data; boundary=b"}),
    Rest("text-plain-garbage", b"observation=0.1", 400, "request body: not valid JSON", {"Content-Type": "text/plain"}),
    Rest("text-plain-json-is-served", oip(), 200, "", {"Content-Type": "text/plain"}),
    Rest("form-urlencoded-json-is-served", oip(), 200, "", {"Content-Type": "application/x-www-form-urlencoded"}),
    Rest("over-limit", oip(tensor(shape=[1000, OBS], data=[0.1] * 17000)), 413, "request body of"),
    Rest("gzip-bomb", gzip_bomb(64 << 20), 413, "decompressed request body exceeds", {"Content-Encoding": "gzip"}),
    Rest("gzip-truncated", gzip.compress(oip())[:-12], 400, "request body: truncated", {"Content-Encoding": "gzip"}),
    Rest("gzip-garbage", b"not gzip at all", 400, "request body: not valid gzip data", {"Content-Encoding": "gzip"}),
    Rest("unknown-encoding", oip(), 400, "Content-Encoding: 'br' is not supported", {"Content-Encoding": "br"}),
    Rest("timeout-not-number", oip(), 400, "Request-Timeout-Ms: not a number", {"Request-Timeout-Ms": "soon"}),
    Rest("timeout-negative", oip(), 400, "Request-Timeout-Ms: must be positive", {"Request-Timeout-Ms": "-5"}),
    Rest("timeout-nan", oip(), 400, "Request-Timeout-Ms", {"Request-Timeout-Ms": "nan"}),
    Rest("timeout-infinite", oip(), 400, "Request-Timeout-Ms", {"Request-Timeout-Ms": "inf"}),
    Rest("timeout-overflows", oip(), 400, "Request-Timeout-Ms", {"Request-Timeout-Ms": "1e400"}),
    Rest("version-not-number", oip(), 400, "model_version: 'abc' is not a version number",
         path="/v2/models/policy/versions/abc/infer"),
    Rest("version-zero", oip(), 400, "model_version: '0'", path="/v2/models/policy/versions/0/infer"),
    Rest("version-negative", oip(), 400, "model_version: '-1'", path="/v2/models/policy/versions/-1/infer"),
    Rest("version-absent", oip(), 404, "model 'policy' has no version 99", path="/v2/models/policy/versions/99/infer"),
    Rest("classifier-given-observation", oip(), 400, "inputs[0].name: unknown input 'observation'",
         path="/v2/models/digits/infer"),
]

KSERVE_V1 = [
    Rest("instances-empty", b'{"instances": []}', 400, "instances: expected a non-empty list"),
    Rest("instances-missing", b'{"rows": [[0.1]]}', 400, "request body: expected one of instances (a list of rows)"),
    Rest("instances-and-inputs", orjson.dumps({"instances": [[0.1] * 17], "inputs": [[0.1] * 17]}), 400,
         "request body: expected one of instances"),
    Rest("inputs-wrong-shape", b'{"inputs": [[0.1]]}', 400, "inputs: expected rows of shape [17]"),
    Rest("instances-not-list", b'{"instances": 0.1}', 400, "instances: expected a non-empty list"),
    Rest("row-too-short", orjson.dumps({"instances": [[0.1] * 16]}), 400,
         "instances: expected rows of shape [17] (a list of them, or one alone), got shape [1, 16]"),
    Rest("rows-irregular", orjson.dumps({"instances": [[0.1] * 17, [0.1] * 16]}), 400, "instances.data"),
    Rest("one-row-alone", orjson.dumps({"instances": [0.1] * 17}), 200, ""),
    Rest("flat-too-short", orjson.dumps({"instances": [0.1] * 16}), 400, "instances: expected rows of shape [17]"),
    Rest("strings", orjson.dumps({"instances": [["0.1"] * 17]}), 400, "instances.data: FP32 tensors take numbers"),
    Rest("objects", orjson.dumps({"instances": [{"observation": [0.1] * 17}]}), 200, ""),
    Rest("objects-unknown-key", orjson.dumps({"instances": [{"obs": [0.1] * 17}]}), 400,
         "instances[0]: expected an object with keys ['observation'], got keys ['obs']"),
    Rest("nested-1000-deep", b'{"instances": ' + b"[" * 1000 + b"0" + b"]" * 1000 + b"}", 400,
         "instances: expected rows of shape [17]"),
    Rest("overflows-fp32", orjson.dumps({"instances": [[1e39] * 17]}), 400, "instances.data: values do not fit FP32"),
    Rest("infinity-literal", b'{"instances": [[1e400' + b", 0" * 16 + b"]]}", 400, "request body: not valid JSON"),
    Rest("malformed-json", b'{"instances": [[0.1,', 400, "request body: not valid JSON"),
    Rest("json-array", b"[[0.1]]", 400, "request body: expected a JSON object"),
    Rest("over-limit", orjson.dumps({"instances": [[0.1] * 17] * 1000}), 413, "request body of"),
    Rest("multipart", b"--b\r\n\r\n1\r\n--b--\r\n", 400, "request body: not valid JSON",
         {"Content-Type": "multipart/form-data; boundary=b"}),
    Rest("timeout-infinite", orjson.dumps({"instances": [[0.1] * 17]}), 400, "Request-Timeout-Ms",
         {"Request-Timeout-Ms": "inf"}),
]
KSERVE_V1 = [Rest(c.id, c.body, c.status, c.message, c.headers, "/v1/models/policy:predict") for c in KSERVE_V1]

GRPC_OIP = [
    Grpc("wrong-shape", infer(ZEROS[:64], shape=[1, 16]), INVALID, "inputs[0].shape: input 'observation' expects"),
    Grpc("wrong-rank", infer(ZEROS, shape=[OBS]), INVALID, "inputs[0].shape"),
    Grpc("wrong-dtype", infer(bytes(136), datatype="FP64"), INVALID, "inputs[0].datatype: input 'observation' is"),
    Grpc("unknown-dtype-raw", infer(ZEROS, datatype="FLOAT32"), INVALID, "inputs[0].datatype: 'FLOAT32' is not"),
    Grpc("unknown-dtype-typed", infer(typed=[0.0] * OBS, datatype="FLOAT32"), INVALID, "inputs[0].datatype"),
    Grpc("empty-dtype", infer(ZEROS, datatype=""), INVALID, "inputs[0].datatype"),
    Grpc("negative-dim", infer(ZEROS, shape=[-1, OBS]), INVALID, "inputs[0].shape: dimensions must be non-negative"),
    Grpc("huge-dim", infer(ZEROS, shape=[1, 2**62]), EXHAUSTED, "inputs[0].shape: [1, 4611686018427387904] has"),
    Grpc("int64-max-dims", infer(ZEROS, shape=[2**63 - 1] * 2), EXHAUSTED, "inputs[0].shape"),
    Grpc("empty-with-huge-dims", infer(b"", shape=[0, 2**62, 2**62]), EXHAUSTED, "inputs[0].shape: [0, 46"),
    Grpc("int64-min-dim", infer(ZEROS, shape=[1, -(2**63)]), INVALID, "inputs[0].shape"),
    Grpc("rank-over-16", infer(ZEROS, shape=[1] * 17), INVALID, "inputs[0].shape"),
    Grpc("raw-too-short", infer(ZEROS[:64]), INVALID, "inputs[0]: 64 bytes of raw data for shape [1, 17] FP32"),
    Grpc("raw-too-long", infer(ZEROS + b"\0"), INVALID, "inputs[0]: 69 bytes of raw data"),
    Grpc("typed-too-short", infer(typed=[0.0] * 16), INVALID, "inputs[0].contents: 16 values for shape [1, 17]"),
    Grpc("typed-in-wrong-field", typed("FP32", int_contents=[0] * OBS), INVALID, "inputs[0].contents: 0 values"),
    Grpc("raw-and-typed", infer(ZEROS, typed=[0.0] * OBS), INVALID,
         "inputs[0].contents: give raw_input_contents or contents, not both"),
    Grpc("raw-count-mismatch", two_raw(infer(ZEROS)), INVALID, "raw_input_contents: 2 entries for 1 inputs"),
    # A datatype the model does not take is refused from the header, before the contents are decoded (the decoders'
    # own errors -- FP16 typed, INT8 overflow, malformed BYTES -- are checked in test_tensors.py).
    Grpc("fp16-typed", infer(typed=[0.0] * OBS, datatype="FP16"), INVALID, "input 'observation' is FP32, got FP16"),
    Grpc("int8-overflow", typed("INT8", int_contents=[1000] * OBS), INVALID, "input 'observation' is FP32, got INT8"),
    Grpc("bytes-malformed", infer(b"\xff\xff\xff\x7f", datatype="BYTES"), INVALID, "'observation' is FP32, got BYTES"),
    Grpc("nan-raw", infer(NAN), INVALID, "inputs[0].data: input 'observation' contains NaN or infinity"),
    Grpc("inf-raw", infer(INF), INVALID, "inputs[0].data: input 'observation' contains NaN or infinity"),
    Grpc("nan-typed", infer(typed=[float("nan")] * OBS), INVALID, "inputs[0].data: input 'observation' contains"),
    Grpc("inf-typed", infer(typed=[0.0] * 16 + [float("-inf")]), INVALID, "inputs[0].data"),
    Grpc("empty-batch", infer(b"", shape=[0, OBS]), INVALID, "inputs[0].shape: the batch dimension must be"),
    Grpc("no-inputs", pb.ModelInferRequest(model_name="policy"), INVALID, "inputs: expected at least one tensor"),
    Grpc("unknown-input", infer(ZEROS, name="obs"), INVALID, "inputs[0].name: unknown input 'obs'"),
    Grpc("duplicate-input", two_inputs(infer(ZEROS)), INVALID, "inputs[1].name: input 'observation' is given"),
    Grpc("unknown-output", infer(ZEROS, outputs=("q",)), INVALID, "outputs[0].name: unknown output 'q'"),
    Grpc("duplicate-output", infer(ZEROS, outputs=("action", "action")), INVALID, "outputs[1].name"),
    Grpc("version-not-number", infer(ZEROS, version="abc"), INVALID, "model_version: 'abc' is not a version number"),
    Grpc("version-zero", infer(ZEROS, version="0"), INVALID, "model_version: '0'"),
    Grpc("version-absent", infer(ZEROS, version="99"), NOT_FOUND, "model 'policy' has no version 99"),
    Grpc("classifier-given-observation", infer(ZEROS, model="digits"), INVALID, "inputs[0].name: unknown input"),
    Grpc("over-limit", infer(BIG, shape=[1, len(BIG) // 4]), EXHAUSTED, "", ends_call=True),
    Grpc("malformed-protobuf", b"\xff\xff\xff\xff garbage", INVALID, "request: not a valid protobuf", ends_call=True),
    Grpc("invalid-utf8-name", b"\n\x02\xff\xfe", INVALID, "request: not a valid protobuf", ends_call=True),
    Grpc("truncated-protobuf", infer(ZEROS).SerializeToString()[:-5], INVALID, "not a valid protobuf", ends_call=True),
]


def act(policy: str = "policy", observation: bytes = ZEROS, **fields: Any) -> ppb.ActRequest:
    return ppb.ActRequest(policy=policy, observation=observation, **fields)


# Observation errors: the same on Act and inside a stream (where they are answered as an ActError).
OBSERVATIONS = [
    Grpc("too-few-values", act(observation=ZEROS[:64]), INVALID, "observation: 16 values, policy 'policy' expects 17"),
    Grpc("too-many-values", act(observation=ZEROS * 2), INVALID, "observation: 34 values"),
    Grpc("values-too-few", act(observation=b"", observation_values=[0.0] * 3), INVALID, "observation: 3 values"),
    Grpc("packed-not-float32", act(observation=ZEROS[:7]), INVALID, "observation: 7 bytes is not a whole number"),
    Grpc("packed-and-values", act(observation_values=[0.0] * OBS), INVALID,
         "observation: give observation (packed) or observation_values, not both"),
    Grpc("empty", act(observation=b""), INVALID, "observation: empty"),
    Grpc("nan-packed", act(observation=NAN), INVALID, "observation"),
    Grpc("inf-values", act(observation=b"", observation_values=[0.0] * 16 + [float("inf")]), INVALID, "observation"),
    Grpc("over-limit", act(observation=BIG), EXHAUSTED, "", ends_call=True),
]
ACT_ONLY = [
    Grpc("no-policy", act(policy=""), INVALID, "policy: required"),
    Grpc("classifier", act(policy="digits", observation=bytes(784 * 4)), INVALID, "'digits' is a classifier"),
    Grpc("version-not-number", act(version="x1"), INVALID, "model_version: 'x1' is not a version number"),
    Grpc("version-absent", act(version="99"), NOT_FOUND, "model 'policy' has no version 99"),
    Grpc("malformed-protobuf", b"\x0a\xff\xff\xff\xff\x0f", INVALID, "request: not a valid protobuf", ends_call=True),
]
# What ends a stream at its first message (the policy and version are resolved there).
STREAM_START = [
    Grpc("no-policy", act(policy=""), INVALID, "policy: required on the first message of a stream"),
    Grpc("unknown-policy", act(policy="nosuch"), NOT_FOUND, "unknown model 'nosuch'"),
    Grpc("classifier", act(policy="digits"), INVALID, "'digits' is a classifier"),
    Grpc("version-absent", act(version="99"), NOT_FOUND, "model 'policy' has no version 99"),
    Grpc("malformed-protobuf", b"\x0a\xff\xff\xff\xff\x0f", INVALID, "request: not a valid protobuf"),
    Grpc("over-limit", act(observation=BIG), EXHAUSTED, ""),
]

# Names a client may put where a model name goes. None of them may reach the file system; each is simply unknown.
NAMES = {
    "dot-dot-slash": "../x",
    "percent-encoded-traversal": "%2e%2e%2f",
    "dot-dot": "..",
    "absolute-path": "/etc/passwd",
    "backslash-traversal": "..\\..\\x",
    "nul": "policy\x00",
    "very-long": "x" * 20_000,
    "very-long-emoji": "🤖" * 2_000,
    "emoji": "🤖",
    "rtl-and-combining": "\u202epolicy\u0301",
    "empty": "",
}
# fmt: on


def ids(cases: list[Any]) -> list[str]:
    return [c.id for c in cases]


# -- helpers ------------------------------------------------------------------------------------------------------


def post(server: RunningServer, case: Rest) -> httpx.Response:
    return httpx.post(server.http + case.path, content=case.body, headers=case.headers, timeout=30)


def stream(channel: grpc.Channel, method: str, wires: list[bytes]) -> tuple[list[bytes], grpc.StatusCode, str]:
    """Sends ``wires`` on a bidirectional stream; the answers and the final status."""
    call = channel.stream_stream(method)(iter(wires), timeout=30)
    answers: list[bytes] = []
    try:
        answers.extend(call)
    except grpc.RpcError as exc:
        return answers, exc.code(), exc.details() or ""
    return answers, OK, ""


def assert_rest_ok(server: RunningServer) -> None:
    r = httpx.post(server.http + "/v2/models/policy/infer", json=observation_json(), timeout=30)
    assert r.status_code == 200, r.text
    r = httpx.post(server.http + "/v1/models/policy:predict", json={"instances": [[0.1] * OBS]}, timeout=30)
    assert r.status_code == 200, r.text


def assert_grpc_ok(channel: grpc.Channel) -> None:
    code, details, answer = unary(channel, MODEL_INFER, infer_proto("policy").SerializeToString())
    assert code == OK, details
    assert pb.ModelInferResponse.FromString(answer).outputs[0].shape == [1, 6]
    code, details, answer = unary(channel, ACT, act().SerializeToString())
    assert code == OK, details
    assert np.isfinite(np.frombuffer(ppb.ActResponse.FromString(answer).action, "<f4")).all()


# -- the tests ----------------------------------------------------------------------------------------------------


REST_IDS = [f"oip-{c.id}" for c in REST_OIP] + [f"v1-{c.id}" for c in KSERVE_V1]


@pytest.mark.parametrize("case", REST_OIP + KSERVE_V1, ids=REST_IDS)
def test_rest(server: RunningServer, case: Rest) -> None:
    response = post(server, case)
    assert response.status_code == case.status, response.text
    if case.status != 200:
        assert case.message in response.json()["error"], response.text
    else:
        assert "outputs" in response.json() or "predictions" in response.json()
    assert_rest_ok(server)


@pytest.mark.parametrize("case", GRPC_OIP, ids=ids(GRPC_OIP))
def test_grpc_model_infer(server: RunningServer, channel: grpc.Channel, case: Grpc) -> None:
    code, details, _ = unary(channel, MODEL_INFER, case.wire())
    assert code == case.code, details
    assert case.message in details
    assert_grpc_ok(channel)


@pytest.mark.parametrize("case", GRPC_OIP, ids=ids(GRPC_OIP))
def test_grpc_model_stream_infer(server: RunningServer, channel: grpc.Channel, case: Grpc) -> None:
    """A bad request in a stream is answered with ``error_message`` and the stream goes on; bytes that are no
    request at all (or too many) end the stream with the status."""
    good = infer_proto("policy").SerializeToString()
    answers, code, details = stream(channel, MODEL_STREAM_INFER, [good, case.wire(), good])
    responses = [pb.ModelStreamInferResponse.FromString(a) for a in answers]
    if case.ends_call:
        assert (code, len(responses)) == (case.code, 1), details
        assert case.message in details
    else:
        assert code == OK, details
        assert [bool(r.error_message) for r in responses] == [False, True, False]
        assert case.message in responses[1].error_message
    assert_grpc_ok(channel)


@pytest.mark.parametrize("case", OBSERVATIONS + ACT_ONLY, ids=ids(OBSERVATIONS + ACT_ONLY))
def test_act(server: RunningServer, channel: grpc.Channel, case: Grpc) -> None:
    code, details, _ = unary(channel, ACT, case.wire())
    assert code == case.code, details
    assert case.message in details
    assert_grpc_ok(channel)


STREAM_MODES = {
    "default": ppb.StreamOptions(),
    "read-ahead": ppb.StreamOptions(max_pending=8),  # the reader-task path (also taken for deadlines, latest-only)
}


@pytest.mark.parametrize("mode", STREAM_MODES)
@pytest.mark.parametrize("case", OBSERVATIONS, ids=ids(OBSERVATIONS))
def test_act_stream_observation(server: RunningServer, channel: grpc.Channel, case: Grpc, mode: str) -> None:
    """A bad observation inside a stream is answered with an ``ActError`` for its sequence number; the next
    observation on the same stream gets its action."""
    first = act(options=STREAM_MODES[mode], sequence=1)
    bad = ppb.ActRequest.FromString(case.wire())
    bad.policy, bad.sequence = "", 2
    answers, code, details = stream(channel, ACT_STREAM, [first.SerializeToString(), bad.SerializeToString(),
                                                          act(policy="", sequence=3).SerializeToString()])  # fmt: skip
    results = [ppb.ActStreamResponse.FromString(a) for a in answers]
    if case.ends_call:
        assert code == case.code, details
        sequences = [r.action.sequence for r in results]
        if mode == "read-ahead":
            # The reader takes the oversized message while the first observation computes, and gRPC ends the call
            # at the transport as soon as it arrives: the first action may or may not have left before that.
            assert sequences in ([1], []), sequences
        else:
            assert sequences == [1]
    else:
        assert code == OK, details
        assert [r.WhichOneof("result") for r in results] == ["action", "error", "action"]
        assert (results[1].error.sequence, results[1].error.code) == (2, case.code.value[0])
        assert case.message in results[1].error.message
        assert results[2].action.sequence == 3
    assert_grpc_ok(channel)


@pytest.mark.parametrize("mode", STREAM_MODES)
@pytest.mark.parametrize("case", STREAM_START, ids=ids(STREAM_START))
def test_act_stream_start(server: RunningServer, channel: grpc.Channel, case: Grpc, mode: str) -> None:
    wire = case.wire()
    if not isinstance(case.request, bytes):
        request = ppb.ActRequest.FromString(wire)
        request.options.CopyFrom(STREAM_MODES[mode])
        wire = request.SerializeToString()
    answers, code, details = stream(channel, ACT_STREAM, [wire, act(policy="").SerializeToString()])
    assert (code, answers) == (case.code, []), details
    assert case.message in details
    assert_grpc_ok(channel)


def test_act_stream_malformed_message_mid_stream(server: RunningServer, channel: grpc.Channel) -> None:
    for mode in STREAM_MODES.values():
        first = act(options=mode, sequence=1).SerializeToString()
        answers, code, details = stream(channel, ACT_STREAM, [first, b"\x0a\xff\xff\xff\xff\x0f"])
        assert code == INVALID and "not a valid protobuf" in details
        assert [ppb.ActStreamResponse.FromString(a).action.sequence for a in answers] == [1]
    assert_grpc_ok(channel)


@pytest.mark.parametrize("name", list(NAMES.values()), ids=list(NAMES))
def test_model_names_are_only_ever_unknown(server: RunningServer, channel: grpc.Channel, name: str) -> None:
    """Traversal, NUL, very long, emoji and empty names on every endpoint that takes a model name: not found (or
    refused as a name), with the right code; nothing is loaded, and gRPC error details stay small enough for
    clients to receive (a status that echoed 20 000 characters would arrive as RESOURCE_EXHAUSTED instead)."""
    quoted = urllib.parse.quote(name, safe="").replace(".", "%2E")  # or the client would resolve ".." itself
    rest_paths = [("POST", f"/v2/models/{quoted}/infer", oip()), ("GET", f"/v2/models/{quoted}", b""),
                  ("GET", f"/v2/models/{quoted}/ready", b""), ("GET", f"/v2/models/{quoted}/config", b""),
                  ("POST", f"/v1/models/{quoted}:predict", orjson.dumps({"instances": [[0.1] * OBS]})),
                  ("GET", f"/v1/models/{quoted}", b"")]  # fmt: skip
    for method, path, body in rest_paths:
        r = httpx.request(method, server.http + path, content=body, timeout=30)
        assert r.status_code in (404, 405), (path[:80], r.status_code, r.text[:200])  # 405: an empty name
        assert "error" in r.json()
    r = httpx.post(f"{server.http}/v2/repository/models/{quoted}/load", timeout=30)
    assert r.status_code in (400, 404, 405), r.text[:200]
    grpc_calls = [
        (MODEL_INFER, infer_proto(name), NOT_FOUND),
        ("/inference.GRPCInferenceService/ModelMetadata", pb.ModelMetadataRequest(name=name), NOT_FOUND),
        ("/inference.GRPCInferenceService/ModelConfig", pb.ModelConfigRequest(name=name), NOT_FOUND),
        (ACT, act(policy=name), INVALID if name == "" else NOT_FOUND),
        ("/odetoode.v1.PolicyService/GetPolicy", ppb.GetPolicyRequest(policy=name), INVALID if not name else NOT_FOUND),
        ("/inference.GRPCInferenceService/RepositoryModelLoad", pb.RepositoryModelLoadRequest(model_name=name),
         INVALID),
    ]  # fmt: skip
    for method, request, expected in grpc_calls:
        code, details, _ = unary(channel, method, request.SerializeToString())
        assert code == expected, (method, details[:200])
        assert len(details.encode()) <= 2048
    code, _, answer = unary(channel, "/inference.GRPCInferenceService/ModelReady",
                            pb.ModelReadyRequest(name=name).SerializeToString())  # fmt: skip
    assert code == OK and not pb.ModelReadyResponse.FromString(answer).ready
    _, code, _ = stream(channel, ACT_STREAM, [act(policy=name).SerializeToString()])
    assert code == (INVALID if name == "" else NOT_FOUND)
    responses, code, _ = stream(channel, MODEL_STREAM_INFER, [infer_proto(name).SerializeToString()])
    assert code == OK and "unknown model" in pb.ModelStreamInferResponse.FromString(responses[0]).error_message
    index = pb.RepositoryIndexResponse.FromString(
        unary(channel, "/inference.GRPCInferenceService/RepositoryIndex", b"")[2]
    )
    assert {m.name for m in index.models} == {"policy", "digits"}
    assert_rest_ok(server)
    assert_grpc_ok(channel)


# -- oversized bodies against a server process: refused without being read -------------------------------------


def send_endless(port: int, head: bytes, chunk: bytes, cap: int) -> tuple[int, bytes]:
    """Writes ``head`` then ``chunk`` repeatedly (up to ``cap`` bytes) until the server stops taking them; returns
    the bytes sent and whatever answer arrived."""
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(head)
        try:
            while sent < cap:
                s.sendall(chunk)
                sent += len(chunk)
        except OSError:  # reset or broken pipe: the server closed the connection
            pass
        try:
            answer = s.recv(65536)
        except OSError:
            answer = b""
    return sent, answer


ENDLESS_BODIES = {
    "chunked": (b"Transfer-Encoding: chunked\r\n", b"%x\r\n%s\r\n" % (1 << 20, b"[" * (1 << 20))),
    "declared-4-GiB": (b"Content-Length: %d\r\n" % (4 << 30), b"[" * (1 << 20)),
    "chunked-gzip": (b"Transfer-Encoding: chunked\r\nContent-Encoding: gzip\r\n",
                     b"%x\r\n%s\r\n" % (len(gzip_bomb(1 << 20)), gzip_bomb(1 << 20))),
}  # fmt: skip


@pytest.mark.parametrize("kind", ENDLESS_BODIES)
def test_endless_rest_body_is_refused_without_being_read(process: ServerProcess, kind: str) -> None:
    """A body that would be 4 GiB: the server answers 413 (or 400 for the gzip garbage it finds first) once it has
    seen more than the limit, closes the connection instead of reading the rest, and its memory stays put."""
    extra, chunk = ENDLESS_BODIES[kind]
    head = b"POST /v2/models/policy/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" + extra + b"\r\n"
    pid = process.process.pid
    before = rss_mib(pid)
    started = time.monotonic()
    sent, answer = send_endless(process.http_port, head, chunk, 4 << 30)
    grew = rss_mib(pid) - before
    assert sent < 256 << 20, f"the server read {sent >> 20} MiB of a body it had refused"
    assert answer == b"" or answer.startswith((b"HTTP/1.1 413", b"HTTP/1.1 400")), answer[:200]
    assert grew < 50, f"server RSS grew by {grew:.0f} MiB"
    assert time.monotonic() - started < 10
    r = httpx.post(process.http + "/v2/models/policy/infer", json=observation_json(), timeout=30)
    assert r.status_code == 200


def test_oversized_grpc_messages_are_refused_and_not_kept(process: ServerProcess) -> None:
    """Rounds of 16 messages of 24 MiB (384 MiB a round) against a 64 KiB limit: each is refused RESOURCE_EXHAUSTED
    and none is kept. gRPC core reads part of a message before refusing it and glibc keeps some of those buffers for
    reuse, so the first round is a warm-up; the two rounds after it (768 MiB) must grow the server by less than a
    quarter of one round, where keeping the messages would grow it by all of them."""
    pid = process.process.pid
    size = 24 << 20
    big = infer(bytes(size), shape=[1, size // 4]).SerializeToString()
    big_act = act(observation=bytes(size)).SerializeToString()

    def one_round(ch: grpc.Channel) -> None:
        for _ in range(8):
            code, details, _ = unary(ch, MODEL_INFER, big)
            assert code == EXHAUSTED and "larger than max" in details, details
            code, details, _ = unary(ch, ACT, big_act)
            assert code == EXHAUSTED and "larger than max" in details, details

    with grpc.insecure_channel(process.grpc) as ch:
        one_round(ch)
        before = rss_mib(pid)
        one_round(ch)
        one_round(ch)
        assert_grpc_ok(ch)
    assert rss_mib(pid) - before < (16 * size >> 20) / 4
