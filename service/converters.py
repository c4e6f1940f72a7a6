"""protobuf <-> data-plane types for the OIP gRPC service. Generated ``*_pb2`` code does not leak past this module.

Inputs may arrive as ``raw_input_contents`` (what tritonclient sends) or as typed ``contents``, never both; outputs are
always sent as ``raw_output_contents``, which every OIP client reads and which costs no per-element conversion.
"""

from __future__ import annotations

from typing import Any

from service._proto.inference import grpc_service_pb2 as pb
from service._proto.inference import model_config_pb2 as config_pb
from service.dataplane import InferRequest, InferResponse, ModelMetadata
from service.errors import InvalidArgument
from service.repository import IndexEntry
from service.tensors import Tensor, decode_raw, decode_typed, encode_raw

# OIP datatype -> the typed ``InferTensorContents`` field that carries it (FP16 has none: raw only)
_TYPED_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def parameter_value(p: pb.InferParameter) -> Any:
    choice = p.WhichOneof("parameter_choice")
    return None if choice is None else getattr(p, choice)


def infer_request_from_proto(msg: pb.ModelInferRequest, max_elements: int, protocol: str = "grpc") -> InferRequest:
    raw = msg.raw_input_contents
    if raw and len(raw) != len(msg.inputs):
        raise InvalidArgument(f"raw_input_contents: {len(raw)} entries for {len(msg.inputs)} inputs")
    tensors = []
    for index, t in enumerate(msg.inputs):
        where = f"inputs[{index}]"
        shape = list(t.shape)
        if raw:
            if t.HasField("contents"):
                raise InvalidArgument(f"{where}.contents: give raw_input_contents or contents, not both")
            data = decode_raw(t.datatype, shape, raw[index], where, max_elements)
        else:
            field_name = _TYPED_FIELD.get(t.datatype)
            if field_name is None:
                if t.datatype == "FP16":
                    raise InvalidArgument(f"{where}.contents: FP16 tensors travel in raw_input_contents only")
                raise InvalidArgument(f"{where}.datatype: {t.datatype!r} is not a known datatype")
            data = decode_typed(t.datatype, shape, getattr(t.contents, field_name), where, max_elements)
        params = {k: parameter_value(v) for k, v in t.parameters.items()} if t.parameters else {}
        tensors.append(Tensor(t.name, t.datatype, data, params))
    if not tensors:
        raise InvalidArgument("inputs: expected at least one tensor")
    return InferRequest(
        model=msg.model_name,
        inputs=tensors,
        version=msg.model_version or None,
        id=msg.id or None,
        outputs=[o.name for o in msg.outputs],
        parameters={k: parameter_value(v) for k, v in msg.parameters.items()} if msg.parameters else {},
        protocol=protocol,
    )


def infer_response_to_proto(response: InferResponse) -> pb.ModelInferResponse:
    msg = pb.ModelInferResponse(model_name=response.model, model_version=response.version, id=response.id or "")
    for t in response.outputs:
        msg.outputs.add(name=t.name, datatype=t.datatype, shape=t.shape)
        msg.raw_output_contents.append(encode_raw(t.data))
    return msg


def metadata_to_proto(m: ModelMetadata) -> pb.ModelMetadataResponse:
    msg = pb.ModelMetadataResponse(name=m.name, versions=m.versions, platform=m.platform)
    for s in m.inputs:
        msg.inputs.add(name=s.name, datatype=s.datatype, shape=s.shape)
    for s in m.outputs:
        msg.outputs.add(name=s.name, datatype=s.datatype, shape=s.shape)
    return msg


def index_to_proto(entries: list[IndexEntry]) -> pb.RepositoryIndexResponse:
    msg = pb.RepositoryIndexResponse()
    for e in entries:
        msg.models.add(name=e.name, version=e.version, state=e.state, reason=e.reason)
    return msg


def config_to_proto(config: dict[str, Any]) -> pb.ModelConfigResponse:
    """Triton's ``ModelConfig`` subset; odetoode's own description travels in ``parameters`` (JSON strings)."""
    msg = pb.ModelConfigResponse()
    c = msg.config
    c.name, c.platform, c.backend = config["name"], config["platform"], config["backend"]
    c.max_batch_size = config["max_batch_size"]
    for spec in config["input"]:
        c.input.add(name=spec["name"], data_type=config_pb.DataType.Value(spec["data_type"]), dims=spec["dims"])
    for spec in config["output"]:
        c.output.add(name=spec["name"], data_type=config_pb.DataType.Value(spec["data_type"]), dims=spec["dims"])
    for key, value in config["odetoode"].items():
        c.parameters[f"odetoode.{key}"].string_value = value
    c.parameters["execution_providers"].string_value = ",".join(config["execution_providers"])
    c.parameters["version"].string_value = config["version"]
    return msg
