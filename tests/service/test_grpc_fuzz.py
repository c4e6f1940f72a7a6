"""Property-based fuzzing of the gRPC services with hypothesis, against a live server.

Hypothesis builds ``ModelInferRequest`` and ``ActRequest`` messages with arbitrary field values -- model names
(real ones, traversal-looking ones, any text), versions, datatypes, shapes (negative, zero, huge), raw contents of
random lengths and exact ones (NaN and infinity included), typed contents in any field, both at once, ``parameters``
maps, stream options -- and sends them to ``ModelInfer``, ``ModelStreamInfer``, ``Act``, ``ActStream``, the metadata
RPCs, and raw random bytes to every method of every service. What must hold:

* no INTERNAL or UNKNOWN status, ever (nor as an ``ActError`` code inside a stream), and no call that hangs;
* nothing the server logs as an unhandled error;
* a policy that answers OK answers finite actions;
* afterwards the server still answers a good request correctly.

The default run is bounded (a few hundred examples in all, derandomized: reproducible, well under 30 s); ``RUN_SLOW=1``
adds a long randomly seeded run of each.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from odetoode.proto.inference import grpc_service_pb2 as pb
from odetoode.proto.odetoode.v1 import policy_pb2 as ppb
from odetoode.testing.clients import OBS, infer_proto
from odetoode.testing.servers import RunningServer, running_server
from service.tensors import DATATYPES

LIMIT = 1 << 20  # --max-request-bytes: small enough that fuzzed messages also cross it
TIMEOUT = 10.0  # no call may take this long: a call that does has hung
FORBIDDEN = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}


class ErrorRecords(logging.Handler):
    """Collects ERROR records of the server's loggers (an unhandled exception is logged at ERROR)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(scope="module")
def errors() -> Iterator[ErrorRecords]:
    handler = ErrorRecords()
    logger = logging.getLogger("service")
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


@pytest.fixture(scope="module")
def fuzz_server(model_repo: Path, errors: ErrorRecords) -> Iterator[RunningServer]:
    """A server of its own over the shared repository (repository API off: what it serves cannot change)."""
    with running_server(model_repo, max_request_bytes=LIMIT) as running:
        yield running


@pytest.fixture(scope="module")
def channel(fuzz_server: RunningServer) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(fuzz_server.grpc, options=[("grpc.max_receive_message_length", 4 * LIMIT)]) as ch:
        yield ch


# -- strategies ---------------------------------------------------------------------------------------------------

MODELS = ("policy", "digits")
ODD_NAMES = ["", "nosuch", "../policy", "%2e%2e%2f", "/etc/passwd", "policy\x00", "🤖" * 50, "Policy", " policy"]


def weighted(common: st.SearchStrategy[Any], rare: st.SearchStrategy[Any], rare_in: int = 4) -> st.SearchStrategy[Any]:
    """``common`` most of the time, ``rare`` one time in ``rare_in``: most requests should get far enough into the
    server to be computed, and the rest should break it in every way."""
    # Hypothesis favours the bounds of an integer range; the rare branch is an inner value so that it stays rare.
    return st.integers(0, rare_in - 1).flatmap(lambda i: rare if i == 1 else common)


names = weighted(st.sampled_from(["policy", "policy", "digits"]), st.one_of(st.sampled_from(ODD_NAMES),
                                                                           st.text(max_size=40)))  # fmt: skip
versions = weighted(st.sampled_from(["", "", "1", "2"]), st.one_of(
    st.sampled_from(["3", "0", "-1", "01", "abc", "9" * 12, " 1"]), st.text(max_size=12)))  # fmt: skip
datatypes = weighted(st.just("FP32"), st.one_of(st.sampled_from([*DATATYPES, "", "fp32", "FLOAT"]),
                                                 st.text(max_size=8)))  # fmt: skip
dims = st.one_of(
    st.integers(-2, 40),
    st.sampled_from([0, 1, OBS, 28, 784, 2**31, 2**62, 2**63 - 1, -(2**63)]),
    st.integers(-(2**63), 2**63 - 1),
)
shapes = weighted(
    st.sampled_from([[1, OBS], [2, OBS], [5, OBS], [1, 1, 28, 28], [3, 1, 28, 28]]),
    st.one_of(
        st.sampled_from([[0, OBS], [1, OBS - 1], [1, 784], [OBS], [], [0, 1, 28, 28], [0, 2**62, 2**62], [2**40, 0]]),
        st.lists(dims, max_size=6),
    ),
    rare_in=3,
)
floats32 = weighted(st.floats(-1e3, 1e3, width=32), st.floats(width=32), rare_in=20)  # NaN and infinities: rarely
parameter_values = st.one_of(
    st.builds(pb.InferParameter, bool_param=st.booleans()),
    st.builds(pb.InferParameter, int64_param=st.integers(-(2**63), 2**63 - 1)),
    st.builds(pb.InferParameter, string_param=st.text(max_size=20)),
    st.builds(pb.InferParameter, double_param=st.floats()),
    st.builds(pb.InferParameter, uint64_param=st.integers(0, 2**64 - 1)),
    st.just(pb.InferParameter()),
)
parameter_maps = weighted(st.just({}), st.dictionaries(
    st.one_of(st.sampled_from(["binary_data_size", "priority", "timeout", "sequence_id"]), st.text(max_size=10)),
    parameter_values, max_size=3))  # fmt: skip
TYPED_FIELDS: dict[str, st.SearchStrategy[list[Any]]] = {
    "bool_contents": st.lists(st.booleans(), max_size=40),
    "int_contents": st.lists(st.integers(-(2**31), 2**31 - 1), max_size=40),
    "int64_contents": st.lists(st.integers(-(2**63), 2**63 - 1), max_size=40),
    "uint_contents": st.lists(st.integers(0, 2**32 - 1), max_size=40),
    "uint64_contents": st.lists(st.integers(0, 2**64 - 1), max_size=40),
    "fp32_contents": st.lists(floats32, max_size=40),
    "fp64_contents": st.lists(st.floats(), max_size=40),
    "bytes_contents": st.lists(st.binary(max_size=10), max_size=10),
}
odd_bytes = weighted(st.binary(max_size=300), st.just(bytes(LIMIT + 8)), rare_in=25)


def elements(shape: list[int]) -> int | None:
    """The element count of ``shape`` if it is a small valid one, else None."""
    if any(d < 0 for d in shape):
        return None
    n = int(np.prod(shape, dtype=object)) if shape else 1
    return n if n <= 4096 else None


@st.composite
def raw_contents(draw: st.DrawFn, shape: list[int], datatype: str) -> bytes:
    """Bytes of exactly the right length for ``shape`` (random values, NaN included) or of any length."""
    n = elements(shape)
    if n is not None and datatype in DATATYPES and datatype != "BYTES" and draw(st.integers(0, 4)) > 0:
        if datatype == "FP32":
            return bytes(draw(arrays(np.dtype("<f4"), n, elements=floats32)).tobytes())
        return draw(st.binary(min_size=n * DATATYPES[datatype].itemsize, max_size=n * DATATYPES[datatype].itemsize))
    return draw(odd_bytes)


SIGNATURES = {"policy": ("observation", (OBS,), ("action",)), "digits": ("image", (1, 28, 28), ("probabilities",))}


@st.composite
def good_infer_requests(draw: st.DrawFn) -> pb.ModelInferRequest:
    """A request the server computes: a real model, its input, a small batch, exact raw or typed contents."""
    model = draw(st.sampled_from(MODELS))
    name, item, _ = SIGNATURES[model]
    shape = [draw(st.integers(1, 4)), *item]
    request = pb.ModelInferRequest(model_name=model, model_version=draw(st.sampled_from(["", "1"])),
                                   id=draw(st.text(max_size=8)))  # fmt: skip
    t = request.inputs.add(name=name, datatype="FP32", shape=shape)
    values = draw(arrays(np.dtype("<f4"), int(np.prod(shape)), elements=floats32))
    if draw(st.booleans()):
        request.raw_input_contents.append(values.tobytes())
    else:
        t.contents.fp32_contents.extend(values.tolist())
    return request


@st.composite
def mutated_infer_requests(draw: st.DrawFn) -> pb.ModelInferRequest:
    """A good request with one to three of its fields replaced by arbitrary values."""
    request = draw(good_infer_requests())
    t = request.inputs[0]
    for mutation in draw(st.lists(st.integers(0, 11), min_size=1, max_size=3)):
        if mutation == 0:
            request.model_name = draw(names)
        elif mutation == 1:
            request.model_version = draw(versions)
        elif mutation == 2:
            t.datatype = draw(datatypes)
        elif mutation == 3:
            t.shape[:] = draw(shapes)
        elif mutation == 4:
            request.raw_input_contents[:] = [draw(raw_contents(list(t.shape), t.datatype))]
        elif mutation == 5:  # typed contents in any field (as well as raw ones, if there are)
            field = draw(st.sampled_from(sorted(TYPED_FIELDS)))
            getattr(t.contents, field).extend(draw(TYPED_FIELDS[field]))
        elif mutation == 6:
            request.inputs.add().CopyFrom(t)
            if request.raw_input_contents:
                request.raw_input_contents.append(draw(odd_bytes))
        elif mutation == 7:
            request.raw_input_contents.append(draw(odd_bytes))
        elif mutation == 8:
            for out in draw(st.lists(st.one_of(st.sampled_from(["action", "probabilities", "logits"]),
                                               st.text(max_size=8)), max_size=3)):  # fmt: skip
                request.outputs.add(name=out)
        elif mutation == 9:
            for key, value in draw(parameter_maps).items():
                request.parameters[key].CopyFrom(value)
                t.parameters[key].CopyFrom(value)
        elif mutation == 10:
            t.name = draw(st.one_of(st.sampled_from(["observation", "image", ""]), st.text(max_size=12)))
        else:
            del request.inputs[:]
    return request


@st.composite
def wild_infer_requests(draw: st.DrawFn) -> pb.ModelInferRequest:
    """Every field arbitrary."""
    request = pb.ModelInferRequest(model_name=draw(names), model_version=draw(versions), id=draw(st.text(max_size=20)))
    for key, value in draw(parameter_maps).items():
        request.parameters[key].CopyFrom(value)
    contents = draw(st.sampled_from(["raw", "typed", "both", "none"]))
    for _ in range(draw(st.integers(0, 3))):
        shape = draw(shapes)
        datatype = draw(datatypes)
        t = request.inputs.add(name=draw(st.one_of(st.sampled_from(["observation", "image"]), st.text(max_size=12))),
                               datatype=datatype, shape=shape)  # fmt: skip
        for key, value in draw(parameter_maps).items():
            t.parameters[key].CopyFrom(value)
        if contents in ("raw", "both"):
            request.raw_input_contents.append(draw(raw_contents(shape, datatype)))
        if contents in ("typed", "both"):
            field = draw(st.sampled_from(sorted(TYPED_FIELDS)))
            getattr(t.contents, field).extend(draw(TYPED_FIELDS[field]))
    for out in draw(st.lists(st.text(max_size=8), max_size=2)):
        request.outputs.add(name=out)
    return request


infer_requests = st.one_of(good_infer_requests(), mutated_infer_requests(), mutated_infer_requests(),
                           wild_infer_requests())  # fmt: skip


stream_options = st.builds(
    ppb.StreamOptions,
    overflow=st.integers(0, 3),  # 2 and 3 are unknown to the enum (proto3 keeps them)
    follow_latest=st.booleans(),
    max_pending=st.one_of(st.just(0), st.integers(1, 4), st.integers(0, 2**32 - 1)),
    deadline_us=st.one_of(st.just(0), st.just(0), st.integers(1, 2000), st.integers(0, 2**32 - 1)),
)


@st.composite
def act_requests(draw: st.DrawFn, first: bool = True) -> ppb.ActRequest:
    request = ppb.ActRequest(
        policy=draw(names) if first else draw(weighted(st.just(""), names)),
        version=draw(versions),
        sequence=draw(st.integers(0, 2**64 - 1)),
        values=draw(st.booleans()),
    )  # fmt: skip
    form = draw(weighted(st.sampled_from(["packed", "packed", "values"]), st.sampled_from(["both", "none", "bytes"])))
    size = draw(weighted(st.just(OBS), st.sampled_from([0, 1, 16, 18, 784])))
    if form in ("packed", "both"):
        request.observation = bytes(draw(arrays(np.dtype("<f4"), size, elements=floats32)).tobytes())
    if form in ("values", "both"):
        request.observation_values.extend(draw(st.lists(floats32, min_size=size, max_size=size)))
    if form == "bytes":
        request.observation = draw(odd_bytes)
    if draw(st.booleans()):
        request.options.CopyFrom(draw(stream_options))
    return request


act_streams = st.tuples(act_requests(first=True), st.lists(act_requests(first=False), max_size=6))

METHODS: dict[str, tuple[bool, bool]] = {}  # full method name -> (client streaming, server streaming)
for descriptor in (pb.DESCRIPTOR, ppb.DESCRIPTOR):
    for service in descriptor.services_by_name.values():
        for method in service.methods:
            METHODS[f"/{service.full_name}/{method.name}"] = (method.client_streaming, method.server_streaming)
METHODS["/grpc.health.v1.Health/Check"] = (False, False)
METHODS["/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"] = (True, True)


# -- calls --------------------------------------------------------------------------------------------------------


def call_unary(channel: grpc.Channel, method: str, request: bytes) -> tuple[grpc.StatusCode, str, bytes]:
    try:
        answer = channel.unary_unary(method)(request, timeout=TIMEOUT)
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or "", b""
    return grpc.StatusCode.OK, "", answer


def call_stream(channel: grpc.Channel, method: str, requests: list[bytes]) -> tuple[grpc.StatusCode, str, list[bytes]]:
    answers: list[bytes] = []
    try:
        answers.extend(channel.stream_stream(method)(iter(requests), timeout=TIMEOUT))
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or "", answers
    return grpc.StatusCode.OK, "", answers


def check(code: grpc.StatusCode, details: str) -> None:
    assert code not in FORBIDDEN, f"{code}: {details}"
    assert code != grpc.StatusCode.DEADLINE_EXCEEDED, f"the call took over {TIMEOUT} s: {details}"


def check_action(action: ppb.ActResponse) -> None:
    values = np.frombuffer(action.action, "<f4") if action.action else np.asarray(action.action_values)
    assert values.size == 6 and np.isfinite(values).all(), values


# -- properties ---------------------------------------------------------------------------------------------------


def model_infer(channel: grpc.Channel, request: pb.ModelInferRequest) -> None:
    note(str(request)[:2000])
    code, details, answer = call_unary(channel, "/inference.GRPCInferenceService/ModelInfer",
                                       request.SerializeToString())  # fmt: skip
    check(code, details)
    if code == grpc.StatusCode.OK and request.model_name == "policy":
        response = pb.ModelInferResponse.FromString(answer)
        assert np.isfinite(np.frombuffer(response.raw_output_contents[0], "<f4")).all()


def model_stream_infer(channel: grpc.Channel, requests: list[pb.ModelInferRequest]) -> None:
    note("\n---\n".join(str(r)[:1000] for r in requests))
    code, details, answers = call_stream(channel, "/inference.GRPCInferenceService/ModelStreamInfer",
                                         [r.SerializeToString() for r in requests])  # fmt: skip
    check(code, details)
    if code == grpc.StatusCode.OK:
        assert len(answers) == len(requests)  # one answer per request, in order
        for answer in answers:
            response = pb.ModelStreamInferResponse.FromString(answer)
            assert "internal error" not in response.error_message


def act(channel: grpc.Channel, request: ppb.ActRequest) -> None:
    note(str(request)[:2000])
    code, details, answer = call_unary(channel, "/odetoode.v1.PolicyService/Act", request.SerializeToString())
    check(code, details)
    if code == grpc.StatusCode.OK:
        check_action(ppb.ActResponse.FromString(answer))


def act_stream(channel: grpc.Channel, messages: tuple[ppb.ActRequest, list[ppb.ActRequest]]) -> None:
    first, rest = messages
    requests = [first, *rest]
    note("\n---\n".join(str(r)[:1000] for r in requests))
    code, details, answers = call_stream(channel, "/odetoode.v1.PolicyService/ActStream",
                                         [r.SerializeToString() for r in requests])  # fmt: skip
    check(code, details)
    for answer in answers:
        result = ppb.ActStreamResponse.FromString(answer)
        kind = result.WhichOneof("result")
        if kind == "action":
            check_action(result.action)
        elif kind == "error":  # a per-observation failure; DEADLINE_EXCEEDED is legitimate here (deadline_us)
            assert _CODES.get(result.error.code, grpc.StatusCode.UNKNOWN) not in FORBIDDEN, result.error
    if code == grpc.StatusCode.OK:
        assert len(answers) == len(requests)  # every observation answered: an action, an error or "dropped"
        assert [_sequence(ppb.ActStreamResponse.FromString(a)) for a in answers] == [r.sequence for r in requests]


_CODES = {code.value[0]: code for code in grpc.StatusCode}


def _sequence(result: ppb.ActStreamResponse) -> int:
    kind = result.WhichOneof("result")
    return int(result.action.sequence if kind == "action" else result.error.sequence if kind == "error"
               else result.dropped)  # fmt: skip


def metadata_rpcs(channel: grpc.Channel, name: str, version: str) -> None:
    for method, request in (
        ("/inference.GRPCInferenceService/ModelMetadata", pb.ModelMetadataRequest(name=name, version=version)),
        ("/inference.GRPCInferenceService/ModelReady", pb.ModelReadyRequest(name=name, version=version)),
        ("/inference.GRPCInferenceService/ModelConfig", pb.ModelConfigRequest(name=name, version=version)),
        ("/odetoode.v1.PolicyService/GetPolicy", ppb.GetPolicyRequest(policy=name, version=version)),
        ("/inference.GRPCInferenceService/RepositoryModelLoad", pb.RepositoryModelLoadRequest(model_name=name)),
        ("/inference.GRPCInferenceService/RepositoryModelUnload", pb.RepositoryModelUnloadRequest(model_name=name)),
    ):
        check(*call_unary(channel, method, request.SerializeToString())[:2])


def random_bytes(channel: grpc.Channel, method: str, payloads: list[bytes]) -> None:
    client_streaming, server_streaming = METHODS[method]
    if client_streaming:
        code, details, _ = call_stream(channel, method, payloads)
    elif server_streaming:  # none of ours; kept for completeness
        code, details = grpc.StatusCode.OK, ""
    else:
        code, details, _ = call_unary(channel, method, payloads[0])
    check(code, details)


def fuzz(examples: int, *, derandomize: bool) -> Callable[[Any], Any]:
    return settings(max_examples=examples, deadline=None, derandomize=derandomize, database=None,
                    suppress_health_check=list(HealthCheck))  # fmt: skip


FAST = {"derandomize": True}
SLOW = {"derandomize": False}


@fuzz(150, **FAST)
@given(request=infer_requests)
def test_model_infer(channel: grpc.Channel, request: pb.ModelInferRequest) -> None:
    model_infer(channel, request)


@fuzz(40, **FAST)
@given(requests=st.lists(infer_requests, min_size=1, max_size=4))
def test_model_stream_infer(channel: grpc.Channel, requests: list[pb.ModelInferRequest]) -> None:
    model_stream_infer(channel, requests)


@fuzz(150, **FAST)
@given(request=act_requests())
def test_act(channel: grpc.Channel, request: ppb.ActRequest) -> None:
    act(channel, request)


@fuzz(60, **FAST)
@given(messages=act_streams)
def test_act_stream(channel: grpc.Channel, messages: tuple[ppb.ActRequest, list[ppb.ActRequest]]) -> None:
    act_stream(channel, messages)


@fuzz(40, **FAST)
@given(name=names, version=versions)
def test_metadata_and_repository_rpcs(channel: grpc.Channel, name: str, version: str) -> None:
    metadata_rpcs(channel, name, version)


@fuzz(150, **FAST)
@given(method=st.sampled_from(sorted(METHODS)), payloads=st.lists(st.binary(max_size=200), min_size=1, max_size=3))
def test_random_bytes_to_every_method(channel: grpc.Channel, method: str, payloads: list[bytes]) -> None:
    random_bytes(channel, method, payloads)


@pytest.mark.slow
@pytest.mark.timeout(3600)
@fuzz(3000, **SLOW)
@given(request=infer_requests)
def test_model_infer_long(channel: grpc.Channel, request: pb.ModelInferRequest) -> None:
    model_infer(channel, request)


@pytest.mark.slow
@pytest.mark.timeout(3600)
@fuzz(1000, **SLOW)
@given(requests=st.lists(infer_requests, min_size=1, max_size=4))
def test_model_stream_infer_long(channel: grpc.Channel, requests: list[pb.ModelInferRequest]) -> None:
    model_stream_infer(channel, requests)


@pytest.mark.slow
@pytest.mark.timeout(3600)
@fuzz(3000, **SLOW)
@given(request=act_requests())
def test_act_long(channel: grpc.Channel, request: ppb.ActRequest) -> None:
    act(channel, request)


@pytest.mark.slow
@pytest.mark.timeout(3600)
@fuzz(1000, **SLOW)
@given(messages=act_streams)
def test_act_stream_long(channel: grpc.Channel, messages: tuple[ppb.ActRequest, list[ppb.ActRequest]]) -> None:
    act_stream(channel, messages)


@pytest.mark.slow
@pytest.mark.timeout(3600)
@fuzz(3000, **SLOW)
@given(method=st.sampled_from(sorted(METHODS)), payloads=st.lists(st.binary(max_size=400), min_size=1, max_size=4))
def test_random_bytes_to_every_method_long(channel: grpc.Channel, method: str, payloads: list[bytes]) -> None:
    random_bytes(channel, method, payloads)


def test_server_still_answers_after_fuzzing(fuzz_server: RunningServer, channel: grpc.Channel,
                                            errors: ErrorRecords) -> None:  # fmt: skip
    """Runs last (file order): the right answer to a good request, nothing logged as unhandled, nothing in flight."""
    x = np.full((1, OBS), 0.1, np.float32)
    code, details, answer = call_unary(channel, "/inference.GRPCInferenceService/ModelInfer",
                                       infer_proto("policy").SerializeToString())  # fmt: skip
    assert code == grpc.StatusCode.OK, details
    path = fuzz_server.server.settings.repository / "policy" / "2" / "model.onnx"
    expected = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"observation": x})[0]
    got = np.frombuffer(pb.ModelInferResponse.FromString(answer).raw_output_contents[0], "<f4").reshape(1, 6)
    assert np.allclose(got, expected, atol=1e-6)
    assert fuzz_server.server.plane.ready()
    assert not [r.getMessage() for r in errors.records if "unhandled" in r.getMessage() or r.exc_info]
    metrics = httpx.get(fuzz_server.metrics_url, timeout=10).text
    inflight = [line for line in metrics.splitlines() if line.startswith("odetoode_inflight_requests{")]
    assert inflight and all(line.endswith(" 0.0") for line in inflight), inflight
