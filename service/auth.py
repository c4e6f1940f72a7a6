"""Bearer-token authentication for both transports: one check, two thin adapters.

Tokens are compared in constant time (``hmac.compare_digest``) against every accepted token, so a wrong token takes as
long to refuse whatever its prefix. Health, docs, reflection and metrics can stay open (the defaults) so probes and
scrapers need no secret.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc

from service.errors import Unauthenticated

OPEN_GRPC_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")
OPEN_REST_PREFIXES = ("/v2/health/", "/docs", "/openapi.json", "/redoc")


class TokenCheck:
    """Accepts ``Bearer <token>`` for any of ``tokens``; no tokens means authentication is off."""

    def __init__(self, tokens: Sequence[bytes]) -> None:
        self.tokens = [t for t in tokens if t]

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


class GrpcAuthInterceptor(grpc.aio.ServerInterceptor):
    """Refuses calls without an accepted token with UNAUTHENTICATED before any handler runs."""

    def __init__(self, check: TokenCheck, open_prefixes: Sequence[str]) -> None:
        self.check = check
        self.open_prefixes = tuple(open_prefixes)

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
            return _refusal(await continuation(details), str(exc))
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
    """Pure ASGI middleware: 401 ``{"error": ...}`` for HTTP requests without an accepted token."""

    def __init__(self, app: Any, check: TokenCheck, open_prefixes: Sequence[str]) -> None:
        self.app = app
        self.check = check
        self.open_prefixes = tuple(open_prefixes)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"].startswith(self.open_prefixes):
            await self.app(scope, receive, send)
            return
        authorization = next((v for k, v in scope.get("headers", ()) if k == b"authorization"), None)
        try:
            self.check.verify(authorization)
        except Unauthenticated as exc:
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
