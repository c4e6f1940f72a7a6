"""PolicyService messages to and from numpy, and the channel policy every client uses (one place for both)."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import grpc
import numpy as np

from odetoode.proto.odetoode.v1 import policy_pb2 as pb

PolicyInfo = pb.PolicyInfo
Overflow = Literal["queue", "latest"]
OVERFLOW = {"queue": pb.OVERFLOW_QUEUE, "latest": pb.OVERFLOW_LATEST_ONLY}
_F32 = np.dtype("<f4")

RETRY_POLICY = {
    "methodConfig": [
        {
            "name": [
                {"service": "odetoode.v1.PolicyService", "method": "Act"},
                {"service": "odetoode.v1.PolicyService", "method": "GetPolicy"},
            ],
            "retryPolicy": {
                "maxAttempts": 5,
                "initialBackoff": "0.05s",
                "maxBackoff": "1s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE"],
            },
        }
    ]
}


def channel_options(max_message_bytes: int = 64 * 1024 * 1024) -> list[tuple[str, Any]]:
    """Keepalive matched to the server's policy, retries on UNAVAILABLE, message limits, and reconnection within
    a second of a restarted server coming back (gRPC's default back-off grows to two minutes)."""
    return [
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 1000),
        ("grpc.keepalive_time_ms", 10_000),
        ("grpc.keepalive_timeout_ms", 5_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.enable_retries", 1),
        ("grpc.service_config", json.dumps(RETRY_POLICY)),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
    ]


@dataclass(frozen=True)
class Action:
    """An action and what answered it. ``latency_ns`` is the round trip seen by this client."""

    values: np.ndarray
    sequence: int
    version: str
    queue_ns: int
    compute_ns: int
    server_ns: int
    batch_size: int
    latency_ns: int


@dataclass(frozen=True)
class ActFailure:
    """An observation the server answered without an action: an error, or ``dropped`` as superseded."""

    sequence: int
    code: grpc.StatusCode | None
    message: str

    @property
    def dropped(self) -> bool:
        return self.code is None


def act_request(
    policy: str, observation: np.ndarray | Sequence[float], sequence: int, version: str | None
) -> pb.ActRequest:
    packed = np.ascontiguousarray(observation, dtype=_F32).tobytes()
    return pb.ActRequest(policy=policy, version=version or "", sequence=sequence, observation=packed)


def to_action(msg: pb.ActResponse, sent_ns: int) -> Action:
    values = (
        np.frombuffer(msg.action, dtype=_F32).astype(np.float32)
        if msg.action
        else np.asarray(msg.action_values, np.float32)
    )
    t = msg.timing
    return Action(values, msg.sequence, msg.version, t.queue_ns, t.compute_ns, t.total_ns, t.batch_size,
                  time.monotonic_ns() - sent_ns)  # fmt: skip


def to_stream_result(msg: pb.ActStreamResponse, sent: dict[int, int]) -> Action | ActFailure:
    kind = msg.WhichOneof("result")
    if kind == "action":
        return to_action(msg.action, sent.pop(msg.action.sequence, time.monotonic_ns()))
    if kind == "error":
        sent.pop(msg.error.sequence, None)
        return ActFailure(msg.error.sequence, _STATUS.get(msg.error.code, grpc.StatusCode.UNKNOWN), msg.error.message)
    sent.pop(msg.dropped, None)
    return ActFailure(msg.dropped, None, "dropped: a newer observation superseded it")


_STATUS = {code.value[0]: code for code in grpc.StatusCode}


def auth_metadata(token: str | None) -> tuple[tuple[str, str], ...] | None:
    return (("authorization", f"Bearer {token}"),) if token else None
