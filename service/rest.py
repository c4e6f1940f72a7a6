"""REST transport: Open Inference Protocol v2 (with the binary-tensor and repository extensions), KServe V1 predict,
Prometheus ``/metrics`` and OpenAPI docs. Each route converts and calls the data plane; errors become
``{"error": "..."}`` with the status from ``service.errors``.
"""

from __future__ import annotations

import logging
import math
import time
import zlib
from typing import Any

import numpy as np
import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from odetoode import __version__
from service.auth import OPEN_REST_PREFIXES, RestAuthMiddleware, TokenCheck
from service.dataplane import DataPlane, InferRequest, InferResponse, ModelMetadata
from service.errors import InvalidArgument, PayloadTooLarge, ServingError, client_message, status_of
from service.tensors import (
    DATATYPES,
    Tensor,
    decode_json,
    decode_raw,
    encode_json,
    encode_raw,
    parameters_of,
)

log = logging.getLogger(__name__)

HEADER_LENGTH = "Inference-Header-Content-Length"
_JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY


class JSON(JSONResponse):
    """orjson rendering: numpy arrays serialize natively (no ``tolist``), NaN becomes null."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=_JSON_OPTIONS)


def error_response(error: BaseException) -> JSON:
    http, _ = status_of(error)
    return JSON({"error": client_message(error)}, status_code=int(http))


# -- request bodies ---------------------------------------------------------------------------------------------


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing (413) anything over ``limit`` bytes without reading it all into memory.

    ``Content-Encoding: gzip`` / ``deflate`` bodies (tritonclient's ``request_compression_algorithm``) are
    decompressed incrementally, and the limit applies to the decompressed size too (no decompression bombs).
    A refused body is not read any further: the answer closes the connection (uvicorn would otherwise read and
    discard the rest of it, however long, to keep the connection alive).
    """
    try:
        return await _read_body(request, limit)
    except ServingError:
        request.state.close_connection = True
        raise


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise PayloadTooLarge(f"request body of {declared} bytes exceeds the {limit}-byte limit")
        except ValueError:
            raise InvalidArgument("Content-Length: not an integer") from None
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("identity", "gzip", "deflate"):
        raise InvalidArgument(f"Content-Encoding: {encoding!r} is not supported (use gzip or deflate)")
    inflate = (
        None
        if encoding == "identity"
        else zlib.decompressobj(16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS)
    )
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            if inflate is not None:
                chunk = inflate.decompress(chunk, limit + 1 - size)
                if inflate.unconsumed_tail:
                    raise PayloadTooLarge(f"decompressed request body exceeds the {limit}-byte limit")
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"request body exceeds the {limit}-byte limit")
            chunks.append(chunk)
        if inflate is not None and not inflate.eof:
            raise InvalidArgument(f"request body: truncated {encoding} data")
    except zlib.error as exc:
        raise InvalidArgument(f"request body: not valid {encoding} data ({exc})") from None
    return b"".join(chunks)


def _json_object(raw: bytes, where: str) -> dict[str, Any]:
    try:
        value = orjson.loads(raw) if raw else {}
    except orjson.JSONDecodeError as exc:
        raise InvalidArgument(f"{where}: not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise InvalidArgument(f"{where}: expected a JSON object")
    return value


def parse_infer_request(
    body: bytes, header_length: str | None, model: str, version: str | None, max_elements: int
) -> tuple[InferRequest, set[str] | None]:
    """Decodes a v2 infer body (plain JSON, or JSON header + binary tensors) into an ``InferRequest``.

    Returns the request and the outputs to send as binary (``None`` means "all outputs, as binary").
    """
    binary = b""
    if header_length is not None:
        try:
            n = int(header_length)
        except ValueError:
            raise InvalidArgument(f"{HEADER_LENGTH}: not an integer") from None
        if not 0 <= n <= len(body):
            raise InvalidArgument(f"{HEADER_LENGTH}: {n} is outside the {len(body)}-byte body")
        body, binary = body[:n], body[n:]
    obj = _json_object(body, "request body")
    inputs = obj.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise InvalidArgument("inputs: expected a non-empty list of tensors")
    tensors: list[Tensor] = []
    offset = 0
    for index, item in enumerate(inputs):
        where = f"inputs[{index}]"
        if not isinstance(item, dict):
            raise InvalidArgument(f"{where}: expected an object")
        name = item.get("name")
        if not isinstance(name, str):
            raise InvalidArgument(f"{where}.name: expected a string")
        params = parameters_of(item.get("parameters"), f"{where}.parameters")
        size = params.get("binary_data_size")
        if size is not None:
            if "data" in item:
                raise InvalidArgument(f"{where}.data: give data or parameters.binary_data_size, not both")
            if isinstance(size, bool) or not isinstance(size, int) or size < 0 or offset + size > len(binary):
                raise InvalidArgument(f"{where}.parameters.binary_data_size: {size!r} does not fit the binary data")
            data = decode_raw(
                item.get("datatype"), item.get("shape"), binary[offset : offset + size], where, max_elements
            )
            offset += size
        else:
            if "data" not in item:
                raise InvalidArgument(f"{where}.data: missing (and no binary_data_size parameter)")
            data = decode_json(item.get("datatype"), item.get("shape"), item["data"], where, max_elements)
        tensors.append(Tensor(name, str(item["datatype"]), data, params))
    if offset != len(binary):
        raise InvalidArgument(f"binary data: {len(binary) - offset} bytes after the last input are not claimed")
    params = parameters_of(obj.get("parameters"), "parameters")
    outputs_field = obj.get("outputs") or []
    if not isinstance(outputs_field, list):
        raise InvalidArgument("outputs: expected a list")
    names: list[str] = []
    binary_outputs: set[str] | None = set()
    for index, out in enumerate(outputs_field):
        if not isinstance(out, dict) or not isinstance(out.get("name"), str):
            raise InvalidArgument(f"outputs[{index}].name: expected a string")
        names.append(out["name"])
        out_params = parameters_of(out.get("parameters"), f"outputs[{index}].parameters")
        if out_params.get("binary_data") is True:
            binary_outputs.add(out["name"])  # type: ignore[union-attr]
    if params.get("binary_data_output") is True:
        binary_outputs = None
    request_id = obj.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidArgument("id: expected a string")
    request = InferRequest(model, tensors, version, request_id, names, params, None, "rest")
    return request, binary_outputs


def render_infer_response(response: InferResponse, binary: set[str] | None) -> Response:
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
    timing = (
        f"queue;dur={response.timing.queue_ns / 1e6:.3f}, compute;dur={response.timing.compute_ns / 1e6:.3f}, "
        f"total;dur={response.total_ns / 1e6:.3f}"
    )
    header = orjson.dumps(body, option=_JSON_OPTIONS)
    if not blobs:
        return Response(header, media_type="application/json", headers={"Server-Timing": timing})
    return Response(
        header + b"".join(blobs),
        media_type="application/octet-stream",
        headers={HEADER_LENGTH: str(len(header)), "Server-Timing": timing},
    )


def metadata_json(m: ModelMetadata) -> dict[str, Any]:
    def tensor(s: Any) -> dict[str, Any]:
        return {"name": s.name, "datatype": s.datatype, "shape": list(s.shape)}

    return {
        "name": m.name,
        "versions": m.versions,
        "platform": m.platform,
        "inputs": [tensor(s) for s in m.inputs],
        "outputs": [tensor(s) for s in m.outputs],
    }


# -- OpenAPI descriptions of the bodies we parse by hand (binary data cannot go through pydantic) -------------------

_TENSOR = {
    "type": "object",
    "required": ["name", "shape", "datatype"],
    "properties": {
        "name": {"type": "string"},
        "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
        "datatype": {"type": "string", "enum": list(DATATYPES)},
        "parameters": {"type": "object"},
        "data": {"type": "array", "description": "row-major values, flat or nested"},
    },
}
INFER_BODY = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["inputs"],
                "properties": {
                    "id": {"type": "string"},
                    "parameters": {"type": "object"},
                    "inputs": {"type": "array", "minItems": 1, "items": _TENSOR},
                    "outputs": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["name"],
                            "properties": {"name": {"type": "string"}, "parameters": {"type": "object"}},
                        },
                    },
                },
            }
        }
    },
}
INFER_PARAMETERS = [
    {"name": "model", "in": "path", "required": True, "schema": {"type": "string"}},
    {"name": "version", "in": "path", "required": True, "schema": {"type": "string"}},
]
PREDICT_BODY = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["instances"],
                "properties": {"instances": {"type": "array", "minItems": 1, "items": {}}},
            }
        }
    },
}
_ERROR = {"description": "error", "content": {"application/json": {"schema": {
    "type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}}}}}  # fmt: skip
ERRORS: dict[int | str, dict[str, Any]] = {400: _ERROR, 404: _ERROR, 413: _ERROR, 503: _ERROR}
_NOT_READY = {"description": "not ready", "content": {"application/json": {"schema": {
    "type": "object", "required": ["ready"],
    "properties": {"ready": {"type": "boolean"}, "name": {"type": "string"}}}}}}  # fmt: skip


def create_app(plane: DataPlane) -> FastAPI:
    """The REST application over ``plane``."""
    settings = plane.settings
    max_bytes = settings.max_request_bytes
    app = FastAPI(
        title="odetoode",
        version=__version__,
        description="Open Inference Protocol v2 and KServe V1 over ODEtoODE models served with ONNX Runtime.",
        default_response_class=JSON,
    )

    check = TokenCheck(settings.tokens())
    if check.enabled:
        open_prefixes = OPEN_REST_PREFIXES if settings.auth_open_health else ()
        if settings.auth_open_metrics:
            open_prefixes = (*open_prefixes, "/metrics")
        app.add_middleware(RestAuthMiddleware, check=check, open_prefixes=open_prefixes)

    @app.exception_handler(ServingError)
    async def serving_error(request: Request, exc: ServingError) -> Response:
        response = error_response(exc)
        if getattr(request.state, "close_connection", False):
            response.headers["connection"] = "close"
        return response

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return error_response(InvalidArgument(f"{where}: {first.get('msg', 'invalid request')}"))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> Response:
        return JSON({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> Response:
        log.exception("unhandled error in a REST route")
        return error_response(exc)

    # Inference first: routes are matched in order, and these are the hot ones. The endpoint reads its path
    # parameters itself (they are declared for OpenAPI in INFER_PARAMETERS): FastAPI's per-request parameter
    # validation would cost more than computing a policy.
    @app.post("/v2/models/{model}/infer", tags=["inference"], responses=ERRORS,
              openapi_extra={"requestBody": INFER_BODY, "parameters": INFER_PARAMETERS[:1]})  # fmt: skip
    @app.post("/v2/models/{model}/versions/{version}/infer", tags=["inference"], responses=ERRORS,
              openapi_extra={"requestBody": INFER_BODY, "parameters": INFER_PARAMETERS})  # fmt: skip
    async def infer(request: Request) -> Response:
        path = request.path_params
        body = await read_body(request, max_bytes)
        parsed, binary = parse_infer_request(
            body, request.headers.get(HEADER_LENGTH), path["model"], path.get("version"), max_bytes
        )
        parsed.deadline_ns = _deadline(request)
        return render_infer_response(await plane.infer(parsed), binary)

    # -- health and metadata --------------------------------------------------------------------------------------

    @app.get("/v2/health/live", tags=["health"])
    async def live() -> Response:
        return JSON({"live": plane.live()})

    @app.get("/v2/health/ready", tags=["health"], responses={503: _NOT_READY})
    async def ready() -> Response:
        ok = plane.ready()
        return JSON({"ready": ok}, status_code=200 if ok else 503)

    @app.get("/v2", tags=["metadata"])
    async def server_metadata() -> Response:
        return JSON(plane.server_metadata())

    @app.get("/v2/models/{model}", tags=["metadata"], responses=ERRORS)
    @app.get("/v2/models/{model}/versions/{version}", tags=["metadata"], responses=ERRORS)
    async def model_metadata(model: str, version: str | None = None) -> Response:
        return JSON(metadata_json(plane.model_metadata(model, version)))

    @app.get("/v2/models/{model}/ready", tags=["health"], responses={**ERRORS, 503: _NOT_READY})
    @app.get("/v2/models/{model}/versions/{version}/ready", tags=["health"], responses={**ERRORS, 503: _NOT_READY})
    async def model_ready(model: str, version: str | None = None) -> Response:
        ok = plane.model_ready(model, version)
        return JSON({"name": model, "ready": ok}, status_code=200 if ok else 503)

    @app.get("/v2/models/{model}/config", tags=["metadata"], responses=ERRORS)
    @app.get("/v2/models/{model}/versions/{version}/config", tags=["metadata"], responses=ERRORS)
    async def model_config(model: str, version: str | None = None) -> Response:
        return JSON(plane.model_config(model, version))

    @app.get("/v1/models/{model}", tags=["kserve v1"], responses=ERRORS)
    async def v1_status(model: str) -> Response:
        return JSON({"name": model, "ready": plane.model_ready(model)})

    @app.post("/v1/models/{model}:predict", tags=["kserve v1"], openapi_extra={"requestBody": PREDICT_BODY},
              responses=ERRORS)  # fmt: skip
    async def v1_predict(request: Request, model: str) -> Response:
        obj = _json_object(await read_body(request, max_bytes), "request body")
        instances = obj.get("instances")
        if not isinstance(instances, list) or not instances:
            raise InvalidArgument("instances: expected a non-empty list")
        spec = plane.model_metadata(model).inputs[0]
        item_shape = list(spec.shape[1:])
        data = decode_json(spec.datatype, [len(instances), *item_shape], instances, "instances", max_bytes)
        response = await plane.infer(
            InferRequest(model, [Tensor(spec.name, spec.datatype, data)], deadline_ns=_deadline(request))
        )
        if len(response.outputs) == 1:
            return JSON({"predictions": response.outputs[0].data})
        rows = [{t.name: t.data[i] for t in response.outputs} for i in range(len(instances))]
        return JSON({"predictions": rows})

    # -- repository extension -------------------------------------------------------------------------------------

    @app.post("/v2/repository/index", tags=["repository"])
    async def repository_index(request: Request) -> Response:
        obj = _json_object(await read_body(request, max_bytes), "request body")
        ready_only = obj.get("ready", False)
        if not isinstance(ready_only, bool):
            raise InvalidArgument("ready: expected a boolean")
        return JSON([
            {k: v for k, v in {"name": e.name, "version": e.version, "state": e.state, "reason": e.reason}.items()
             if v != "" or k in ("name", "state")}
            for e in plane.repository_index(ready_only)
        ])  # fmt: skip

    @app.post("/v2/repository/models/{model}/load", tags=["repository"], responses={**ERRORS, 403: _ERROR})
    async def repository_load(request: Request, model: str) -> Response:
        obj = _json_object(await read_body(request, max_bytes), "request body")
        await plane.load(model, parameters_of(obj.get("parameters"), "parameters"))
        return JSON({})

    @app.post("/v2/repository/models/{model}/unload", tags=["repository"], responses={**ERRORS, 403: _ERROR})
    async def repository_unload(request: Request, model: str) -> Response:
        obj = _json_object(await read_body(request, max_bytes), "request body")
        await plane.unload(model, parameters_of(obj.get("parameters"), "parameters"))
        return JSON({})

    @app.get("/metrics", tags=["metrics"], response_class=Response)
    async def metrics() -> Response:
        return Response(generate_latest(plane.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


def _deadline(request: Request) -> int | None:
    """An optional client deadline, ``Request-Timeout-Ms`` (milliseconds from now)."""
    raw = request.headers.get("request-timeout-ms")
    if raw is None:
        return None
    try:
        ms = float(raw)
    except ValueError:
        raise InvalidArgument("Request-Timeout-Ms: not a number") from None
    if not ms > 0:
        raise InvalidArgument("Request-Timeout-Ms: must be positive")
    if math.isinf(ms):
        raise InvalidArgument("Request-Timeout-Ms: must be finite")
    return time.monotonic_ns() + int(ms * 1e6)
