"""The Open Inference Protocol's gRPC wire format: protobuf <-> data-plane types. The data plane and everything under
it never see a generated message: only the transport modules (this codec, ``policy_codec`` and the servicers that
build trivial answers like ``ServerLiveResponse``) import ``odetoode.proto``.

Inputs may arrive as ``raw_input_contents`` (what tritonclient sends) or as typed ``contents``, never both; outputs are
always sent as ``raw_output_contents``, which every OIP client reads and which costs no per-element conversion.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from odetoode.proto.inference import grpc_service_pb2 as pb
from odetoode.proto.inference import model_config_pb2 as config_pb
from service.classification import PARAMETER as CLASSIFICATION
from service.classification import class_count
from service.errors import InvalidArgument
from service.inference import InferRequest, InferResponse, ModelConfig, ModelMetadata, RequestedOutput
from service.tensors import Signature, Tensor, decode_raw, decode_typed, encode_raw, triton_type

if TYPE_CHECKING:  # the bulk worker processes import this module: nothing of the server at run time
    from service.repository import IndexEntry
    from service.statistics import Duration, ModelStatistics

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


def infer_request_from_proto(msg: pb.ModelInferRequest, signature: Signature, protocol: str = "grpc") -> InferRequest:
    """The request of ``msg`` for the model of ``signature``: each input's header is checked against the model
    before its contents are decoded."""
    raw = msg.raw_input_contents
    if raw and len(raw) != len(msg.inputs):
        raise InvalidArgument(f"raw_input_contents: {len(raw)} entries for {len(msg.inputs)} inputs")
    tensors = []
    for index, t in enumerate(msg.inputs):
        where = f"inputs[{index}]"
        declared = signature.declare(t.name, t.datatype, list(t.shape), where)
        if raw:
            if t.HasField("contents"):
                raise InvalidArgument(f"{where}.contents: give raw_input_contents or contents, not both")
            data = decode_raw(declared, raw[index], where)
        else:
            field_name = _TYPED_FIELD.get(t.datatype)
            if field_name is None:  # FP16: a valid datatype without a typed field
                raise InvalidArgument(f"{where}.contents: {t.datatype} tensors travel in raw_input_contents only")
            data = decode_typed(declared, getattr(t.contents, field_name), where)
        params = {k: parameter_value(v) for k, v in t.parameters.items()} if t.parameters else {}
        tensors.append(Tensor(t.name, t.datatype, data, params))
    if not tensors:
        raise InvalidArgument("inputs: expected at least one tensor")
    return InferRequest(
        model=msg.model_name,
        inputs=tensors,
        version=msg.model_version or None,
        id=msg.id or None,
        outputs=[_requested_output(index, o) for index, o in enumerate(msg.outputs)],
        parameters={k: parameter_value(v) for k, v in msg.parameters.items()} if msg.parameters else {},
        protocol=protocol,
    )


def _requested_output(index: int, msg: pb.ModelInferRequest.InferRequestedOutputTensor) -> RequestedOutput:
    """A requested output and its classification count (``int64_param``, as tritonclient sends it; any integer
    parameter is taken)."""
    params = msg.parameters
    count = parameter_value(params[CLASSIFICATION]) if CLASSIFICATION in params else None
    return RequestedOutput(msg.name, class_count(count, f"outputs[{index}].parameters.{CLASSIFICATION}"))


MAX_TOP_LEVEL_FIELDS = 1024
"""The most top-level fields ``scan_infer_request`` reads (a real request has a handful: a few inputs, outputs,
parameters); beyond, the message is refused before anything else of it is looked at."""


def scan_infer_request(data: bytes) -> tuple[str, str, str]:
    """(``model_name``, ``model_version``, ``id``) of a serialized ``ModelInferRequest``, read from the top level of
    the wire format alone, without parsing the tensors: a large request is resolved (and refused if its model does not
    exist) on the event loop for the price of a few varints, and parsed only in a bulk worker process. As protobuf
    parsers do, the last occurrence of a field wins; a message that is not valid at the top level is refused."""
    found = {1: b"", 2: b"", 3: b""}
    offset, end = 0, len(data)
    for _ in range(MAX_TOP_LEVEL_FIELDS):
        if offset == end:
            break
        key, offset = _varint(data, offset)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            _, offset = _varint(data, offset)
        elif wire_type == 1 or wire_type == 5:
            offset += 8 if wire_type == 1 else 4
        elif wire_type == 2:
            length, offset = _varint(data, offset)
            if number in found:
                found[number] = data[offset : offset + length]
            offset += length
        else:  # groups (3, 4) are not in this proto3 message; 6 and 7 do not exist
            raise InvalidArgument(f"request: not a valid protobuf message (wire type {wire_type} at the top level)")
        if offset > end or number == 0:
            raise InvalidArgument("request: not a valid protobuf message (truncated or malformed top-level field)")
    else:
        if offset != end:
            raise InvalidArgument(f"request: more than {MAX_TOP_LEVEL_FIELDS} top-level fields")
    try:
        return found[1].decode(), found[2].decode(), found[3].decode()
    except UnicodeDecodeError:
        raise InvalidArgument("request: not a valid protobuf message (a string field is not UTF-8)") from None


def _varint(data: bytes, offset: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if offset >= len(data) or shift > 63:
            raise InvalidArgument("request: not a valid protobuf message (truncated or malformed varint)")
        byte = data[offset]
        offset += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, offset
        shift += 7


def infer_response_to_proto(response: InferResponse) -> pb.ModelInferResponse:
    msg = pb.ModelInferResponse(model_name=response.model, model_version=response.version, id=response.id or "")
    for t in response.outputs:
        msg.outputs.add(name=t.name, datatype=t.datatype, shape=t.shape)
        msg.raw_output_contents.append(encode_raw(t.data))
    return msg


def stream_error(message: str, request_id: str) -> pb.ModelStreamInferResponse:
    """A failed request on ModelStreamInfer: its error, and its id in ``infer_response`` -- as Triton does, "so that
    the client knows which request failed" (a stream may have several in flight)."""
    return pb.ModelStreamInferResponse(error_message=message, infer_response=pb.ModelInferResponse(id=request_id))


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


def statistics_to_proto(stats: list[ModelStatistics]) -> pb.ModelStatisticsResponse:
    """Triton's ``ModelStatisticsResponse``; the fields this server does not measure (cache, memory, decoupled
    responses) stay empty."""
    msg = pb.ModelStatisticsResponse()
    for s in stats:
        m = msg.model_stats.add(name=s.name, version=s.version, last_inference=s.last_inference,
                                inference_count=s.inference_count, execution_count=s.execution_count)  # fmt: skip
        for key, d in s.inference_stats.items():
            _set_duration(getattr(m.inference_stats, key), d)
        for b in s.batch_stats:
            batch = m.batch_stats.add(batch_size=b.batch_size)
            for key, d in b.durations.items():
                _set_duration(getattr(batch, key), d)
    return msg


def _set_duration(msg: pb.StatisticDuration, d: Duration) -> None:
    msg.count, msg.ns = d.count, d.ns


def config_to_proto(config: ModelConfig) -> pb.ModelConfigResponse:
    """Triton's ``ModelConfig`` subset; odetoode's own description travels in ``parameters`` (JSON strings). Class
    labels are left out: Triton's only place for them, ``label_filename``, names a file, and labels here are inline
    in ``config.yaml`` (the REST configuration lists them)."""
    msg = pb.ModelConfigResponse()
    c = msg.config
    c.name, c.platform, c.backend = config.name, config.platform, config.backend
    c.max_batch_size = config.max_batch_size
    for specs, field in ((config.inputs, c.input), (config.outputs, c.output)):
        for spec in specs:
            field.add(name=spec.name, data_type=config_pb.DataType.Value(triton_type(spec.datatype)),
                      dims=config.dims(spec))  # fmt: skip
    for key, value in config.description.items():
        c.parameters[f"odetoode.{key}"].string_value = value
    c.parameters["execution_providers"].string_value = ",".join(config.execution_providers)
    c.parameters["version"].string_value = config.version
    return msg


def decode_infer_request(data: bytes | bytearray | memoryview) -> pb.ModelInferRequest:
    return pb.ModelInferRequest.FromString(bytes(data))


def stream_answer(response: pb.ModelInferResponse) -> pb.ModelStreamInferResponse:
    return pb.ModelStreamInferResponse(infer_response=response)
