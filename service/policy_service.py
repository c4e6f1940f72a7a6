"""``odetoode.v1.PolicyService``: the robot API -- Act, ActStream, GetPolicy -- over the same data plane.

ActStream answers a stream's observations strictly in order. A reader task takes observations off the wire as they
arrive, so while one is being computed the next ones wait in the stream's own queue, where the overflow option
decides their fate: ``QUEUE`` answers all of them (up to ``max_pending``), ``LATEST_ONLY`` answers only the newest
and tells the client which ones it dropped. Every answer carries the sequence number of the observation it answers.
A failure of one observation (bad values, a missed deadline) is answered as an ``ActError`` and the stream goes on.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc

from odetoode.modelfile import Discrete, Space
from odetoode.proto.odetoode.v1 import policy_pb2 as pb
from odetoode.proto.odetoode.v1 import policy_pb2_grpc as pb_grpc
from service.batching import deadline_after
from service.dataplane import DataPlane
from service.errors import InvalidArgument, QueueFull, ServingError
from service.policy_codec import action_response, error_message, observation_of
from service.repository import ServedVersion

SERVICE = pb.DESCRIPTOR.services_by_name["PolicyService"]
SERVICE_NAME = SERVICE.full_name
DEFAULT_MAX_PENDING = 64
MAX_PENDING = 1024
"""The most observations a stream may have waiting, whatever its ``max_pending`` asks for (a uint32)."""


@dataclass(slots=True)
class _Pending:
    request: pb.ActRequest
    arrived_ns: int
    rejected: ServingError | None = None


class _Stream:
    """One ActStream's state: its options and the version it is pinned to (resolved once, not per message)."""

    def __init__(self, plane: DataPlane, first: pb.ActRequest) -> None:
        options = first.options
        self.plane = plane
        self.policy = first.policy
        self.latest_only = options.overflow == pb.OVERFLOW_LATEST_ONLY
        self.follow_latest = options.follow_latest
        self.max_pending = min(options.max_pending or DEFAULT_MAX_PENDING, MAX_PENDING)
        self.budget_s = options.deadline_us / 1e6 if options.deadline_us else None
        self.reads_ahead = self.latest_only or bool(options.max_pending) or self.budget_s is not None
        # Pin the version at the start: a robot's episode should not switch policies under it.
        self.served = plane.policy(self.policy, first.version or None)
        self.pinned = str(self.served.version)

    def _current(self) -> ServedVersion:
        if self.follow_latest:
            return self.plane.policy(self.policy)
        if self.served.batcher.closed:  # unloaded or replaced by a new file of the same version
            self.served = self.plane.policy(self.policy, self.pinned)
        return self.served

    async def answer(self, item: _Pending) -> pb.ActStreamResponse:
        request = item.request
        try:
            if item.rejected is not None:
                raise item.rejected
            deadline = deadline_after(self.budget_s, item.arrived_ns)
            acted = await self.plane.act_on(self._current(), observation_of(request), deadline)
        except ServingError as exc:
            return error_message(request.sequence, exc)
        return pb.ActStreamResponse(
            action=action_response(acted, self.policy, request.sequence, request.values, item.arrived_ns)
        )


class PolicyService(pb_grpc.PolicyServiceServicer):
    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane

    async def Act(self, request: pb.ActRequest, context: grpc.aio.ServicerContext) -> pb.ActResponse:  # noqa: N802
        arrived = time.monotonic_ns()
        if not request.policy:
            raise InvalidArgument("policy: required")
        deadline = deadline_after(context.time_remaining(), arrived)
        served = self.plane.policy(request.policy, request.version or None)
        acted = await self.plane.act_on(served, observation_of(request), deadline)
        return action_response(acted, request.policy, request.sequence, request.values, arrived)

    async def ActStream(  # noqa: N802
        self, requests: AsyncIterator[pb.ActRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ActStreamResponse]:
        try:
            first = await anext(requests)
        except StopAsyncIteration:
            return
        if not first.policy:
            raise InvalidArgument("policy: required on the first message of a stream")
        stream = _Stream(self.plane, first)
        if not stream.reads_ahead:
            # The common case (answer everything, no budget): read the next observation only after answering
            # this one. HTTP/2 flow control is the back-pressure; no task hop per message.
            yield await stream.answer(_Pending(first, time.monotonic_ns()))
            async for request in requests:
                yield await stream.answer(_Pending(request, time.monotonic_ns()))
            return
        queue: deque[_Pending] = deque([_Pending(first, time.monotonic_ns())])
        arrived = asyncio.Event()
        arrived.set()
        room = asyncio.Event()
        finished = False

        async def read() -> None:
            nonlocal finished
            try:
                async for request in requests:
                    while len(queue) >= 2 * stream.max_pending:
                        # The client is not reading its answers: stop reading its observations until it does (HTTP/2
                        # flow control then holds it back) rather than buffer them without bound.
                        room.clear()
                        await room.wait()
                    pending = _Pending(request, time.monotonic_ns())
                    if not stream.latest_only and len(queue) >= stream.max_pending:
                        # Answered by its sequence number alone: the observation itself is not kept.
                        full = QueueFull(f"more than {stream.max_pending} observations waiting on this stream")
                        pending = _Pending(pb.ActRequest(sequence=request.sequence), pending.arrived_ns, full)
                    queue.append(pending)
                    arrived.set()
            finally:
                finished = True
                arrived.set()

        reader = asyncio.get_running_loop().create_task(read())
        try:
            while True:
                if not queue:
                    if finished:
                        break
                    arrived.clear()
                    await arrived.wait()
                    continue
                if stream.latest_only:
                    while len(queue) > 1:
                        dropped = queue.popleft()
                        room.set()
                        yield pb.ActStreamResponse(dropped=dropped.request.sequence)
                item = queue.popleft()
                room.set()
                yield await stream.answer(item)
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
        if reader.done() and not reader.cancelled() and reader.exception() is not None:
            raise reader.exception()  # type: ignore[misc]

    async def GetPolicy(self, request: pb.GetPolicyRequest, context: grpc.aio.ServicerContext) -> pb.PolicyInfo:  # noqa: N802
        if not request.policy:
            raise InvalidArgument("policy: required")
        served = self.plane.policy(request.policy, request.version or None)
        d = served.runtime.description
        assert d is not None  # plane.policy refuses a model without a description
        return pb.PolicyInfo(
            policy=request.policy,
            version=str(served.version),
            versions=[str(v.version) for v in self.plane.repository.served_versions(request.policy)],
            env_id=d.env_id or "",
            arch=d.arch,
            steps=d.steps or 0,
            hidden=d.hidden or 0,
            observation_space=_space(d.observation_space),
            action_space=_space(d.action_space),
            normalization=pb.Normalization(
                mean=d.obs_normalization.mean, std=d.obs_normalization.std, clip=d.obs_normalization.clip
            )
            if d.obs_normalization
            else None,
            control_rate_hz=served.config.control_rate_hz or 0.0,
            lipschitz_bound=d.lipschitz_bound or 0.0,
            training_json=json.dumps(dict(d.training)),
            execution_provider=served.runtime.providers[0],
        )


def _space(space: Space | None) -> pb.Space | None:
    if space is None:
        return None
    if isinstance(space, Discrete):
        return pb.Space(discrete=pb.Discrete(n=space.n))
    return pb.Space(shape=space.shape, low=space.low, high=space.high)
