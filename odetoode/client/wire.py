"""PolicyService messages to and from numpy, and the channel policy every client uses (one place for both)."""

from __future__ import annotations

import json
import math
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
    index: int | None = None
    """The action of a policy with a discrete action space: an index ``0 .. n-1`` (``values`` is then empty)."""

    @property
    def command(self) -> np.ndarray | int:
        """What to apply (e.g. to ``env.step``): the index of a discrete policy, else the values."""
        return self.values if self.index is None else self.index


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
    index = msg.action_index if msg.HasField("action_index") else None
    return Action(values, msg.sequence, msg.version, t.queue_ns, t.compute_ns, t.total_ns, t.batch_size,
                  time.monotonic_ns() - sent_ns, index)  # fmt: skip


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


def _f32(v: float) -> float | str:
    """A float32 from the wire as its shortest decimal (``0.1``, not ``0.10000000149011612``); infinities as the
    model-file contract writes them in JSON (``"inf"``, ``"-inf"``), NaN as ``"nan"``."""
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    if math.isnan(v):
        return "nan"
    return float(str(np.float32(v)))


def _finite(value: Any) -> Any:
    """``value`` (parsed JSON) with non-finite floats as strings, so that the output is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return _f32(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _space(space: pb.Space) -> dict[str, Any]:
    if space.HasField("discrete"):
        return {"n": int(space.discrete.n)}
    return {"shape": [int(d) for d in space.shape], "low": [_f32(v) for v in space.low],
            "high": [_f32(v) for v in space.high]}  # fmt: skip


def policy_document(info: PolicyInfo) -> dict[str, Any]:
    """``GetPolicy``'s answer as a JSON object with PolicyInfo's field names: numbers as numbers, spaces as the
    model-file contract writes them (``{"shape", "low", "high"}`` or ``{"n"}``), the training record as an object
    (``training``), and ``null`` where the message says "not set" (a 0 step count, hidden size, control rate or
    Lipschitz bound; no space or normalization)."""
    norm = info.normalization
    normalization = {"mean": [_f32(v) for v in norm.mean], "std": [_f32(v) for v in norm.std], "clip": _f32(norm.clip)}
    return {
        "policy": info.policy,
        "version": info.version,
        "versions": list(info.versions),
        "env_id": info.env_id or None,
        "arch": info.arch,
        "steps": info.steps or None,
        "hidden": info.hidden or None,
        "observation_space": _space(info.observation_space) if info.HasField("observation_space") else None,
        "action_space": _space(info.action_space) if info.HasField("action_space") else None,
        "normalization": normalization if info.HasField("normalization") else None,
        "control_rate_hz": info.control_rate_hz or None,
        "lipschitz_bound": info.lipschitz_bound or None,
        "training": _finite(json.loads(info.training_json)) if info.training_json else None,
        "execution_provider": info.execution_provider,
    }
