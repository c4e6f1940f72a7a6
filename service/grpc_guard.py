"""What every gRPC method of the server goes through, installed once per handler when a service is registered: error
mapping to status codes (``service.errors.ERROR_TABLE``), a size bound before any message is parsed, undecodable
requests answered INVALID_ARGUMENT (grpc would report them as INTERNAL), and the bookkeeping of open streams that
a shutdown ends itself.

Handlers are built from each service's descriptor (``register``), not through the generated ``add_*_to_server``
functions: wrapping is explicit, once per method, and no interceptor runs per call (an aio interceptor costs tens of
microseconds per RPC, as much as a policy's computation).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.message import DecodeError

from service.errors import InvalidArgument, PayloadTooLarge, ServingError, client_message, status_of

log = logging.getLogger(__name__)


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


def _sized(deserializer: Callable[[bytes], Any], limit: int, bulk: bool) -> Callable[[bytes], Any]:
    """The deserializer of a method, refusing messages over ``limit`` bytes before protobuf parses them on the event
    loop -- it becomes a ``Bulk`` for the methods that take large requests, and a refusal for the others."""

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


def _serializer(serializer: Callable[[Any], bytes]) -> Callable[[Any], bytes]:
    """The serializer of a method, passing through answers that a bulk worker encoded already."""

    def serialize(message: Any) -> bytes:
        return message if isinstance(message, bytes) else serializer(message)

    return serialize


def _decoded(request: Any) -> Any:
    if isinstance(request, _Undecodable):
        raise request.error
    return request


async def _decoded_stream(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    async for request in requests:
        yield _decoded(request)


Refused = Callable[[BaseException], None]
"""Told of every error a guarded method answers (``DataPlane.count_refusal`` counts those it did not count itself)."""


async def _abort(context: grpc.aio.ServicerContext, error: BaseException, refused: Refused | None) -> None:
    if not isinstance(error, ServingError):
        log.exception("unhandled error in a gRPC method", exc_info=error)
    if refused is not None:
        refused(error)
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


Behaviour = Callable[[Any, grpc.aio.ServicerContext], Any]


def _guarded_unary(behaviour: Behaviour, refused: Refused | None) -> Behaviour:
    async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await behaviour(_decoded(request), context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:  # ServingError and anything unexpected
            await _abort(context, exc, refused)

    return unary


def _guarded_stream(
    behaviour: Behaviour, streams: OpenStreams, client_streaming: bool, refused: Refused | None
) -> Behaviour:
    """A server-streaming method (its requests a stream too, or one message), registered in ``streams`` while it
    runs. (Its own wrapper: an answer that yields cannot share the unary one's ``return``.)"""
    decoded = _decoded_stream if client_streaming else _decoded

    async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        task = streams.add()
        try:
            async for response in behaviour(decoded(request), context):
                yield response
        except grpc.aio.AbortError:
            raise
        except asyncio.CancelledError:
            await streams.ended(context)
        except Exception as exc:  # ServingError and anything unexpected
            await _abort(context, exc, refused)
        finally:
            streams.discard(task)

    return stream


def guarded_handler(
    servicer: object,
    method: MethodDescriptor,
    limit: int,
    streams: OpenStreams,
    bulk: bool = False,
    refused: Refused | None = None,
) -> grpc.RpcMethodHandler:
    """The handler of ``method`` on ``servicer`` (its attribute of the method's name), guarded: see the module."""
    request = message_factory.GetMessageClass(method.input_type)
    response = message_factory.GetMessageClass(method.output_type)
    deserialize = _sized(request.FromString, limit, bulk)
    serialize = _serializer(response.SerializeToString)
    behaviour = getattr(servicer, method.name)
    if not method.server_streaming:
        if method.client_streaming:
            raise NotImplementedError(f"{method.full_name}: client-streaming methods are not served here")
        return grpc.unary_unary_rpc_method_handler(_guarded_unary(behaviour, refused), deserialize, serialize)
    guarded = _guarded_stream(behaviour, streams, method.client_streaming, refused)
    if method.client_streaming:
        return grpc.stream_stream_rpc_method_handler(guarded, deserialize, serialize)
    return grpc.unary_stream_rpc_method_handler(guarded, deserialize, serialize)


def register(
    server: grpc.aio.Server,
    servicer: object,
    service: ServiceDescriptor,
    limit: int,
    streams: OpenStreams,
    bulk: frozenset[str] = frozenset(),
    refused: Refused | None = None,
) -> str:
    """Serves every method of ``service`` from ``servicer``, each guarded; ``bulk`` names the methods that take
    large requests (over ``limit`` bytes they reach the method unparsed, as ``Bulk``); ``refused`` is told of every
    error answered. Returns the service's name."""
    handlers = {m.name: guarded_handler(servicer, m, limit, streams, m.name in bulk, refused) for m in service.methods}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))
    server.add_registered_method_handlers(service.full_name, handlers)
    return service.full_name
