"""HTTP/1.1 hygiene for every HTTP port of the server (REST and metrics): what uvicorn leaves to a proxy in front.

uvicorn closes idle keep-alive connections (``timeout_keep_alive``) but has no deadline for a request's head or body
and no bound on open connections, so 800 sockets that each send half a request line stay open forever, and a thousand
silent ones exhaust the process's file descriptors -- which stops every port, gRPC included. Here:

* ``guarded_protocol``: uvicorn's h11 protocol with a bound on open connections per listener (beyond it, a new
  connection is closed at once), a deadline for each request's head (from the connection's start or its previous
  response), and a deadline for a client that reads none of its response (its connection is dropped);
* ``FramingGuard``: refuses (400, connection closed) a request that carries both ``Content-Length`` and
  ``Transfer-Encoding``, the classic request-smuggling ambiguity, which h11 would resolve silently;
* ``BodyReader``: reads a request body in the chunks it arrives in, with a deadline between chunks (408 and the
  connection closed), a byte limit, and a client that goes away mid-body logged once, at debug level;
* ``PartsResponse``: a response sent in the parts it was rendered in (never joined into one copy).
"""

from __future__ import annotations

import asyncio
import logging
import random
import resource
import socket
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import h11
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT
from uvicorn.protocols.http.h11_impl import H11Protocol

from service.errors import InvalidArgument, PayloadTooLarge
from service.ration import Ration

log = logging.getLogger(__name__)

CLOSE = (b"connection", b"close")
_jitter = random.Random()  # its own generator: the global one is the application's (and the test suite's)
READ_SIZE = 64 * 1024
"""Bytes read from a socket at a time (asyncio reads 256 KiB). A large body then moves through the event loop in
pieces of ~0.05 ms each, in buffers that glibc recycles in its heap instead of mapping and unmapping them
(``service.memory``) -- which at 256 KiB cost ~1 ms of page faults per piece here."""


class BodyTimeoutError(Exception):
    """The client stopped sending its request body; answered 408 and the connection is closed."""


class ClientGoneError(Exception):
    """The client closed its connection before its request body was complete; nothing is answered."""


CLIENT_MISTAKES = ("Invalid HTTP request received.", "Unsupported upgrade request.")
"""What uvicorn logs as warnings about a client's request (a client that hangs up mid-body makes the first)."""


class ClientMistakesAtDebug:
    """uvicorn's logger for one connection, with its warnings about what the client did wrong at debug level: a
    truncated or invalid request is not the server's problem, and a flood of them must not flood the log."""

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger

    def warning(self, msg: object, *args: Any, **kwargs: Any) -> None:
        level = logging.DEBUG if msg in CLIENT_MISTAKES else logging.WARNING
        self._logger.log(level, msg, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._logger, name)


class RateLimitedWarning:
    """A warning logged at most once per ``period_s``, with how many times it happened meanwhile: under a flood, one
    line every few seconds instead of one per event."""

    def __init__(self, message: str, period_s: float = 10.0) -> None:
        self.message, self.period_s = message, period_s
        self._count, self._last = 0, float("-inf")

    def __call__(self) -> None:
        self._count += 1
        now = time.monotonic()
        if now - self._last >= self.period_s:
            log.warning("%s (%d times since the last such line)", self.message, self._count)
            self._count, self._last = 0, now


def guarded_protocol(
    max_connections: int, head_timeout_s: float, write_timeout_s: float, ration: Ration | None = None
) -> type[H11Protocol]:
    """uvicorn's h11 protocol with a connection bound and head and write deadlines (one class per listener, so each
    port counts its own connections).

    At the bound, a new connection takes the place of the one that has waited longest without sending a complete
    request head (a silent or half-open socket, or an idle keep-alive one): a client that sends its request at once
    -- a health probe, a robot -- always gets in, and a flood of silent sockets only replaces its own. Only when
    every connection has a request in progress is the new one refused.

    With a ``ration``, the bytes a connection receives are parsed in their turn (``service.ration``)."""
    waiting: OrderedDict[H11Protocol, None] = OrderedDict()  # connections without a request in progress, oldest first
    evicted = RateLimitedWarning(f"{max_connections} connections open on a port (max_connections): closed the one "
                                 "waiting longest without a request to make room")  # fmt: skip
    refused = RateLimitedWarning(f"{max_connections} connections open on a port, all with requests in progress "
                                 "(max_connections): refused a new one")  # fmt: skip

    class GuardedH11Protocol(H11Protocol):
        _head_timer: asyncio.TimerHandle | None = None
        _head_due: float | None = None
        """When the head of the next request is due (``None``: a request is in progress)."""
        _write_timer: asyncio.TimerHandle | None = None
        _deferred: list[bytes] | None = None
        _paused_for_turn = False

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            self.logger = ClientMistakesAtDebug(self.logger)  # type: ignore[assignment]
            if len(self.connections) >= max_connections:
                if not waiting:
                    refused()
                    transport.abort()
                    return
                oldest, _ = waiting.popitem(last=False)
                evicted()
                oldest.transport.abort()
            super().connection_made(transport)
            if hasattr(transport, "max_size"):
                transport.max_size = READ_SIZE
            sock = transport.get_extra_info("socket")
            if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
                # No Nagle: an answer written in parts (head, then body) goes out at once, not 40 ms later when the
                # client's delayed acknowledgement arrives.
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._waiting()

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_timers()
            waiting.pop(self, None)
            if self.transport is None:  # refused in connection_made: never counted
                return
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if ration is not None:
                if self._deferred is not None:
                    self._deferred.append(data)  # behind what waits already, in order
                    return
                if ration.spent():
                    # Not now: read no more from this connection until these bytes had their turn (through
                    # uvicorn's own flow control, so that the two do not undo each other's pauses).
                    self._deferred = [data]
                    self._paused_for_turn = not self.flow.read_paused
                    self.flow.pause_reading()
                    ration.later(self._deliver)
                    return
                ration.charge()
            self._receive(data)

        def _deliver(self) -> None:
            data, self._deferred = b"".join(self._deferred or ()), None
            if self.transport.is_closing():
                return
            self._receive(data)
            body_full = self.cycle is not None and len(self.cycle.body) > HIGH_WATER_LIMIT
            if self._paused_for_turn and not body_full and not self.transport.is_closing():
                self.flow.resume_reading()  # unless uvicorn wants it paused itself now

        def _receive(self, data: bytes) -> None:
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE and self._head_due is not None:
                self._head_due = None  # the head is complete (its timer, if it fires, finds nothing due)
                waiting.pop(self, None)

        def on_response_complete(self) -> None:
            super().on_response_complete()  # may start a request pipelined behind this one
            if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
                self._waiting()  # the next request's head gets its own deadline

        def pause_writing(self) -> None:
            super().pause_writing()
            if self._write_timer is None:
                self._write_timer = self.loop.call_later(write_timeout_s, self._stalled_reader)

        def resume_writing(self) -> None:
            super().resume_writing()
            if self._write_timer is not None:
                self._write_timer.cancel()
                self._write_timer = None

        def _waiting(self) -> None:
            """No request in progress: the head of the next is due within ``head_timeout_s`` -- up to 10% later at
            random, so that sockets opened together (a flood) are not all closed in the same turn. One timer per
            connection at a time: a request that comes in time only moves the deadline, which the timer finds."""
            waiting[self] = None
            waiting.move_to_end(self)
            self._head_due = self.loop.time() + head_timeout_s * (1 + 0.1 * _jitter.random())
            if self._head_timer is None:
                self._head_timer = self.loop.call_at(self._head_due, self._head_overdue)

        def _head_overdue(self) -> None:
            self._head_timer = None
            due = self._head_due
            if due is None or self.transport.is_closing():
                return
            if self.loop.time() < due:  # moved by a later request: look again then
                self._head_timer = self.loop.call_at(due, self._head_overdue)
            elif self.conn.their_state is h11.IDLE:
                log.debug("closing a connection that sent no complete request head in %.0f s", head_timeout_s)
                self.transport.abort()

        def _stalled_reader(self) -> None:
            self._write_timer = None
            log.debug("closing a connection that read none of its response in %.0f s", write_timeout_s)
            self.transport.abort()

        def _cancel_timers(self) -> None:
            for timer in (self._head_timer, self._write_timer):
                if timer is not None:
                    timer.cancel()
            self._head_timer = self._write_timer = None

    return GuardedH11Protocol


class FramingGuard:
    """Pure ASGI middleware, first in line: a request with both ``Content-Length`` and ``Transfer-Encoding`` is
    refused (400) and its connection closed, before any route sees it; with a ``ration``, every request but those
    under ``unrationed`` (health: probes must answer however busy the server is) waits for its turn first."""

    def __init__(self, app: Any, ration: Ration | None = None, unrationed: tuple[str, ...] = ()) -> None:
        self.app = app
        self.ration = ration
        self.unrationed = unrationed

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            if self.ration is not None and not scope["path"].startswith(self.unrationed):
                await self.ration.turn()
            names = {name for name, _ in scope["headers"]}
            if b"content-length" in names and b"transfer-encoding" in names:
                body = b'{"error":"request: Content-Length and Transfer-Encoding together are ambiguous"}'
                length = (b"content-length", str(len(body)).encode())
                headers = [(b"content-type", b"application/json"), length, CLOSE]
                await send({"type": "http.response.start", "status": 400, "headers": headers})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


class BodyReader:
    """A request's body as it arrives: at most ``limit`` bytes, with at most ``timeout_s`` between two chunks.

    ``body_pending`` tells whether a request's body is not (all) read: an error answered then (too large, refused
    early, a model that does not exist) closes the connection instead of letting the server read and discard the rest.
    """

    def __init__(self, request: Request, limit: int, timeout_s: float, ration: Ration | None = None) -> None:
        self.request = request
        self.limit = limit
        self.timeout_s = timeout_s
        self.ration = ration
        self.size = 0
        self._chunks = request.stream().__aiter__()
        self._pending: list[bytes] = []

    def declared_length(self) -> int | None:
        """``Content-Length``, refused (413) when over the limit before a byte is read."""
        declared = self.request.headers.get("content-length")
        if declared is None:
            return None
        try:
            length = int(declared)
        except ValueError:
            raise InvalidArgument("Content-Length: not an integer") from None
        if length > self.limit:
            raise PayloadTooLarge(f"request body of {length} bytes exceeds the {self.limit}-byte limit")
        return length

    async def _next(self) -> bytes | None:
        """The next chunk, within ``timeout_s``, in its turn."""
        if self.ration is not None:
            await self.ration.turn()
        try:
            async with asyncio.timeout(self.timeout_s):
                return self._count(await anext(self._chunks))
        except TimeoutError:
            raise BodyTimeoutError(f"request body: nothing received for {self.timeout_s:g} s") from None
        except StopAsyncIteration:
            return None
        except ClientDisconnect:
            raise ClientGoneError from None

    def _count(self, chunk: bytes) -> bytes:
        self.size += len(chunk)
        if self.size > self.limit:
            raise PayloadTooLarge(f"request body exceeds the {self.limit}-byte limit")
        return chunk

    async def prefix(self, size: int) -> bytes:
        """The first ``size`` bytes (fewer if the body ends first); what follows stays for ``rest``."""
        have = sum(len(c) for c in self._pending)
        while have < size:
            chunk = await self._next()
            if chunk is None:
                break
            self._pending.append(chunk)
            have += len(chunk)
        joined = b"".join(self._pending)
        self._pending = [joined[size:]] if len(joined) > size else []
        return joined[:size]

    async def rest(self, pace: Callable[[int], Awaitable[None]] | None = None) -> list[bytes]:
        """Every remaining chunk, as it arrived (never joined: a large body is never copied whole); ``pace`` is
        awaited with each chunk's size before the next one is read."""
        parts, self._pending = self._pending, []
        while (chunk := await self._next()) is not None:
            parts.append(chunk)
            if pace is not None:
                await pace(len(chunk))
        self.request.state.body_read = True
        return parts

    async def read(self) -> bytes:
        """The whole of a small body (at most ``limit`` bytes), joined: read within one ``timeout_s`` and without
        taking turns per chunk (its request took its turn; a body this small is a piece of work of its own size)."""
        parts = []
        try:
            async with asyncio.timeout(self.timeout_s):
                async for chunk in self._chunks:
                    parts.append(self._count(chunk))
        except TimeoutError:
            raise BodyTimeoutError(f"request body: nothing received for {self.timeout_s:g} s") from None
        except ClientDisconnect:
            raise ClientGoneError from None
        self.request.state.body_read = True
        return b"".join(parts)


def body_pending(request: Request) -> bool:
    """Whether ``request`` has a body that was not read to its end."""
    if getattr(request.state, "body_read", False):
        return False
    headers = request.headers
    return "transfer-encoding" in headers or headers.get("content-length", "0").strip() not in ("", "0")


class PartsResponse(Response):
    """A response body sent part after part, as rendered (joined when small), with its ``Content-Length``."""

    def __init__(
        self,
        parts: Sequence[bytes],
        media_type: str,
        headers: dict[str, str],
        status_code: int = 200,
        ration: Ration | None = None,
    ) -> None:
        super().__init__(None, status_code, headers, media_type)
        self.ration = ration
        self.parts = [p for p in parts if p]
        size = sum(len(p) for p in self.parts)
        if len(self.parts) > 1 and size <= READ_SIZE:
            # Small: one write. Each part is a send() of its own, and on a fast link each costs more than the copy.
            self.parts = [b"".join(self.parts)]
        self.headers["content-length"] = str(size)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            last = len(self.parts) - 1
            for index, part in enumerate(self.parts):
                await send({"type": "http.response.body", "body": part, "more_body": index < last})
                if index < last:
                    # send() returns at once while the client keeps up: wait a turn, for the loop's other work, and
                    # so that a client gone meanwhile is noticed before the next part (asyncio warns of writes to a
                    # lost connection).
                    await asyncio.sleep(0)
                    if self.ration is not None:
                        await self.ration.turn()
            if not self.parts:
                await send({"type": "http.response.body", "body": b""})
        finally:
            if self.background is not None:  # gives back what the request held (a bulk place), sent or not
                await self.background()


def raise_file_limit(wanted: int) -> int:
    """Raises this process's open-file limit towards ``wanted`` (up to its hard limit); returns the soft limit now.

    Many systems start processes at 1,024 descriptors with a far higher hard limit; a server that holds one per
    connection, per model file and per worker wants the headroom (Go's runtime raises it the same way)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            log.warning("could not raise the open-file limit from %d to %d", soft, target)
    return soft
