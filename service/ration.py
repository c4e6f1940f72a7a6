"""The control path's priority on the event loop: everything else gets a ration of each turn.

One asyncio loop answers robots (gRPC ``Act``/``ActStream``) and HTTP clients. asyncio has no priorities: each turn
runs every callback that became ready, so a burst of HTTP work -- hundreds of connections accepted at once, each
parsed and routed, or the pieces of several large bodies -- makes one turn last tens of milliseconds, and a robot's
call, which needs a few turns (message in, handler, answer out), waits for each. Here every piece of HTTP and bulk
work asks for its ``turn()`` first: it runs at once while this turn's ``slice_s`` lasts, and otherwise waits, in
arrival order, for a later turn, where at most ``wake_per_turn`` waiting pieces resume. A turn then holds at most about
a slice plus a few pieces of such work, whatever floods the HTTP ports, and the robots' callbacks -- which never ask
-- run in every turn.

Work that cannot wait in a coroutine (a protocol's ``data_received``) checks ``spent()`` and hands itself to
``later()``, which runs it in a later turn, in the same order.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable


class Ration:
    """The share of each event-loop turn that HTTP and bulk work may take (see the module docstring)."""

    def __init__(self, slice_s: float = 0.0005, wake_per_turn: int = 2) -> None:
        self.slice_s = slice_s
        self.wake_per_turn = wake_per_turn
        self._started: float | None = None
        """When rationed work began in the current turn (``None``: not yet)."""
        self._waiting: deque[Callable[[], None]] = deque()
        self._scheduled = False

    def spent(self) -> bool:
        """Whether rationed work must wait for a later turn: others wait already, or this turn's slice is used."""
        if self._waiting:
            return True
        return self._started is not None and time.perf_counter() - self._started > self.slice_s

    def charge(self) -> None:
        """Rationed work runs now, in this turn."""
        if self._started is None:
            self._started = time.perf_counter()
            self._schedule()

    def later(self, resume: Callable[[], None]) -> None:
        """Calls ``resume`` in a later turn, after what waits already."""
        self._waiting.append(resume)
        self._schedule()

    async def turn(self) -> None:
        """Returns at once while this turn has room, else in a later turn."""
        if not self.spent():
            self.charge()
            return
        woken: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def wake() -> None:
            if not woken.done():  # its task may have been cancelled meanwhile
                woken.set_result(None)

        self.later(wake)
        await woken  # woken by the scheduler, which counted it in the turn it runs in

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def _schedule(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._next_turn)

    def _next_turn(self) -> None:
        """Runs once in each turn that follows rationed work: a fresh slice, and the oldest waiting pieces resumed
        (a coroutine resumes in the turn after this one; a callback runs here)."""
        self._scheduled = False
        self._started = None
        if not self._waiting:
            return
        self._started = time.perf_counter()
        self._schedule()
        for _ in range(self.wake_per_turn):
            if not self._waiting:
                break
            self._waiting.popleft()()
