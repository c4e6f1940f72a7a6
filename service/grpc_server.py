"""gRPC transport (grpc.aio): the OIP ``inference.GRPCInferenceService``, ``grpc.health.v1`` and server reflection.

Each method converts (``service.oip_codec``) and calls the data plane. Errors are mapped to status codes in ONE
place, ``service.grpc_guard``, installed on every handler of every service when it is registered.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import grpc
from grpc_health.v1 import health_pb2
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection, reflection_pb2

from odetoode.proto.inference import grpc_service_pb2 as pb
from odetoode.proto.inference import grpc_service_pb2_grpc as pb_grpc
from odetoode.proto.pool import reflection_pool
from service import oip_codec
from service.auth import OPEN_GRPC_PREFIXES, GrpcAuthInterceptor, TokenCheck
from service.batching import deadline_after
from service.dataplane import DataPlane
from service.errors import ModelNotFound, ServingError, client_message
from service.grpc_guard import Bulk, OpenStreams, register
from service.policy_service import SERVICE as POLICY_SERVICE
from service.policy_service import SERVICE_NAME as POLICY_SERVICE_NAME
from service.policy_service import PolicyService
from service.settings import ServerSettings

log = logging.getLogger(__name__)

SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
SERVICE_NAME = SERVICE.full_name
LIVENESS = "liveness"


def _request_id(request: pb.ModelInferRequest | Bulk) -> str:
    """The id of a request, for an error answer on a stream ("" if it cannot be read)."""
    if isinstance(request, Bulk):
        try:
            return oip_codec.scan_infer_request(request.data)[2]
        except ServingError:
            return ""
    return request.id


def deadline_ns(context: grpc.aio.ServicerContext) -> int | None:
    return deadline_after(context.time_remaining())


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
        return oip_codec.metadata_to_proto(self.plane.model_metadata(request.name, request.version or None))

    async def ModelConfig(self, request: pb.ModelConfigRequest, context: Any) -> pb.ModelConfigResponse:  # noqa: N802
        return oip_codec.config_to_proto(self.plane.model_config(request.name, request.version or None))

    async def ModelStatistics(  # noqa: N802
        self, request: pb.ModelStatisticsRequest, context: Any
    ) -> pb.ModelStatisticsResponse:
        return oip_codec.statistics_to_proto(self.plane.statistics(request.name or None, request.version or None))

    # The generated base class knows nothing of Bulk requests or of answers encoded by a bulk worker (bytes).
    async def ModelInfer(  # type: ignore[override]  # noqa: N802
        self, request: pb.ModelInferRequest | Bulk, context: Any
    ) -> pb.ModelInferResponse | bytes:
        if isinstance(request, Bulk):
            return await self._bulk(request.data, "grpc", deadline_ns(context))
        served = self.plane.resolve_for("grpc", request.model_name, request.model_version or None)
        req = oip_codec.infer_request_from_proto(request, served.signature)
        req.deadline_ns = deadline_ns(context)
        return oip_codec.infer_response_to_proto(await self.plane.infer(req, served))

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
                req = oip_codec.infer_request_from_proto(request, served.signature)
                req.deadline_ns = deadline_ns(context)
                response = oip_codec.infer_response_to_proto(await self.plane.infer(req, served))
            except ServingError as exc:
                yield oip_codec.stream_error(client_message(exc), _request_id(request))
                continue
            yield oip_codec.stream_answer(response)

    async def _bulk(self, data: bytes, kind: str, deadline: int | None) -> bytes:
        """A large ModelInfer: resolved from the top level of its bytes, then parsed, computed and encoded by a bulk
        worker; the answer comes back serialized."""
        name, version, _ = oip_codec.scan_infer_request(data)
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
        return oip_codec.index_to_proto(self.plane.repository_index(request.ready))

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


def _count_refusal(plane: DataPlane, method: str, error: BaseException) -> None:
    """Counts a call refused before its handler under the protocol its service's own refusals are counted as."""
    plane.count_refusal("policy" if method.startswith(f"/{POLICY_SERVICE_NAME}/") else "grpc", error)


def build_grpc_server(
    plane: DataPlane,
    health: Health,
    max_connections: int | None = None,
    check: TokenCheck | None = None,
    streams: OpenStreams | None = None,
) -> grpc.aio.Server:
    """An unstarted grpc.aio server with the OIP service, the policy service, health and reflection."""
    interceptors: list[grpc.aio.ServerInterceptor] = []
    if check is not None and check.enabled:
        open_prefixes = OPEN_GRPC_PREFIXES if plane.settings.auth_open_health else ()
        interceptors.append(GrpcAuthInterceptor(check, open_prefixes, refused=partial(_count_refusal, plane)))
    server = grpc.aio.server(interceptors=interceptors, options=grpc_options(plane.settings, max_connections))
    limit = plane.settings.bulk_request_bytes  # larger messages are never parsed on the event loop
    streams = streams if streams is not None else OpenStreams()
    names = [
        register(
            server,
            InferenceService(plane),
            SERVICE,
            limit,
            streams,
            bulk=frozenset({"ModelInfer", "ModelStreamInfer"}),
            refused=partial(plane.count_refusal, "grpc"),
        ),
        register(
            server, PolicyService(plane), POLICY_SERVICE, limit, streams, refused=partial(plane.count_refusal, "policy")
        ),
        register(server, health.servicer, health_pb2.DESCRIPTOR.services_by_name["Health"], limit, streams),
    ]
    reflection_service = reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"]
    names.append(reflection_service.full_name)  # reflection describes itself too
    servicer = reflection.aio.ReflectionServicer(names, pool=reflection_pool())
    register(server, servicer, reflection_service, limit, streams)
    return server
