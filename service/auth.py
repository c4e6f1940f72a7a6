"""Bearer-token authentication for both transports: one check, two thin adapters, and where the tokens come from.

Tokens are compared in constant time (``hmac.compare_digest``) against every accepted token, so a wrong token takes as
long to refuse whatever its prefix. Health, docs, reflection and metrics can stay open (the defaults) so probes and
scrapers need no secret. Each refusal is told to a ``refused`` callback (the server counts it in
``odetoode_request_refusals_total`` with reason ``Unauthenticated``): a refusal happens before any handler, so the
transports' own error accounting never sees it.

Authentication fails closed: a token file that yields no token refuses the server's start instead of turning
authentication off, and a rotation that yields none keeps the tokens in force. The file is re-read when it changes --
Kubernetes rotates a mounted secret by swapping the ``..data`` symlink of its volume, so the file's path stays and its
identity (device, inode, size, modification time, seen through the links) changes.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import grpc

from service.errors import Unauthenticated
from service.settings import ConfigurationError, ServerSettings

log = logging.getLogger(__name__)

OPEN_GRPC_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")
OPEN_REST_PREFIXES = ("/v2/health/", "/docs", "/openapi.json", "/redoc")


def read_token_file(path: Path) -> list[bytes]:
    """One token per line; blank lines and lines starting with ``#`` are not tokens."""
    tokens = []
    for line in path.read_bytes().splitlines():
        token = line.strip()
        if token and not token.startswith(b"#"):
            tokens.append(token)
    return tokens


class TokenSource:
    """The accepted tokens: ``auth_tokens`` plus those of ``auth_token_file``, kept current by ``refresh``."""

    def __init__(self, settings: ServerSettings) -> None:
        self._static = [t.get_secret_value().strip().encode() for t in settings.auth_tokens]
        if any(not t for t in self._static):
            raise ConfigurationError("auth_tokens: a token is empty")
        self.file = settings.auth_token_file
        self._stamp: tuple[int, ...] | None = None
        self.tokens: tuple[bytes, ...] = tuple(self._static)
        if self.file is not None:
            try:
                from_file = self._read()
            except OSError as exc:
                raise ConfigurationError(f"auth_token_file: cannot read it ({exc.strerror or exc})") from None
            if not from_file:
                raise ConfigurationError(
                    "auth_token_file: it holds no token (blank lines and # comments are not tokens); refusing to "
                    "start without the authentication it asks for"
                )
            self.tokens = (*self._static, *from_file)

    @property
    def enabled(self) -> bool:
        return bool(self.tokens)

    def _read(self) -> list[bytes]:
        assert self.file is not None
        st = os.stat(self.file)  # through the symlinks: a swapped ..data link changes what this sees
        self._stamp = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        return read_token_file(self.file)

    def refresh(self) -> bool:
        """Re-reads the token file if it changed; returns whether the tokens changed. A file that cannot be read or
        yields no token leaves the tokens in force (and says so in the log)."""
        if self.file is None:
            return False
        try:
            st = os.stat(self.file)
            if (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns) == self._stamp:
                return False
            from_file = self._read()
        except OSError as exc:
            log.error("auth_token_file: cannot read it (%s); the tokens in force stay", exc.strerror or exc)
            return False
        if not from_file:
            log.error("auth_token_file: it now holds no token; the tokens in force stay")
            return False
        tokens = (*self._static, *from_file)
        changed = tokens != self.tokens
        self.tokens = tokens
        if changed:
            log.info("auth_token_file changed: %d token(s) accepted now", len(tokens))
        return changed

    async def watch(self, interval_s: float) -> None:
        """Refreshes every ``interval_s`` (a stat; the file is read only when it changed)."""
        while True:
            await asyncio.sleep(interval_s)
            self.refresh()


class TokenCheck:
    """Accepts ``Bearer <token>`` for any token of ``source``; a source without tokens means authentication is off."""

    def __init__(self, source: TokenSource | Sequence[bytes]) -> None:
        self.source = source

    @property
    def tokens(self) -> Sequence[bytes]:
        return self.source.tokens if isinstance(self.source, TokenSource) else [t for t in self.source if t]

    @property
    def enabled(self) -> bool:
        return bool(self.tokens)

    def verify(self, authorization: str | bytes | None) -> None:
        if authorization is None:
            raise Unauthenticated("authorization: missing; send 'Bearer <token>'")
        value = authorization.encode() if isinstance(authorization, str) else authorization
        scheme, _, token = value.partition(b" ")
        if scheme.lower() != b"bearer" or not token:
            raise Unauthenticated("authorization: expected 'Bearer <token>'")
        matched = False
        for accepted in self.tokens:  # no early exit: the time does not say which token nearly matched
            matched |= hmac.compare_digest(token.strip(), accepted)
        if not matched:
            raise Unauthenticated("authorization: token not accepted")


GrpcRefused = Callable[[str, Unauthenticated], None]
"""Told of each gRPC call refused, with its method (``/package.Service/Method``)."""

RestRefused = Callable[[Unauthenticated], None]
"""Told of each HTTP request refused."""


class GrpcAuthInterceptor(grpc.aio.ServerInterceptor):
    """Refuses calls without an accepted token with UNAUTHENTICATED before any handler runs, and tells ``refused``."""

    def __init__(self, check: TokenCheck, open_prefixes: Sequence[str], refused: GrpcRefused | None = None) -> None:
        self.check = check
        self.open_prefixes = tuple(open_prefixes)
        self.refused = refused

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        if details.method.startswith(self.open_prefixes):
            return await continuation(details)
        authorization = next((v for k, v in details.invocation_metadata or () if k == "authorization"), None)
        try:
            self.check.verify(authorization)
        except Unauthenticated as exc:
            handler = await continuation(details)
            if handler is not None and self.refused is not None:  # no handler: UNIMPLEMENTED, not a refusal
                self.refused(details.method, exc)
            return _refusal(handler, str(exc))
        return await continuation(details)


def _refusal(handler: grpc.RpcMethodHandler | None, message: str) -> grpc.RpcMethodHandler | None:
    """A handler of the same shape as ``handler`` that aborts with UNAUTHENTICATED."""
    if handler is None:
        return None

    async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    async def stream(requests: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
        yield  # pragma: no cover - makes this an async generator

    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(unary)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(stream)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(unary)
    return grpc.stream_stream_rpc_method_handler(stream)


class RestAuthMiddleware:
    """Pure ASGI middleware: 401 ``{"error": ...}`` for HTTP requests without an accepted token, told to
    ``refused``."""

    def __init__(
        self, app: Any, check: TokenCheck, open_prefixes: Sequence[str], refused: RestRefused | None = None
    ) -> None:
        self.app = app
        self.check = check
        self.open_prefixes = tuple(open_prefixes)
        self.refused = refused

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"].startswith(self.open_prefixes):
            await self.app(scope, receive, send)
            return
        authorization = next((v for k, v in scope.get("headers", ()) if k == b"authorization"), None)
        try:
            self.check.verify(authorization)
        except Unauthenticated as exc:
            if self.refused is not None:
                self.refused(exc)
            body = b'{"error":' + _json_string(str(exc)) + b"}"
            await send({"type": "http.response.start", "status": 401, "headers": [
                (b"content-type", b"application/json"), (b"www-authenticate", b'Bearer realm="odetoode"'),
                (b"content-length", str(len(body)).encode())]})  # fmt: skip
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send)


def _json_string(text: str) -> bytes:
    import json

    return json.dumps(text).encode()
