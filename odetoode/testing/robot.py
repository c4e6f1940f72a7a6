"""A robot on a fixed clock, as a benchmark's well-behaved client: it calls ``PolicyService/Act`` every 5 ms and runs
an ``ActStream`` loop at 200 Hz (``odetoode.client.AsyncPolicyClient``) and records every call's send time, round
trip and whether it was a success -- an answer within ``FAILED_S``. Meant to run in a process of its own, stopped by
closing its stdin."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import numpy as np

from odetoode.testing.clients import OBS

PERIOD_S = 0.005
"""Each loop's period: a call every 5 ms (200 Hz)."""
FAILED_S = 0.050
"""A call answered later than this is a failed cycle, whatever it answered."""
ACT, ACT_STREAM = 0, 1
"""The ``loop`` column of a row: the Act loop or the ActStream loop."""


async def robot(target: str, policy: str = "halfcheetah") -> np.ndarray:
    """Acts on ``policy`` at ``target`` (host:port of the gRPC server) with both loops until stdin closes (or
    becomes readable); returns one row per call: (loop, sent at ``time.monotonic()`` s, round trip s, success)."""
    from odetoode.client import Action, AsyncPolicyClient

    rows: list[tuple[int, float, float, bool]] = []
    observation = np.random.default_rng(0).normal(size=OBS).astype(np.float32)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_reader(sys.stdin.fileno(), stop.set)

    async def paced(step: Callable[[], Awaitable[bool]], kind: int) -> None:
        tick = time.monotonic()
        while not stop.is_set():
            sent = time.monotonic()
            try:
                ok = await step()
            except Exception:
                ok = False
            rtt = time.monotonic() - sent
            rows.append((kind, sent, rtt, bool(ok) and rtt <= FAILED_S))
            tick += PERIOD_S
            delay = tick - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                tick = time.monotonic()  # behind: do not burst to catch up

    async with AsyncPolicyClient(target, timeout=2.0) as client:
        await client.act(policy, observation)  # connected and warm
        queue: asyncio.Queue[tuple[int, np.ndarray]] = asyncio.Queue()

        async def observations() -> AsyncIterator[tuple[int, np.ndarray]]:
            while True:
                yield await queue.get()

        answers = client.act_stream(policy, observations()).__aiter__()
        sequence = 0

        async def act() -> bool:
            return isinstance(await client.act(policy, observation), Action)

        async def stream() -> bool:
            nonlocal sequence
            sequence += 1
            await queue.put((sequence, observation))
            answer = await asyncio.wait_for(anext(answers), 2.0)
            return isinstance(answer, Action) and answer.sequence == sequence

        await asyncio.gather(paced(act, ACT), paced(stream, ACT_STREAM))
    return np.asarray(rows, dtype=float)
