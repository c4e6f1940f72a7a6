"""REST bodies <-> data-plane types: Open Inference Protocol v2 (JSON and the binary-tensor extension), and what
every REST body shares -- decompression, JSON parsing and the JSON budget check (KServe V1: ``service.v1_codec``).

Bytes in, bytes out, no web framework: the REST transport runs these on the event loop for small bodies, and the bulk
worker processes (``service.bulk_worker``) run the very same functions for large ones. Every tensor header is checked
against the model's ``Signature`` before its data is decoded (``service.tensors``).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from service.classification import PARAMETER as CLASSIFICATION
from service.classification import class_count
from service.errors import InvalidArgument, PayloadTooLarge
from service.inference import InferRequest, InferResponse, ModelConfig, ModelMetadata, RequestedOutput
from service.tensors import (
    Declared,
    Signature,
    Tensor,
    TensorSpec,
    decode_json,
    decode_raw,
    encode_json,
    encode_raw,
    parameters_of,
    triton_type,
)

if TYPE_CHECKING:
    from service.statistics import Duration, ModelStatistics

Buffer = bytes | bytearray | memoryview
HEADER_LENGTH = "Inference-Header-Content-Length"
JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY
_INFLATE_STEP = 1 << 20
"""Bytes inflated per step: a small compressed chunk may expand a thousandfold, so inflating is bounded per call."""


JSON_SLACK = 4096
"""Commas a request may hold beyond its tensors' values (shapes, parameters, outputs)."""


def check_json_budget(raw: Buffer, signature: Signature) -> None:
    """Refuses (413) a JSON document with more values than the model could take, before parsing it.

    Parsed JSON costs ~30-40 bytes of Python objects per number -- 60 MiB of short numbers would take a gigabyte --
    and the declared shapes are inside the document. But every value of an array but the last is followed by a
    comma, so counting commas (one pass in C) bounds the values without parsing: at most ``max_rows`` rows of each
    input, plus ``JSON_SLACK``. A document that passes costs at most that many values of memory."""
    budget = signature.json_values()
    if budget is None:
        return
    commas = bytes(raw).count(b",") if isinstance(raw, memoryview) else raw.count(b",")
    if commas > budget + JSON_SLACK:
        raise PayloadTooLarge(
            f"request body: about {commas} JSON values, more than this model takes in one request "
            f"({budget}: {signature.max_rows} rows, max_request_rows); send fewer rows"
        )


def json_object(raw: Buffer, where: str) -> dict[str, Any]:
    try:
        value = orjson.loads(raw) if len(raw) else {}
    except orjson.JSONDecodeError as exc:
        raise InvalidArgument(f"{where}: not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise InvalidArgument(f"{where}: expected a JSON object")
    return value


def inflate(body: Buffer, encoding: str, limit: int) -> bytes:
    """A ``Content-Encoding: gzip``/``deflate`` body, decompressed; refused (413) beyond ``limit`` decompressed bytes
    without inflating further (no decompression bombs)."""
    if encoding not in ("gzip", "deflate"):
        raise InvalidArgument(f"Content-Encoding: {encoding!r} is not supported (use gzip or deflate)")
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS)
    parts: list[bytes] = []
    size = 0
    try:
        pending: Buffer = body
        while pending and not inflater.eof:
            part = inflater.decompress(pending, _INFLATE_STEP)
            size += len(part)
            if size > limit:
                raise PayloadTooLarge(f"decompressed request body exceeds the {limit}-byte limit")
            parts.append(part)
            pending = inflater.unconsumed_tail
        if not inflater.eof:
            raise InvalidArgument(f"request body: truncated {encoding} data")
    except zlib.error as exc:
        raise InvalidArgument(f"request body: not valid {encoding} data ({exc})") from None
    return b"".join(parts)


# -- Open Inference Protocol v2 --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Input:
    """One entry of ``inputs``, its header checked; ``binary`` is the byte range of its binary data, if any."""

    name: str
    declared: Declared
    parameters: dict[str, Any]
    item: dict[str, Any]
    binary: tuple[int, int] | None


def split_binary(body: Buffer, header_length: str | None) -> tuple[Buffer, int]:
    """(JSON header, length of the binary part that follows it) of a body; the whole body is JSON without a header
    length."""
    if header_length is None:
        return body, 0
    try:
        n = int(header_length)
    except ValueError:
        raise InvalidArgument(f"{HEADER_LENGTH}: not an integer") from None
    if not 0 <= n <= len(body):
        raise InvalidArgument(f"{HEADER_LENGTH}: {n} is outside the {len(body)}-byte body")
    return body[:n], len(body) - n


def declare_inputs(obj: dict[str, Any], binary_length: int, signature: Signature) -> list[_Input]:
    """Checks every tensor header of a v2 request against the model -- names, datatypes, shapes, rows, and the sizes
    of binary data -- without decoding any data."""
    inputs = obj.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise InvalidArgument("inputs: expected a non-empty list of tensors")
    declared: list[_Input] = []
    offset = 0
    for index, item in enumerate(inputs):
        where = f"inputs[{index}]"
        if not isinstance(item, dict):
            raise InvalidArgument(f"{where}: expected an object")
        name = item.get("name")
        if not isinstance(name, str):
            raise InvalidArgument(f"{where}.name: expected a string")
        params = parameters_of(item.get("parameters"), f"{where}.parameters")
        header = signature.declare(name, item.get("datatype"), item.get("shape"), where)
        size = params.get("binary_data_size")
        span = None
        if size is not None:
            if "data" in item:
                raise InvalidArgument(f"{where}.data: give data or parameters.binary_data_size, not both")
            if isinstance(size, bool) or not isinstance(size, int) or size < 0 or offset + size > binary_length:
                raise InvalidArgument(f"{where}.parameters.binary_data_size: {size!r} does not fit the binary data")
            expected = signature.raw_size(header)
            if expected is not None and size != expected:
                raise InvalidArgument(
                    f"{where}: {size} bytes of raw data for shape {list(header.shape)} {header.spec.datatype}, "
                    f"expected {expected}"
                )
            span = (offset, offset + size)
            offset += size
        elif "data" not in item:
            raise InvalidArgument(f"{where}.data: missing (and no binary_data_size parameter)")
        declared.append(_Input(name, header, params, item, span))
    if offset != binary_length:
        raise InvalidArgument(f"binary data: {binary_length - offset} bytes after the last input are not claimed")
    return declared


def check_binary_header(header: Buffer, binary_length: int, signature: Signature) -> None:
    """The early refusal of a large binary-extension request: its JSON header alone, checked against the model
    before a byte of its tensor data is read."""
    check_json_budget(header, signature)
    declare_inputs(json_object(header, "request body"), binary_length, signature)


def parse_infer_request(
    body: Buffer, header_length: str | None, model: str, version: str | None, signature: Signature
) -> tuple[InferRequest, set[str] | None]:
    """Decodes a v2 infer body (plain JSON, or JSON header + binary tensors) into an ``InferRequest``.

    Returns the request and the outputs to send as binary (``None`` means "all outputs, as binary").
    """
    header, binary_length = split_binary(body, header_length)
    binary = memoryview(body)[len(header) :]
    check_json_budget(header, signature)
    obj = json_object(header, "request body")
    tensors: list[Tensor] = []
    for index, entry in enumerate(declare_inputs(obj, binary_length, signature)):
        where = f"inputs[{index}]"
        if entry.binary is not None:
            data = decode_raw(entry.declared, binary[entry.binary[0] : entry.binary[1]], where)
        else:
            data = decode_json(entry.declared, entry.item["data"], where)
        tensors.append(Tensor(entry.name, entry.declared.spec.datatype, data, entry.parameters))
    params = parameters_of(obj.get("parameters"), "parameters")
    outputs_field = obj.get("outputs") or []
    if not isinstance(outputs_field, list):
        raise InvalidArgument("outputs: expected a list")
    requested: list[RequestedOutput] = []
    binary_outputs: set[str] | None = set()
    for index, out in enumerate(outputs_field):
        if not isinstance(out, dict) or not isinstance(out.get("name"), str):
            raise InvalidArgument(f"outputs[{index}].name: expected a string")
        where = f"outputs[{index}].parameters"
        out_params = parameters_of(out.get("parameters"), where)
        count = class_count(out_params.get(CLASSIFICATION), f"{where}.{CLASSIFICATION}")
        requested.append(RequestedOutput(out["name"], count))
        if out_params.get("binary_data") is True:
            binary_outputs.add(out["name"])  # type: ignore[union-attr]
    if params.get("binary_data_output") is True:
        binary_outputs = None
    request_id = obj.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidArgument("id: expected a string")
    request = InferRequest(model, tensors, version, request_id, requested, params, None, "rest")
    return request, binary_outputs


@dataclass(frozen=True)
class Rendered:
    """A rendered REST response body: its parts (sent one after the other, never joined) and, for the binary
    extension, the length of its JSON header."""

    parts: list[bytes]
    header_length: int | None

    @property
    def size(self) -> int:
        return sum(len(p) for p in self.parts)

    @property
    def media_type(self) -> str:
        return "application/json" if self.header_length is None else "application/octet-stream"


def render_infer_response(response: InferResponse, binary: set[str] | None) -> Rendered:
    """JSON, or JSON header + binary tensors for outputs asked as binary (``None``: all of them)."""
    outputs = []
    blobs = []
    for t in response.outputs:
        entry: dict[str, Any] = {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}
        if binary is None or t.name in binary:
            raw = encode_raw(t.data)
            entry["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            entry["data"] = encode_json(t.data) if t.data.dtype == object else np.ascontiguousarray(t.data).reshape(-1)
        outputs.append(entry)
    body: dict[str, Any] = {"model_name": response.model, "model_version": response.version, "outputs": outputs}
    if response.id is not None:
        body["id"] = response.id
    header = orjson.dumps(body, option=JSON_OPTIONS)
    return Rendered([header, *blobs], len(header) if blobs else None)


def metadata_json(m: ModelMetadata) -> dict[str, Any]:
    """The OIP model-metadata answer."""
    return {
        "name": m.name,
        "versions": m.versions,
        "platform": m.platform,
        "inputs": [_tensor_json(s) for s in m.inputs],
        "outputs": [_tensor_json(s) for s in m.outputs],
    }


def _tensor_json(spec: TensorSpec) -> dict[str, Any]:
    return {"name": spec.name, "datatype": spec.datatype, "shape": list(spec.shape)}


def config_json(c: ModelConfig) -> dict[str, Any]:
    """Triton's model-configuration answer (``/v2/models/{model}/config``), plus ``odetoode``: the model file's own
    description, and each output's class ``labels`` where ``config.yaml`` gives them."""
    return {
        "name": c.name,
        "version": c.version,
        "platform": c.platform,
        "backend": c.backend,
        "max_batch_size": c.max_batch_size,
        "input": [_config_tensor_json(s, c) for s in c.inputs],
        "output": [_config_tensor_json(s, c, c.labels.get(s.name)) for s in c.outputs],
        "dynamic_batching": {
            "max_queue_delay_microseconds": c.max_queue_delay_us,
            "max_queue_size": c.max_queue_size,
        },
        "execution_providers": c.execution_providers,
        "execution": c.execution,
        "odetoode": c.description,
    }


def _config_tensor_json(spec: TensorSpec, c: ModelConfig, labels: list[str] | None = None) -> dict[str, Any]:
    """One ``input`` or ``output`` entry; an output's class ``labels`` (``config.yaml``) are listed in the entry,
    where Triton's configuration names a file of them (``label_filename``)."""
    entry: dict[str, Any] = {"name": spec.name, "data_type": triton_type(spec.datatype), "dims": list(c.dims(spec))}
    if labels:
        entry["labels"] = labels
    return entry


def statistics_json(stats: list[ModelStatistics]) -> dict[str, Any]:
    """Triton's statistics extension's ``$stats_model_response``."""
    return {
        "model_stats": [
            {
                "name": s.name,
                "version": s.version,
                "last_inference": s.last_inference,
                "inference_count": s.inference_count,
                "execution_count": s.execution_count,
                "inference_stats": {key: _duration_json(d) for key, d in s.inference_stats.items()},
                "batch_stats": [
                    {"batch_size": b.batch_size, **{key: _duration_json(d) for key, d in b.durations.items()}}
                    for b in s.batch_stats
                ],
            }
            for s in stats
        ]
    }


def _duration_json(d: Duration) -> dict[str, int]:
    return {"count": d.count, "ns": d.ns}
