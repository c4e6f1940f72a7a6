"""REST transport: Open Inference Protocol v2 (with the binary-tensor and repository extensions), KServe V1 predict,
Prometheus ``/metrics`` and OpenAPI docs. Each route converts and calls the data plane; errors become
``{"error": "..."}`` with the status from ``service.errors``.

Inference routes resolve the model from the path first (an unknown model is refused before a byte of its body is
read). A small body -- a known ``Content-Length`` up to ``bulk_request_bytes``, not compressed -- is decoded here, on
the event loop, and computed through the batcher. Any other is a bulk request: admitted (or refused at once) before
it is read, read in the chunks it arrives in (a binary-extension header is checked against the model before the
tensor data after it is read), and decoded, computed and encoded in a bulk worker process (``service.bulk``), whose
answer is sent in the parts it was rendered in.
"""

from __future__ import annotations

import logging
import math
from functools import partial
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi_offline import FastAPIOffline
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException as StarletteHTTPException

from service import images, server_version
from service.auth import OPEN_REST_PREFIXES, RestAuthMiddleware, TokenCheck
from service.batching import Timing, deadline_after
from service.dataplane import DataPlane
from service.errors import InvalidArgument, ServingError, client_message, status_of
from service.http import BodyReader, BodyTimeoutError, ClientGoneError, FramingGuard, PartsResponse, body_pending
from service.inference import InferRequest
from service.ration import Ration
from service.repository import ServedVersion
from service.rest_codec import (
    HEADER_LENGTH,
    JSON_OPTIONS,
    Rendered,
    check_binary_header,
    config_json,
    json_object,
    metadata_json,
    parse_infer_request,
    render_infer_response,
    statistics_json,
)
from service.rest_openapi import ERROR, ERRORS, INFER_BODY, INFER_PARAMETERS, MODEL_STATS, NOT_READY, PREDICT_BODY
from service.tensors import parameters_of
from service.v1_codec import parse_predict, render_predict

log = logging.getLogger(__name__)
DOCS_ASSETS = "/docs/assets"
"""Where Swagger UI's and ReDoc's scripts and styles are served (under ``/docs``: open whenever the docs are)."""


class JSON(JSONResponse):
    """orjson rendering: numpy arrays serialize natively (no ``tolist``), NaN becomes null."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=JSON_OPTIONS)


def error_response(error: BaseException) -> JSON:
    http, _ = status_of(error)
    return JSON({"error": client_message(error)}, status_code=int(http))


def server_timing(timing: Timing, total_ns: int) -> str:
    return (
        f"queue;dur={timing.queue_ns / 1e6:.3f}, compute;dur={timing.compute_ns / 1e6:.3f}, "
        f"total;dur={total_ns / 1e6:.3f}"
    )


def rendered_response(
    rendered: Rendered, timing: Timing, total_ns: int, release: Any = None, ration: Ration | None = None
) -> PartsResponse:
    headers = {"Server-Timing": server_timing(timing, total_ns)}
    if rendered.header_length is not None:
        headers[HEADER_LENGTH] = str(rendered.header_length)
    response = PartsResponse(rendered.parts, rendered.media_type, headers, ration=ration)
    response.background = None if release is None else BackgroundTask(release)
    return response


def content_encoding(request: Request) -> str | None:
    """``None`` for an identity body, else ``gzip`` or ``deflate`` (anything else is refused)."""
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding == "identity":
        return None
    if encoding not in ("gzip", "deflate"):
        raise InvalidArgument(f"Content-Encoding: {encoding!r} is not supported (use gzip or deflate)")
    return encoding


def is_small(request: Request, limit: int) -> bool:
    """A body decoded on the event loop: its ``Content-Length`` known and at most ``limit``, not compressed."""
    length = request.headers.get("content-length")
    plain = request.headers.get("content-encoding", "identity").strip().lower() == "identity"
    return plain and length is not None and length.isdigit() and int(length) <= limit


def create_app(plane: DataPlane, ration: Ration | None = None, check: TokenCheck | None = None) -> FastAPI:
    """The REST application over ``plane``; HTTP work takes its turns of the event loop from ``ration``; ``check``
    authenticates (``None``: nobody needs a token)."""
    settings = plane.settings
    max_bytes, small = settings.max_request_bytes, settings.bulk_request_bytes
    images.preload()  # now, not on the event loop when the first image comes
    # /docs and /redoc load Swagger UI and ReDoc from this server (fastapi-offline's copies), never from a CDN, so
    # they work without a network; their assets are under /docs/, as open as /docs itself when auth is on. No
    # validator badge either: Swagger UI would send the schema's URL to validator.swagger.io. No redirects of a
    # trailing slash: a path is answered as written (/v1/models/ names no model; it is not the list).
    app = FastAPIOffline(
        title="odetoode",
        version=server_version(),
        description="Open Inference Protocol v2 and KServe V1 over ODEtoODE models served with ONNX Runtime.",
        default_response_class=JSON,
        static_url=DOCS_ASSETS,
        swagger_ui_parameters={"validatorUrl": None},
        redirect_slashes=False,
    )

    if check is not None and check.enabled:
        open_prefixes = OPEN_REST_PREFIXES if settings.auth_open_health else ()
        if settings.auth_open_metrics:
            open_prefixes = (*open_prefixes, "/metrics")
        app.add_middleware(
            RestAuthMiddleware, check=check, open_prefixes=open_prefixes, refused=partial(plane.count_refusal, "rest")
        )
    app.add_middleware(FramingGuard, ration=ration, unrationed=("/v2/health/",))

    def close_if_unread(request: Request, response: Response) -> Response:
        if body_pending(request):  # answered before its body was read: do not read and discard the rest
            response.headers["connection"] = "close"
        return response

    @app.exception_handler(ServingError)
    async def serving_error(request: Request, exc: ServingError) -> Response:
        plane.count_refusal("rest", exc)  # unless the data plane counted it as a failed request
        return close_if_unread(request, error_response(exc))

    @app.exception_handler(BodyTimeoutError)
    async def body_timeout(request: Request, exc: BodyTimeoutError) -> Response:
        plane.count_refusal("rest", exc)
        return close_if_unread(request, JSON({"error": str(exc)}, status_code=408))

    @app.exception_handler(ClientGoneError)
    async def client_gone(request: Request, _: ClientGoneError) -> Response:
        # Once per connection, at debug level: a client that hangs up is not the server's error.
        log.debug("client %s went away before its request body was complete", request.client)
        return Response(status_code=499)  # nobody reads it

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        error = InvalidArgument(f"{where}: {first.get('msg', 'invalid request')}")
        plane.count_refusal("rest", error)
        return error_response(error)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> Response:
        return JSON({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> Response:
        log.exception("unhandled error in a REST route")
        plane.count_refusal("rest", exc)
        return error_response(exc)

    def body(request: Request, limit: int) -> BodyReader:
        return BodyReader(request, limit, settings.http_body_timeout_s, ration)

    async def small_body(request: Request) -> bytes:
        """A body read whole on the event loop: small by definition (``bulk_request_bytes``)."""
        return await body(request, small).read()

    async def bulk(request: Request, served: ServedVersion, kind: str, read: bytes | None = None) -> Response:
        """Admitted before the body is read, which is read at the pace of the event loop's budget for bulk bytes;
        the place is given back once the answer is sent. ``read``: the body, when it was read already (a small
        image found too large in pixels to decode here)."""
        deadline = _deadline(request)

        async def pace(size: int) -> None:
            await plane.bulk.pace(size, deadline)

        release = plane.admit_bulk()
        try:
            job: dict[str, Any] = {"kind": kind, "encoding": content_encoding(request)}
            if kind == "image":
                job["max_pixels"] = settings.max_image_pixels
            parts: list[bytes | bytearray | memoryview] = [] if read is None else [read]
            if read is None:
                reader = body(request, max_bytes)
                length = reader.declared_length()
                header = request.headers.get(HEADER_LENGTH) if kind == "v2" else None
                if header is not None:
                    job["header_length"] = header
                    n = int(header) if header.isdigit() else -1
                    if job["encoding"] is None and length is not None and 0 <= n <= min(length, small):
                        # The binary extension: its JSON header first, checked before the tensor data is read.
                        parts.append(await reader.prefix(n))
                        check_binary_header(parts[0], length - n, served.signature)
                elif kind == "image" and job["encoding"] is None and length is not None:
                    # An image's header first: too many pixels are refused before the rest is read.
                    parts.append(await reader.prefix(min(length, small)))
                    images.check_header(parts[0], settings.max_image_pixels)
                parts.extend(await reader.rest(pace))
            answer = await plane.infer_bulk("rest", served, job, parts, deadline)
            h = answer.reply.header
            rendered = Rendered(answer.reply.parts, h.get("header_length"))
            return rendered_response(rendered, answer.timing, answer.total_ns, release, ration)
        except BaseException:
            release()
            raise

    # Inference first: routes are matched in order, and these are the hot ones. The endpoint reads its path
    # parameters itself (they are declared for OpenAPI in INFER_PARAMETERS): FastAPI's per-request parameter
    # validation would cost more than computing a policy.
    @app.post("/v2/models/{model}/infer", tags=["inference"], responses=ERRORS,
              openapi_extra={"requestBody": INFER_BODY, "parameters": INFER_PARAMETERS[:1]})  # fmt: skip
    @app.post("/v2/models/{model}/versions/{version}/infer", tags=["inference"], responses=ERRORS,
              openapi_extra={"requestBody": INFER_BODY, "parameters": INFER_PARAMETERS})  # fmt: skip
    async def infer(request: Request) -> Response:
        path = request.path_params
        served = plane.resolve_for("rest", path["model"], path.get("version"))
        if not is_small(request, small):
            return await bulk(request, served, "v2")
        deadline = _deadline(request)
        raw = await small_body(request)
        header_length = request.headers.get(HEADER_LENGTH)
        parsed, binary = parse_infer_request(raw, header_length, path["model"], path.get("version"), served.signature)
        parsed.deadline_ns = deadline
        response = await plane.infer(parsed, served)
        return rendered_response(render_infer_response(response, binary), response.timing, response.total_ns)

    # -- health and metadata --------------------------------------------------------------------------------------

    @app.get("/v2/health/live", tags=["health"])
    async def live() -> Response:
        return JSON({"live": plane.live()})

    @app.get("/v2/health/ready", tags=["health"], responses={503: NOT_READY})
    async def ready() -> Response:
        ok = plane.ready()
        return JSON({"ready": ok}, status_code=200 if ok else 503)

    @app.get("/v2", tags=["metadata"])
    async def server_metadata() -> Response:
        return JSON(plane.server_metadata())

    # Before /v2/models/{model}, which would take "stats" for a model name. The path parameters are read from the
    # request: as function parameters, the ones a path lacks would become query parameters.
    @app.get("/v2/models/stats", tags=["statistics"], responses={200: MODEL_STATS, **ERRORS})
    @app.get("/v2/models/{model}/stats", tags=["statistics"], responses={200: MODEL_STATS, **ERRORS},
             openapi_extra={"parameters": INFER_PARAMETERS[:1]})  # fmt: skip
    @app.get("/v2/models/{model}/versions/{version}/stats", tags=["statistics"],
             responses={200: MODEL_STATS, **ERRORS}, openapi_extra={"parameters": INFER_PARAMETERS})  # fmt: skip
    async def model_statistics(request: Request) -> Response:
        path = request.path_params
        return JSON(statistics_json(plane.statistics(path.get("model"), path.get("version"))))

    @app.get("/v2/models/{model}", tags=["metadata"], responses=ERRORS)
    @app.get("/v2/models/{model}/versions/{version}", tags=["metadata"], responses=ERRORS)
    async def model_metadata(model: str, version: str | None = None) -> Response:
        return JSON(metadata_json(plane.model_metadata(model, version)))

    @app.get("/v2/models/{model}/ready", tags=["health"], responses={**ERRORS, 503: NOT_READY})
    @app.get("/v2/models/{model}/versions/{version}/ready", tags=["health"], responses={**ERRORS, 503: NOT_READY})
    async def model_ready(model: str, version: str | None = None) -> Response:
        ok = plane.model_ready(model, version)
        return JSON({"name": model, "ready": ok}, status_code=200 if ok else 503)

    @app.get("/v2/models/{model}/config", tags=["metadata"], responses=ERRORS)
    @app.get("/v2/models/{model}/versions/{version}/config", tags=["metadata"], responses=ERRORS)
    async def model_config(model: str, version: str | None = None) -> Response:
        return JSON(config_json(plane.model_config(model, version)))

    @app.get("/v1/models", tags=["kserve v1"], responses={403: ERROR})
    async def v1_models() -> Response:
        return JSON({"models": plane.model_names()})

    @app.get("/v1/models/{model}", tags=["kserve v1"], responses=ERRORS)
    async def v1_status(model: str) -> Response:
        return JSON({"name": model, "ready": plane.model_ready(model)})

    @app.post("/v1/models/{model}:predict", tags=["kserve v1"], openapi_extra={"requestBody": PREDICT_BODY},
              responses=ERRORS)  # fmt: skip
    async def v1_predict(request: Request, model: str) -> Response:
        served = plane.resolve_for("rest", model)
        if images.media_type(request.headers.get("content-type")) is not None:
            return await image_predict(request, served)
        if not is_small(request, small):
            return await bulk(request, served, "v1")
        deadline = _deadline(request)
        tensors = parse_predict(await small_body(request), served.signature)
        response = await plane.infer(InferRequest(model, tensors, deadline_ns=deadline), served)
        rendered = Rendered([render_predict(response.outputs, tensors[0].shape[0])], None)
        return rendered_response(rendered, response.timing, response.total_ns)

    async def image_predict(request: Request, served: ServedVersion) -> Response:
        """A PNG or JPEG body for a model with one image input (``service.images``), refused before it is read when
        the model takes none; decoded here when small in bytes and in pixels, else by a bulk worker."""
        target = images.image_input(served.signature, served.name)
        if not is_small(request, small):
            return await bulk(request, served, "image")
        deadline = _deadline(request)
        raw = await small_body(request)
        image = images.open_image(raw, settings.max_image_pixels)
        if image.width * image.height > images.INLINE_PIXELS:
            return await bulk(request, served, "image", raw)
        tensor = images.as_input(image, target)
        response = await plane.infer(InferRequest(served.name, [tensor], deadline_ns=deadline), served)
        rendered = Rendered([render_predict(response.outputs, 1)], None)
        return rendered_response(rendered, response.timing, response.total_ns)

    # -- repository extension -------------------------------------------------------------------------------------

    @app.post("/v2/repository/index", tags=["repository"])
    async def repository_index(request: Request) -> Response:
        obj = json_object(await small_body(request), "request body")
        ready_only = obj.get("ready", False)
        if not isinstance(ready_only, bool):
            raise InvalidArgument("ready: expected a boolean")
        return JSON([
            {k: v for k, v in {"name": e.name, "version": e.version, "state": e.state, "reason": e.reason}.items()
             if v != "" or k in ("name", "state")}
            for e in plane.repository_index(ready_only)
        ])  # fmt: skip

    @app.post("/v2/repository/models/{model}/load", tags=["repository"], responses={**ERRORS, 403: ERROR})
    async def repository_load(request: Request, model: str) -> Response:
        obj = json_object(await small_body(request), "request body")
        await plane.load(model, parameters_of(obj.get("parameters"), "parameters"))
        return JSON({})

    @app.post("/v2/repository/models/{model}/unload", tags=["repository"], responses={**ERRORS, 403: ERROR})
    async def repository_unload(request: Request, model: str) -> Response:
        obj = json_object(await small_body(request), "request body")
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
    return deadline_after(ms / 1e3)
