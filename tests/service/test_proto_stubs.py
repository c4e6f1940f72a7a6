"""The gRPC contract: checked-in stubs match proto/, and proto/ matches the public Open Inference Protocol.

The expected field numbers below are transcribed from Triton's public protobuf/grpc_service.proto and
protobuf/model_config.proto (triton-inference-server/common), a superset of KServe's open_inference_grpc.proto.
Stock clients depend on them: a wrong number silently corrupts the wire format.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from odetoode.proto.inference import grpc_service_pb2 as pb
from odetoode.proto.inference import grpc_service_pb2_grpc as pb_grpc
from odetoode.proto.inference import model_config_pb2 as config_pb

ROOT = Path(__file__).resolve().parents[2]
GENERATED = ROOT / "odetoode" / "proto"
HAND_WRITTEN = ("__init__.py", "pool.py")  # beside the generated stubs, linted and type-checked like any source

_SCALARS = {
    FieldDescriptor.TYPE_BOOL: "bool",
    FieldDescriptor.TYPE_BYTES: "bytes",
    FieldDescriptor.TYPE_DOUBLE: "double",
    FieldDescriptor.TYPE_FLOAT: "float",
    FieldDescriptor.TYPE_INT32: "int32",
    FieldDescriptor.TYPE_INT64: "int64",
    FieldDescriptor.TYPE_STRING: "string",
    FieldDescriptor.TYPE_UINT32: "uint32",
    FieldDescriptor.TYPE_UINT64: "uint64",
}


def _type(field: FieldDescriptor) -> str:
    """The field's type as written in a .proto file, e.g. "repeated int64" or "map<string, InferParameter>"."""
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        key, value = field.message_type.fields_by_name["key"], field.message_type.fields_by_name["value"]
        return f"map<{_type(key)}, {_type(value)}>"
    if field.message_type is not None:
        name = field.message_type.full_name
    elif field.enum_type is not None:
        name = field.enum_type.full_name
    else:
        name = _SCALARS[field.type]
    name = name.removeprefix("inference.")
    return f"repeated {name}" if field.is_repeated else name


def _fields(message: Descriptor) -> dict[str, tuple[int, str]]:
    return {f.name: (f.number, _type(f)) for f in message.fields}


_PARAMETERS = "map<string, InferParameter>"

# message -> {field: (number, type)}: every field of every message, nested ones included.
EXPECTED_MESSAGES: dict[str, dict[str, tuple[int, str]]] = {
    "ServerLiveRequest": {},
    "ServerLiveResponse": {"live": (1, "bool")},
    "ServerReadyRequest": {},
    "ServerReadyResponse": {"ready": (1, "bool")},
    "ModelReadyRequest": {"name": (1, "string"), "version": (2, "string")},
    "ModelReadyResponse": {"ready": (1, "bool")},
    "ServerMetadataRequest": {},
    "ServerMetadataResponse": {"name": (1, "string"), "version": (2, "string"), "extensions": (3, "repeated string")},
    "ModelMetadataRequest": {"name": (1, "string"), "version": (2, "string")},
    "ModelMetadataResponse": {
        "name": (1, "string"),
        "versions": (2, "repeated string"),
        "platform": (3, "string"),
        "inputs": (4, "repeated ModelMetadataResponse.TensorMetadata"),
        "outputs": (5, "repeated ModelMetadataResponse.TensorMetadata"),
    },
    "ModelMetadataResponse.TensorMetadata": {
        "name": (1, "string"),
        "datatype": (2, "string"),
        "shape": (3, "repeated int64"),
    },
    "InferParameter": {
        "bool_param": (1, "bool"),
        "int64_param": (2, "int64"),
        "string_param": (3, "string"),
        "double_param": (4, "double"),
        "uint64_param": (5, "uint64"),
    },
    "InferTensorContents": {
        "bool_contents": (1, "repeated bool"),
        "int_contents": (2, "repeated int32"),
        "int64_contents": (3, "repeated int64"),
        "uint_contents": (4, "repeated uint32"),
        "uint64_contents": (5, "repeated uint64"),
        "fp32_contents": (6, "repeated float"),
        "fp64_contents": (7, "repeated double"),
        "bytes_contents": (8, "repeated bytes"),
    },
    "ModelInferRequest": {
        "model_name": (1, "string"),
        "model_version": (2, "string"),
        "id": (3, "string"),
        "parameters": (4, _PARAMETERS),
        "inputs": (5, "repeated ModelInferRequest.InferInputTensor"),
        "outputs": (6, "repeated ModelInferRequest.InferRequestedOutputTensor"),
        "raw_input_contents": (7, "repeated bytes"),
    },
    "ModelInferRequest.InferInputTensor": {
        "name": (1, "string"),
        "datatype": (2, "string"),
        "shape": (3, "repeated int64"),
        "parameters": (4, _PARAMETERS),
        "contents": (5, "InferTensorContents"),
    },
    "ModelInferRequest.InferRequestedOutputTensor": {"name": (1, "string"), "parameters": (2, _PARAMETERS)},
    "ModelInferResponse": {
        "model_name": (1, "string"),
        "model_version": (2, "string"),
        "id": (3, "string"),
        "parameters": (4, _PARAMETERS),
        "outputs": (5, "repeated ModelInferResponse.InferOutputTensor"),
        "raw_output_contents": (6, "repeated bytes"),
    },
    "ModelInferResponse.InferOutputTensor": {
        "name": (1, "string"),
        "datatype": (2, "string"),
        "shape": (3, "repeated int64"),
        "parameters": (4, _PARAMETERS),
        "contents": (5, "InferTensorContents"),
    },
    "ModelStreamInferResponse": {"error_message": (1, "string"), "infer_response": (2, "ModelInferResponse")},
    "ModelConfigRequest": {"name": (1, "string"), "version": (2, "string")},
    "ModelConfigResponse": {"config": (1, "ModelConfig")},
    "ModelStatisticsRequest": {"name": (1, "string"), "version": (2, "string")},
    "ModelStatisticsResponse": {"model_stats": (1, "repeated ModelStatistics")},
    "StatisticDuration": {"count": (1, "uint64"), "ns": (2, "uint64")},
    "ModelStatistics": {
        "name": (1, "string"),
        "version": (2, "string"),
        "last_inference": (3, "uint64"),
        "inference_count": (4, "uint64"),
        "execution_count": (5, "uint64"),
        "inference_stats": (6, "InferStatistics"),
        "batch_stats": (7, "repeated InferBatchStatistics"),
        "memory_usage": (8, "repeated MemoryUsage"),
        "response_stats": (9, "map<string, InferResponseStatistics>"),
    },
    "InferStatistics": {
        "success": (1, "StatisticDuration"),
        "fail": (2, "StatisticDuration"),
        "queue": (3, "StatisticDuration"),
        "compute_input": (4, "StatisticDuration"),
        "compute_infer": (5, "StatisticDuration"),
        "compute_output": (6, "StatisticDuration"),
        "cache_hit": (7, "StatisticDuration"),
        "cache_miss": (8, "StatisticDuration"),
    },
    "InferResponseStatistics": {
        "compute_infer": (1, "StatisticDuration"),
        "compute_output": (2, "StatisticDuration"),
        "success": (3, "StatisticDuration"),
        "fail": (4, "StatisticDuration"),
        "empty_response": (5, "StatisticDuration"),
        "cancel": (6, "StatisticDuration"),
    },
    "InferBatchStatistics": {
        "batch_size": (1, "uint64"),
        "compute_input": (2, "StatisticDuration"),
        "compute_infer": (3, "StatisticDuration"),
        "compute_output": (4, "StatisticDuration"),
    },
    "MemoryUsage": {"type": (1, "string"), "id": (2, "int64"), "byte_size": (3, "uint64")},
    "ModelRepositoryParameter": {
        "bool_param": (1, "bool"),
        "int64_param": (2, "int64"),
        "string_param": (3, "string"),
        "bytes_param": (4, "bytes"),
    },
    "RepositoryIndexRequest": {"repository_name": (1, "string"), "ready": (2, "bool")},
    "RepositoryIndexResponse": {"models": (1, "repeated RepositoryIndexResponse.ModelIndex")},
    "RepositoryIndexResponse.ModelIndex": {
        "name": (1, "string"),
        "version": (2, "string"),
        "state": (3, "string"),
        "reason": (4, "string"),
    },
    "RepositoryModelLoadRequest": {
        "repository_name": (1, "string"),
        "model_name": (2, "string"),
        "parameters": (3, "map<string, ModelRepositoryParameter>"),
    },
    "RepositoryModelLoadResponse": {},
    "RepositoryModelUnloadRequest": {
        "repository_name": (1, "string"),
        "model_name": (2, "string"),
        "parameters": (3, "map<string, ModelRepositoryParameter>"),
    },
    "RepositoryModelUnloadResponse": {},
    # model_config.proto: a subset of Triton's ModelConfig, with Triton's numbers (note backend = 17,
    # parameters = 14, and dims = 4 in ModelInput but 3 in ModelOutput).
    "ModelConfig": {
        "name": (1, "string"),
        "platform": (2, "string"),
        "backend": (17, "string"),
        "max_batch_size": (4, "int32"),
        "input": (5, "repeated ModelInput"),
        "output": (6, "repeated ModelOutput"),
        "parameters": (14, "map<string, ModelParameter>"),
    },
    "ModelInput": {"name": (1, "string"), "data_type": (2, "DataType"), "dims": (4, "repeated int64")},
    "ModelOutput": {"name": (1, "string"), "data_type": (2, "DataType"), "dims": (3, "repeated int64")},
    "ModelParameter": {"string_value": (1, "string")},
}

EXPECTED_DATA_TYPES = {
    "TYPE_INVALID": 0,
    "TYPE_BOOL": 1,
    "TYPE_UINT8": 2,
    "TYPE_UINT16": 3,
    "TYPE_UINT32": 4,
    "TYPE_UINT64": 5,
    "TYPE_INT8": 6,
    "TYPE_INT16": 7,
    "TYPE_INT32": 8,
    "TYPE_INT64": 9,
    "TYPE_FP16": 10,
    "TYPE_FP32": 11,
    "TYPE_FP64": 12,
    "TYPE_STRING": 13,
    "TYPE_BF16": 14,
}

# rpc -> (request, response, bidirectional stream)
EXPECTED_RPCS = {
    "ServerLive": ("ServerLiveRequest", "ServerLiveResponse", False),
    "ServerReady": ("ServerReadyRequest", "ServerReadyResponse", False),
    "ModelReady": ("ModelReadyRequest", "ModelReadyResponse", False),
    "ServerMetadata": ("ServerMetadataRequest", "ServerMetadataResponse", False),
    "ModelMetadata": ("ModelMetadataRequest", "ModelMetadataResponse", False),
    "ModelInfer": ("ModelInferRequest", "ModelInferResponse", False),
    "ModelStreamInfer": ("ModelInferRequest", "ModelStreamInferResponse", True),
    "ModelConfig": ("ModelConfigRequest", "ModelConfigResponse", False),
    "ModelStatistics": ("ModelStatisticsRequest", "ModelStatisticsResponse", False),
    "RepositoryIndex": ("RepositoryIndexRequest", "RepositoryIndexResponse", False),
    "RepositoryModelLoad": ("RepositoryModelLoadRequest", "RepositoryModelLoadResponse", False),
    "RepositoryModelUnload": ("RepositoryModelUnloadRequest", "RepositoryModelUnloadResponse", False),
}


def _all_messages() -> dict[str, Descriptor]:
    found: dict[str, Descriptor] = {}

    def visit(message: Descriptor) -> None:
        if message.GetOptions().map_entry:
            return
        found[message.full_name.removeprefix("inference.")] = message
        for nested in message.nested_types:
            visit(nested)

    for module in (pb, config_pb):
        for message in module.DESCRIPTOR.message_types_by_name.values():
            visit(message)
    return found


def _files(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


def test_checked_in_stubs_match_a_fresh_generation(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, str(ROOT / "proto" / "generate.py"), "--out", str(tmp_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    fresh = _files(tmp_path / "odetoode" / "proto")
    committed = {name: text for name, text in _files(GENERATED).items() if name not in HAND_WRITTEN}
    assert sorted(fresh) == sorted(committed), "stubs are stale: run make proto"
    stale = [name for name in fresh if fresh[name] != committed[name]]
    assert not stale, f"stubs are stale: run make proto ({', '.join(stale)} differ)"


def test_stubs_import_as_a_package() -> None:
    assert pb.DESCRIPTOR.package == config_pb.DESCRIPTOR.package == "inference"
    assert pb.DESCRIPTOR.name == "odetoode/proto/inference/grpc_service.proto"
    assert [d.name for d in pb.DESCRIPTOR.dependencies] == ["odetoode/proto/inference/model_config.proto"]
    assert pb.ModelInferRequest.__module__ == "odetoode.proto.inference.grpc_service_pb2"
    assert config_pb.ModelConfig.__module__ == "odetoode.proto.inference.model_config_pb2"
    grpc_source = (GENERATED / "inference" / "grpc_service_pb2_grpc.py").read_text()
    assert "from odetoode.proto.inference import grpc_service_pb2 " in grpc_source
    assert pb.ModelConfigResponse.DESCRIPTOR.fields_by_name["config"].message_type is config_pb.ModelConfig.DESCRIPTOR


def test_messages_and_field_numbers_match_the_public_definition() -> None:
    messages = _all_messages()
    assert sorted(messages) == sorted(EXPECTED_MESSAGES)
    for name, expected in EXPECTED_MESSAGES.items():
        assert _fields(messages[name]) == expected, name


def test_key_field_numbers() -> None:
    # The ones every client touches, spelled out.
    assert pb.ModelInferRequest.DESCRIPTOR.fields_by_name["raw_input_contents"].number == 7
    assert pb.ModelInferResponse.DESCRIPTOR.fields_by_name["raw_output_contents"].number == 6
    stream = pb.ModelStreamInferResponse.DESCRIPTOR.fields_by_name
    assert (stream["error_message"].number, stream["infer_response"].number) == (1, 2)
    assert stream["infer_response"].message_type is pb.ModelInferResponse.DESCRIPTOR


@pytest.mark.parametrize("message", [pb.InferParameter, pb.ModelRepositoryParameter])
def test_parameter_values_are_a_oneof(message: Any) -> None:
    oneofs = message.DESCRIPTOR.oneofs_by_name
    assert list(oneofs) == ["parameter_choice"]
    assert [f.name for f in oneofs["parameter_choice"].fields] == [f.name for f in message.DESCRIPTOR.fields]


def test_data_type_enum_matches_triton() -> None:
    values = {v.name: v.number for v in config_pb.DataType.DESCRIPTOR.values}
    assert values == EXPECTED_DATA_TYPES


def test_service_lists_exactly_the_served_rpcs() -> None:
    service = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert service.full_name == "inference.GRPCInferenceService"
    actual = {
        m.name: (m.input_type.name, m.output_type.name, m.client_streaming and m.server_streaming)
        for m in service.methods
    }
    assert actual == EXPECTED_RPCS
    assert [m.name for m in service.methods if m.client_streaming != m.server_streaming] == []
    # The generated servicer and stub follow the descriptor.
    assert {n for n in dir(pb_grpc.GRPCInferenceServiceServicer) if not n.startswith("_")} == set(EXPECTED_RPCS)


def test_wire_compatible_with_tritonclient() -> None:
    """Each of our fields exists in tritonclient's compiled copy of Triton's protos, with the same number and type."""
    triton = pytest.importorskip("tritonclient.grpc")
    theirs = {}
    for module in (triton.service_pb2, triton.model_config_pb2):
        for message in module.DESCRIPTOR.message_types_by_name.values():
            stack = [message]
            while stack:
                m = stack.pop()
                theirs[m.full_name.removeprefix("inference.")] = m
                stack.extend(n for n in m.nested_types if not n.GetOptions().map_entry)
    for name, ours in _all_messages().items():
        their_fields = _fields(theirs[name])
        assert {k: their_fields.get(k) for k in _fields(ours)} == _fields(ours), name
    their_types = {v.name: v.number for v in triton.model_config_pb2.DataType.DESCRIPTOR.values}
    assert {k: their_types.get(k) for k in EXPECTED_DATA_TYPES} == EXPECTED_DATA_TYPES
    their_rpcs = {m.name: m for m in triton.service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods}
    for method in pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods:
        theirs_m = their_rpcs[method.name]
        assert (theirs_m.input_type.full_name, theirs_m.output_type.full_name) == (
            method.input_type.full_name,
            method.output_type.full_name,
        )
        assert (theirs_m.client_streaming, theirs_m.server_streaming) == (
            method.client_streaming,
            method.server_streaming,
        )

    # And a populated request survives the trip through their parser and back.
    request = pb.ModelInferRequest(model_name="m", model_version="2", id="r")
    request.parameters["priority"].uint64_param = 3
    request.parameters["timeout"].double_param = 0.5
    tensor = request.inputs.add(name="x", datatype="FP32", shape=[1, 3])
    tensor.parameters["binary_data_size"].int64_param = 12
    request.outputs.add(name="y").parameters["classification"].int64_param = 2
    request.raw_input_contents.append(bytes(12))
    parsed = triton.service_pb2.ModelInferRequest.FromString(request.SerializeToString())
    assert parsed.parameters["priority"].uint64_param == 3
    assert parsed.inputs[0].shape == [1, 3]
    assert pb.ModelInferRequest.FromString(parsed.SerializeToString()) == request


def test_statistics_wire_compatible_with_tritonclient() -> None:
    """A statistics answer as the server builds it (``oip_codec``) parses with tritonclient's stubs into the same
    values, and a request built with theirs parses with ours."""
    triton = pytest.importorskip("tritonclient.grpc")
    from service.oip_codec import statistics_to_proto
    from service.statistics import Statistics

    statistics = Statistics()
    v2 = statistics.of("policy", "2")
    v2.executed(3, 1_500)
    v2.executed(1, 700)
    v2.succeeded(time.monotonic_ns(), 9_000, 2_000, 1_500)
    v2.failed(time.monotonic_ns(), 400)
    snapshot = statistics.snapshot("policy", "2")
    assert snapshot.last_inference > 0
    ours = statistics_to_proto([snapshot, statistics.snapshot("digits", "1")])
    ours.model_stats[0].memory_usage.add(type="GPU", id=1, byte_size=1 << 40)  # fields the server leaves empty
    ours.model_stats[0].response_stats["0"].empty_response.count = 5
    ours.model_stats[0].inference_stats.cache_miss.ns = 2**64 - 1

    theirs = triton.service_pb2.ModelStatisticsResponse.FromString(ours.SerializeToString())
    assert [(m.name, m.version) for m in theirs.model_stats] == [("policy", "2"), ("digits", "1")]
    m = theirs.model_stats[0]
    assert (m.inference_count, m.execution_count, m.last_inference) == (4, 2, snapshot.last_inference)
    s = m.inference_stats
    assert (s.success.count, s.success.ns, s.fail.count, s.fail.ns) == (1, 9_000, 1, 400)
    assert (s.queue.count, s.queue.ns, s.compute_infer.count, s.compute_infer.ns) == (1, 2_000, 1, 1_500)
    assert s.cache_miss.ns == 2**64 - 1
    assert [(b.batch_size, b.compute_infer.count, b.compute_infer.ns) for b in m.batch_stats] == [
        (1, 1, 700),
        (3, 1, 1_500),
    ]
    assert (m.memory_usage[0].type, m.memory_usage[0].id, m.memory_usage[0].byte_size) == ("GPU", 1, 1 << 40)
    assert m.response_stats["0"].empty_response.count == 5
    assert theirs.model_stats[1].inference_stats.success.count == 0
    assert pb.ModelStatisticsResponse.FromString(theirs.SerializeToString()) == ours

    request = triton.service_pb2.ModelStatisticsRequest(name="policy", version="2")
    assert pb.ModelStatisticsRequest.FromString(request.SerializeToString()) == pb.ModelStatisticsRequest(
        name="policy", version="2"
    )


@pytest.mark.parametrize(
    "imports",
    [
        "import tritonclient.grpc; import odetoode.proto.inference.grpc_service_pb2_grpc",
        "import odetoode.proto.inference.grpc_service_pb2_grpc; import tritonclient.grpc",
    ],
)
def test_importable_beside_tritonclient(imports: str) -> None:
    """Both define package `inference`; ours live in a private descriptor pool, so the two do not clash."""
    pytest.importorskip("tritonclient.grpc")
    run = subprocess.run([sys.executable, "-c", imports], cwd=ROOT, capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr[-2000:]
