"""gRPC transport (grpc.aio): the OIP ``inference.GRPCInferenceService``, ``grpc.health.v1`` and server reflection.

Each method converts (``service.converters``) and calls the data plane. Errors are mapped to status codes in ONE
place, ``guard``, installed on every handler of our services when they are registered; it also turns undecodable
request bytes into INVALID_ARGUMENT (grpc would report them as INTERNAL).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from odetoode.proto.inference import grpc_service_pb2 as pb
from odetoode.proto.inference import grpc_service_pb2_grpc as pb_grpc
from odetoode.proto.pool import reflection_pool
from service import converters
from service.auth import OPEN_GRPC_PREFIXES, GrpcAuthInterceptor, TokenCheck
from service.dataplane import DataPlane
from service.errors import InvalidArgument, ModelNotFound, PayloadTooLarge, ServingError, client_message, status_of
from service.policy_service import SERVICE_NAME as POLICY_SERVICE_NAME
from service.policy_service import add_policy_service
from service.settings import ServerSettings

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
LIVENESS = "liveness"


class _Undecodable:
    """Stands in for a request that is refused before it is parsed (too large, or not protobuf), so that the method
    wrapper answers with the error's status."""

    __slots__ = ("error",)

    def __init__(self, error: ServingError) -> None:
        self.error = error


class Bulk:
    """A request message over ``bulk_request_bytes``, left unparsed: its method hands it to a bulk worker."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


def _sized(deserializer: Callable[[bytes], Any] | None, limit: int, bulk: bool) -> Callable[[bytes], Any] | None:
    """The deserializer of a method, behind a size check: a message over ``limit`` bytes is never parsed on the
    event loop -- it becomes a ``Bulk`` for the methods that take large requests, and a refusal for the others."""
    if deserializer is None:
        return None

    def parse(data: bytes) -> Any:
        if len(data) > limit:
            if bulk:
                return Bulk(data)
            return _Undecodable(
                PayloadTooLarge(
                    f"request: {len(data)} bytes, more than this method takes ({limit}, bulk_request_bytes)"
                )
            )
        try:
            return deserializer(data)
        except (DecodeError, ValueError, RuntimeWarning) as exc:
            return _Undecodable(InvalidArgument(f"request: not a valid protobuf message ({exc})"))

    return parse


def _serializer(serializer: Callable[[Any], bytes] | None) -> Callable[[Any], bytes] | None:
    """The serializer of a method, passing through answers that a bulk worker encoded already."""
    if serializer is None:
        return None

    def serialize(message: Any) -> bytes:
        return message if isinstance(message, bytes) else serializer(message)

    return serialize


async def _abort(context: grpc.aio.ServicerContext, error: BaseException) -> None:
    if not isinstance(error, ServingError):
        log.exception("unhandled error in a gRPC method", exc_info=error)
    await context.abort(status_of(error)[1], client_message(error))


class OpenStreams:
    """The streaming calls in progress, so that a shutdown can end each one itself -- UNAVAILABLE, "shutting down" --
    instead of leaving them to grpc, which cancels what is still open when it stops and logs a traceback for each."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()
        self.closing = False

    def add(self) -> asyncio.Task[Any] | None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        return task

    def discard(self, task: asyncio.Task[Any] | None) -> None:
        if task is not None:
            self._tasks.discard(task)

    def close_all(self) -> None:
        self.closing = True
        for task in list(self._tasks):
            task.cancel()

    async def ended(self, context: grpc.aio.ServicerContext) -> None:
        """How a stream ends when ``close_all`` cancelled it (any other cancellation propagates)."""
        if not self.closing:
            raise asyncio.CancelledError
        await context.abort(grpc.StatusCode.UNAVAILABLE, "the server is shutting down; call another replica")


def guard(
    handler: grpc.RpcMethodHandler, limit: int, bulk: bool = False, streams: OpenStreams | None = None
) -> grpc.RpcMethodHandler:
    """``handler`` with ``ServingError`` (and anything unexpected) mapped to the gRPC status of
    ``service.errors.ERROR_TABLE``, messages over ``limit`` bytes never parsed here (``_sized``), and undecodable
    request bytes answered INVALID_ARGUMENT; streaming calls are registered in ``streams`` while they run.

    One wrapper per handler kind: a unary handler returns, a streaming one yields, so the try/except cannot be
    shared without a context manager, which would cost every call an object of its own."""
    deserialize = _sized(handler.request_deserializer, limit, bulk)
    serialize = _serializer(handler.response_serializer)
    open_streams = streams if streams is not None else OpenStreams()
    if handler.unary_unary is not None:
        unary = handler.unary_unary

        async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                if isinstance(request, _Undecodable):
                    raise request.error
                return await unary(request, context)
            except grpc.aio.AbortError:
                raise
            except Exception as exc:  # ServingError and anything unexpected
                await _abort(context, exc)

        return grpc.unary_unary_rpc_method_handler(unary_unary, deserialize, serialize)
    if handler.stream_stream is not None:
        stream = handler.stream_stream

        async def checked(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
            async for request in requests:
                if isinstance(request, _Undecodable):
                    raise request.error
                yield request

        async def stream_stream(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
            task = open_streams.add()
            try:
                async for response in stream(checked(requests), context):
                    yield response
            except grpc.aio.AbortError:
                raise
            except asyncio.CancelledError:
                await open_streams.ended(context)
            except Exception as exc:  # ServingError and anything unexpected
                await _abort(context, exc)
            finally:
                open_streams.discard(task)

        return grpc.stream_stream_rpc_method_handler(stream_stream, deserialize, serialize)
    if handler.unary_stream is not None:
        produce = handler.unary_stream

        async def unary_stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
            task = open_streams.add()
            try:
                if isinstance(request, _Undecodable):
                    raise request.error
                async for response in produce(request, context):
                    yield response
            except grpc.aio.AbortError:
                raise
            except asyncio.CancelledError:
                await open_streams.ended(context)
            except Exception as exc:  # ServingError and anything unexpected
                await _abort(context, exc)
            finally:
                open_streams.discard(task)

        return grpc.unary_stream_rpc_method_handler(unary_stream, deserialize, serialize)
    return handler  # stream-unary: none registered here


class GuardedRegistration:
    """Stands in for the server while generated code registers a service: every handler is wrapped by ``guard``
    once, at registration -- no interceptor runs per call (an aio interceptor costs tens of microseconds per RPC,
    as much as a policy's computation). ``bulk`` names the methods that take large requests."""

    def __init__(
        self, server: grpc.aio.Server, limit: int, streams: OpenStreams, bulk: frozenset[str] = frozenset()
    ) -> None:
        self._server = server
        self._limit = limit
        self._streams = streams
        self._bulk = bulk

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        pass  # generated code registers the same handlers by name next; they are added, guarded, there

    def add_registered_method_handlers(self, service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        guarded = {name: guard(h, self._limit, name in self._bulk, self._streams) for name, h in handlers.items()}
        self._server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, guarded),))
        self._server.add_registered_method_handlers(service, guarded)


def _request_id(request: pb.ModelInferRequest | Bulk) -> str:
    """The id of a request, for an error answer on a stream ("" if it cannot be read)."""
    if isinstance(request, Bulk):
        try:
            return converters.scan_infer_request(request.data)[2]
        except ServingError:
            return ""
    return request.id


def deadline_ns(context: grpc.aio.ServicerContext) -> int | None:
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic_ns() + int(remaining * 1e9)


class InferenceService(pb_grpc.GRPCInferenceServiceServicer):
    """``inference.GRPCInferenceService`` over the data plane."""

    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane

    async def ServerLive(self, request: pb.ServerLiveRequest, context: Any) -> pb.ServerLiveResponse:  # noqa: N802
        return pb.ServerLiveResponse(live=self.plane.live())

    async def ServerReady(self, request: pb.ServerReadyRequest, context: Any) -> pb.ServerReadyResponse:  # noqa: N802
        return pb.ServerReadyResponse(ready=self.plane.ready())

    async def ModelReady(self, request: pb.ModelReadyRequest, context: Any) -> pb.ModelReadyResponse:  # noqa: N802
        # As Triton's gRPC endpoint: an unknown model or version is simply not ready (tritonclient expects a bool).
        try:
            return pb.ModelReadyResponse(ready=self.plane.model_ready(request.name, request.version or None))
        except ModelNotFound:
            return pb.ModelReadyResponse(ready=False)

    async def ServerMetadata(self, request: Any, context: Any) -> pb.ServerMetadataResponse:  # noqa: N802
        m = self.plane.server_metadata()
        return pb.ServerMetadataResponse(name=m["name"], version=m["version"], extensions=m["extensions"])

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Any) -> pb.ModelMetadataResponse:  # noqa: N802
        return converters.metadata_to_proto(self.plane.model_metadata(request.name, request.version or None))

    async def ModelConfig(self, request: pb.ModelConfigRequest, context: Any) -> pb.ModelConfigResponse:  # noqa: N802
        return converters.config_to_proto(self.plane.model_config(request.name, request.version or None))

    # The generated base class knows nothing of Bulk requests or of answers encoded by a bulk worker (bytes).
    async def ModelInfer(  # type: ignore[override]  # noqa: N802
        self, request: pb.ModelInferRequest | Bulk, context: Any
    ) -> pb.ModelInferResponse | bytes:
        if isinstance(request, Bulk):
            return await self._bulk(request.data, "grpc", deadline_ns(context))
        served = self.plane.resolve_for("grpc", request.model_name, request.model_version or None)
        req = converters.infer_request_from_proto(request, served.signature)
        req.deadline_ns = deadline_ns(context)
        return converters.infer_response_to_proto(await self.plane.infer(req, served))

    async def ModelStreamInfer(  # type: ignore[override]  # noqa: N802
        self, requests: AsyncIterator[pb.ModelInferRequest | Bulk], context: Any
    ) -> AsyncIterator[pb.ModelStreamInferResponse | bytes]:
        """Answers each request in order; a failed request yields ``error_message`` -- with the request's id, model
        and version in ``infer_response``, as Triton does, so a client knows which one failed -- and the stream goes
        on."""
        async for request in requests:
            try:
                if isinstance(request, Bulk):
                    yield await self._bulk(request.data, "grpc-stream", deadline_ns(context))
                    continue
                served = self.plane.resolve_for("grpc", request.model_name, request.model_version or None)
                req = converters.infer_request_from_proto(request, served.signature)
                req.deadline_ns = deadline_ns(context)
                response = converters.infer_response_to_proto(await self.plane.infer(req, served))
            except ServingError as exc:
                yield converters.stream_error(client_message(exc), _request_id(request))
                continue
            yield pb.ModelStreamInferResponse(infer_response=response)

    async def _bulk(self, data: bytes, kind: str, deadline: int | None) -> bytes:
        """A large ModelInfer: resolved from the top level of its bytes, then parsed, computed and encoded by a bulk
        worker; the answer comes back serialized."""
        name, version, _ = converters.scan_infer_request(data)
        served = self.plane.resolve_for("grpc", name, version or None)
        release = self.plane.admit_bulk()
        try:
            # gRPC copied this message whole on the event loop before we saw it (and copies the answer whole again):
            # it counts twice against the loop's budget for bulk bytes, so that such stalls stay rare for robots.
            await self.plane.bulk.pace(2 * len(data), deadline)
            answer = await self.plane.infer_bulk("grpc", served, {"kind": kind}, [data], deadline)
        finally:
            release()
        parts = answer.reply.parts
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def RepositoryIndex(self, request: pb.RepositoryIndexRequest, context: Any) -> pb.RepositoryIndexResponse:  # noqa: N802
        return converters.index_to_proto(self.plane.repository_index(request.ready))

    async def RepositoryModelLoad(  # noqa: N802
        self, request: pb.RepositoryModelLoadRequest, context: Any
    ) -> pb.RepositoryModelLoadResponse:
        await self.plane.load(request.model_name, dict(request.parameters))
        return pb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(  # noqa: N802
        self, request: pb.RepositoryModelUnloadRequest, context: Any
    ) -> pb.RepositoryModelUnloadResponse:
        await self.plane.unload(request.model_name, dict(request.parameters))
        return pb.RepositoryModelUnloadResponse()


class Health:
    """``grpc.health.v1``: readiness (service ``""``, the OIP and policy service names), one name per model, and
    ``liveness``, SERVING for as long as the process runs -- a liveness probe must not restart a server that is
    merely not ready (no model yet, or draining)."""

    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane
        self.servicer = health_aio.HealthServicer()
        self._models: set[str] = set()

    async def update(self) -> None:
        serving, not_serving = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
        server = serving if self.plane.ready() else not_serving
        await self.servicer.set(LIVENESS, serving)
        await self.servicer.set("", server)
        await self.servicer.set(SERVICE_NAME, server)
        await self.servicer.set(POLICY_SERVICE_NAME, server)
        names = {e.name for e in self.plane.repository.index()}
        for name in names | self._models:
            try:
                ok = name in names and not self.plane.draining and self.plane.model_ready(name)
            except ServingError:
                ok = False
            await self.servicer.set(name, serving if ok else not_serving)
        self._models = names


def grpc_max_message_bytes(settings: ServerSettings) -> int:
    return min(settings.grpc_max_message_bytes, settings.max_request_bytes)


def grpc_options(settings: ServerSettings, max_connections: int | None = None) -> list[tuple[str, Any]]:
    """Message limits, connection hygiene, and a keepalive policy that accepts the pings well-behaved clients send."""
    limit = grpc_max_message_bytes(settings)
    return [
        ("grpc.max_receive_message_length", limit),
        ("grpc.max_send_message_length", limit),
        ("grpc.keepalive_time_ms", int(settings.grpc_keepalive_time_s * 1000)),
        ("grpc.keepalive_timeout_ms", int(settings.grpc_keepalive_timeout_s * 1000)),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", int(settings.grpc_min_client_ping_interval_s * 1000)),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.so_reuseport", 0),
        # A connection that never completes its handshake (a silent or half-open socket) is closed after this long;
        # one without calls after max_connection_idle (clients reconnect on their next call); no more than
        # max_connections at once.
        ("grpc.server_handshake_timeout_ms", int(settings.grpc_handshake_timeout_s * 1000)),
        ("grpc.max_connection_idle_ms", int(settings.grpc_max_connection_idle_s * 1000)),
        ("grpc.max_allowed_incoming_connections", max_connections or settings.max_connections),
    ]


def build_grpc_server(
    plane: DataPlane,
    health: Health,
    extra_services: list[Callable[[grpc.aio.Server], str]] | None = None,
    max_connections: int | None = None,
    check: TokenCheck | None = None,
    streams: OpenStreams | None = None,
) -> grpc.aio.Server:
    """An unstarted grpc.aio server with the OIP service, health and reflection (plus ``extra_services``)."""
    interceptors: list[grpc.aio.ServerInterceptor] = []
    if check is not None and check.enabled:
        open_prefixes = OPEN_GRPC_PREFIXES if plane.settings.auth_open_health else ()
        interceptors.append(GrpcAuthInterceptor(check, open_prefixes))
    server = grpc.aio.server(interceptors=interceptors, options=grpc_options(plane.settings, max_connections))
    limit = plane.settings.bulk_request_bytes  # larger messages are never parsed on the event loop
    streams = streams if streams is not None else OpenStreams()
    bulk = frozenset({"ModelInfer", "ModelStreamInfer"})
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(
        InferenceService(plane), GuardedRegistration(server, limit, streams, bulk)
    )
    health_pb2_grpc.add_HealthServicer_to_server(health.servicer, GuardedRegistration(server, limit, streams))
    names = [
        SERVICE_NAME,
        add_policy_service(plane, GuardedRegistration(server, limit, streams)),
        health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
        reflection.SERVICE_NAME,
    ]
    for add in extra_services or []:
        names.append(add(server))
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
        reflection.aio.ReflectionServicer(names, pool=reflection_pool()), GuardedRegistration(server, limit, streams)
    )
    return server
