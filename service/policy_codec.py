"""``odetoode.v1.PolicyService``'s wire format: observations in and actions out (packed little-endian float32, or
repeated floats; an index for a discrete policy), timing fields, and a stream's per-observation errors."""

from __future__ import annotations

import time

import numpy as np

from odetoode.proto.odetoode.v1 import policy_pb2 as pb
from service.errors import InvalidArgument, ServingError, client_message, status_of
from service.inference import Acted

_FLOAT32_LE = np.dtype("<f4")
_WIRE_IS_NATIVE = _FLOAT32_LE is np.dtype(np.float32)
"""On a little-endian host the wire format is numpy's own float32 (the same dtype object), and conversions are
skipped: each numpy call on this path costs microseconds once gRPC has cooled the caches."""


def observation_of(request: pb.ActRequest) -> np.ndarray:
    """The observation of a request as float32; exactly one of ``observation`` / ``observation_values``."""
    packed, values = request.observation, request.observation_values
    if packed and values:
        raise InvalidArgument("observation: give observation (packed) or observation_values, not both")
    if packed:
        if len(packed) % 4:
            raise InvalidArgument(f"observation: {len(packed)} bytes is not a whole number of float32 values")
        observation = np.frombuffer(packed, dtype=_FLOAT32_LE)
        return observation if _WIRE_IS_NATIVE else observation.astype(np.float32)
    if values:
        return np.asarray(values, dtype=np.float32)
    raise InvalidArgument("observation: empty; set observation (packed float32) or observation_values")


def action_response(acted: Acted, policy: str, sequence: int, as_values: bool, arrived_ns: int) -> pb.ActResponse:
    msg = pb.ActResponse(policy=policy, version=acted.version, sequence=sequence)
    action = acted.action
    if action.dtype.kind == "i":  # a discrete policy: its action is an index
        msg.action_index = int(action.reshape(-1)[0])
    elif as_values:
        msg.action_values.extend(action.ravel().tolist())
    elif action.dtype is _FLOAT32_LE:
        msg.action = action.tobytes()
    else:
        msg.action = action.astype(_FLOAT32_LE).tobytes()
    # set field by field: a ``pb.Timing(...)`` built apart and copied in costs twice as much
    t, timing = acted.timing, msg.timing
    timing.queue_ns = t.queue_ns
    timing.compute_ns = t.compute_ns
    timing.batch_size = t.batch_size
    timing.total_ns = time.monotonic_ns() - arrived_ns
    return msg


def error_message(sequence: int, error: ServingError) -> pb.ActStreamResponse:
    code = status_of(error)[1].value[0]
    return pb.ActStreamResponse(error=pb.ActError(sequence=sequence, code=code, message=client_message(error)))
