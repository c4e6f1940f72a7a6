"""One error hierarchy for the whole server, and ONE table mapping each error to an HTTP status and a gRPC code.

Transports never pick a status themselves: REST installs one exception handler and gRPC wraps every handler once at
registration (``service.grpc_guard``), both of which look the error up here, so the two cannot drift apart
(``tests/service/test_errors.py`` walks this table over both).
"""

from __future__ import annotations

import re
from http import HTTPStatus
from typing import Final

import grpc


class ServingError(Exception):
    """Base of every error a client may see. ``str(error)`` is the message sent to the client."""

    counted = False
    """Set once the data plane counted it as a failed request (``odetoode_request_failures_total``); a transport
    counts any other error it answers as a refusal (``odetoode_request_refusals_total``)."""


class InvalidArgument(ServingError):
    """The request is malformed: unknown input, wrong shape/datatype, bad JSON or protobuf, data length mismatch."""


class ModelNotFound(ServingError):
    """No model (or no such version of a model) exists in the repository."""


class ModelNotReady(ServingError):
    """The model exists but no version that matches the request is ready (loading, failed, or unloaded)."""


class PayloadTooLarge(ServingError):
    """The request body or message exceeds the configured limit."""


class QueueFull(ServingError):
    """The model's request queue is at its bound; retry later."""


class DeadlineExceeded(ServingError):
    """The client's deadline passed before the request could be computed; it was not computed."""


class Unavailable(ServingError):
    """The server is shutting down (draining) and takes no new requests."""


class PermissionDenied(ServingError):
    """The operation is disabled by configuration (e.g. repository load/unload)."""


class Unauthenticated(ServingError):
    """Missing or wrong bearer token."""


class ModelLoadError(ServingError):
    """A model could not be loaded (corrupt file, bad metadata, failed golden self-check, provider unavailable)."""


class GoldenCheckFailed(ModelLoadError):
    """The file loads but its golden self-check failed: it does not compute the outputs recorded at export."""


class ProviderUnavailable(ModelLoadError):
    """A requested execution provider (a GPU one) is missing or could not start, and CPU fallback is off."""


class InternalError(ServingError):
    """A bug or an unexpected runtime failure; the message carries no internals."""


ERROR_TABLE: Final[dict[type[ServingError], tuple[HTTPStatus, grpc.StatusCode]]] = {
    InvalidArgument: (HTTPStatus.BAD_REQUEST, grpc.StatusCode.INVALID_ARGUMENT),
    ModelNotFound: (HTTPStatus.NOT_FOUND, grpc.StatusCode.NOT_FOUND),
    ModelNotReady: (HTTPStatus.SERVICE_UNAVAILABLE, grpc.StatusCode.UNAVAILABLE),
    PayloadTooLarge: (HTTPStatus.REQUEST_ENTITY_TOO_LARGE, grpc.StatusCode.RESOURCE_EXHAUSTED),
    QueueFull: (HTTPStatus.TOO_MANY_REQUESTS, grpc.StatusCode.RESOURCE_EXHAUSTED),
    DeadlineExceeded: (HTTPStatus.GATEWAY_TIMEOUT, grpc.StatusCode.DEADLINE_EXCEEDED),
    Unavailable: (HTTPStatus.SERVICE_UNAVAILABLE, grpc.StatusCode.UNAVAILABLE),
    PermissionDenied: (HTTPStatus.FORBIDDEN, grpc.StatusCode.PERMISSION_DENIED),
    Unauthenticated: (HTTPStatus.UNAUTHORIZED, grpc.StatusCode.UNAUTHENTICATED),
    ModelLoadError: (HTTPStatus.BAD_REQUEST, grpc.StatusCode.FAILED_PRECONDITION),
    InternalError: (HTTPStatus.INTERNAL_SERVER_ERROR, grpc.StatusCode.INTERNAL),
}


def status_of(error: BaseException) -> tuple[HTTPStatus, grpc.StatusCode]:
    """The (HTTP status, gRPC code) of ``error``; anything that is not a ``ServingError`` is an internal error."""
    for cls in type(error).__mro__:
        if cls in ERROR_TABLE:
            return ERROR_TABLE[cls]
    return ERROR_TABLE[InternalError]


MAX_MESSAGE_BYTES: Final = 1024
"""Longest message sent to a client, in UTF-8 bytes. gRPC clients refuse status details beyond 8-16 KiB (after
percent-encoding, up to 3 characters per byte) and would see RESOURCE_EXHAUSTED instead of the real status, so a
message that echoes a huge client-chosen name is cut."""


_ABSOLUTE_PATH = re.compile(r"(?<![\w.:/])/(?:[^\s/'\"():,;]+/)+([^\s/'\"():,;]*)")


def without_paths(text: str) -> str:
    """``text`` with every absolute path cut to its last part (``/srv/models/a/1/model.onnx`` -> ``model.onnx``):
    what a dependency says about a file (ONNX Runtime names the path it loaded, through any symlink) must not tell
    a client where the server keeps its files."""
    return _ABSOLUTE_PATH.sub(r"\1", text)


def client_message(error: BaseException) -> str:
    """What the client is told: the message of a ``ServingError``, nothing of anything else (no internals leak)."""
    if isinstance(error, ServingError):
        message = str(error)
        if len(message.encode()) > MAX_MESSAGE_BYTES:
            message = message.encode()[:MAX_MESSAGE_BYTES].decode(errors="ignore") + "... (truncated)"
        return message
    return "internal error; the server logged the details"
