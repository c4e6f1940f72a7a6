"""asyncio robot client for ``odetoode.v1.PolicyService`` over ``grpc.aio``, with the same channel policy."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence

import grpc
import numpy as np

from odetoode.client import wire
from odetoode.client.wire import ActFailure, Action, Overflow, PolicyInfo
from odetoode.proto.odetoode.v1 import policy_pb2 as pb
from odetoode.proto.odetoode.v1 import policy_pb2_grpc as pb_grpc


class AsyncPolicyClient:
    """asyncio client over ``grpc.aio`` with the same channel policy."""

    def __init__(self, target: str = "localhost:8001", *, timeout: float = 1.0,
                 credentials: grpc.ChannelCredentials | None = None, token: str | None = None) -> None:  # fmt: skip
        opts = wire.channel_options()
        self.timeout = timeout
        self._metadata = wire.auth_metadata(token)
        self._channel = (
            grpc.aio.secure_channel(target, credentials, options=opts)
            if credentials is not None
            else grpc.aio.insecure_channel(target, options=opts)
        )
        self._stub = pb_grpc.PolicyServiceStub(self._channel)

    async def __aenter__(self) -> AsyncPolicyClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    async def act(self, policy: str, observation: np.ndarray | Sequence[float], *, version: str | None = None,
                  sequence: int = 0, timeout: float | None = None) -> Action:  # fmt: skip
        sent = time.monotonic_ns()
        response = await self._stub.Act(wire.act_request(policy, observation, sequence, version),
                                        timeout=timeout or self.timeout, metadata=self._metadata)  # fmt: skip
        return wire.to_action(response, sent)

    async def get_policy(self, policy: str, version: str | None = None) -> PolicyInfo:
        return await self._stub.GetPolicy(pb.GetPolicyRequest(policy=policy, version=version or ""),
                                          timeout=self.timeout, metadata=self._metadata)  # fmt: skip

    async def act_stream(
        self,
        policy: str,
        observations: AsyncIterator[tuple[int, np.ndarray]],
        *,
        version: str | None = None,
        overflow: Overflow = "queue",
        follow_latest: bool = False,
    ) -> AsyncIterator[Action | ActFailure]:
        """Streams ``(sequence, observation)`` pairs and yields the answers in order."""
        sent: dict[int, int] = {}
        options = pb.StreamOptions(overflow=wire.OVERFLOW[overflow], follow_latest=follow_latest)

        async def requests() -> AsyncIterator[pb.ActRequest]:
            first = True
            async for sequence, observation in observations:
                request = wire.act_request(policy if first else "", observation, sequence, version)
                if first:
                    request.options.CopyFrom(options)
                    first = False
                sent[sequence] = time.monotonic_ns()
                yield request

        async for msg in self._stub.ActStream(requests(), metadata=self._metadata):
            yield wire.to_stream_result(msg, sent)
