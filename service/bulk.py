"""The bulk worker pool: where large requests are decoded, computed and encoded, so the event loop never is.

The event loop answers robots (Act, ActStream) and small requests in microseconds; one large request decoded there
would hold it for a second (``orjson.loads`` of 60 MiB, numpy over millions of protobuf values) and threads do not help,
since all of that holds the GIL. So a request larger than ``bulk_request_bytes`` -- or compressed -- goes to a worker
process (``service.bulk_worker``): the event loop only moves its bytes, in pieces of at most ``PIECE`` bytes, and
yields between pieces.

Admission is bounded before anything is read: at most ``bulk_max_requests`` large requests are admitted at once
(receiving their bodies, waiting for a worker, or computed); another one is refused at once (``QueueFull``). Admitted
requests take the next free worker in arrival order, within their deadline. A worker that dies is replaced and its
request answered with an internal error; a request whose client goes away still runs to completion (its worker is
then free and consistent again), and its answer is dropped.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from service import errors
from service.bulk_worker import FRAME_HEAD, PAYLOAD_HEAD, READY, frame_head
from service.errors import DeadlineExceeded, InternalError, QueueFull, ServingError
from service.memory import release_memory
from service.ration import Ration

log = logging.getLogger(__name__)

PIECE = 64 * 1024
"""Bytes moved between two yields of the event loop (as ``service.http.READ_SIZE``)."""
SOCKET_BUFFER = 1 << 20
START_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class BulkReply:
    """A worker's answer: its header (``version``, timing, kind-specific fields) and the encoded response in parts."""

    header: dict[str, Any]
    parts: list[bytes]

    @property
    def size(self) -> int:
        return sum(len(p) for p in self.parts)


def pieces(chunks: Iterable[bytes | bytearray | memoryview]) -> Iterable[memoryview]:
    """``chunks`` cut into views of at most ``PIECE`` bytes (no copies)."""
    for chunk in chunks:
        view = memoryview(chunk)
        for start in range(0, len(view), PIECE):
            yield view[start : start + PIECE]


class ByteRate:
    """A token bucket of bytes: ``take`` waits until the bytes fit ``per_second`` (with a burst of ``burst`` bytes);
    requests wait in arrival order, since each one's debt delays the next."""

    def __init__(self, per_second: float, burst: float) -> None:
        self.per_second = per_second
        self.burst = burst
        self._tokens = burst
        self._stamp = time.monotonic()

    async def take(self, size: int, deadline_ns: int | None) -> None:
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.per_second)
        self._stamp = now
        wait = (size - self._tokens) / self.per_second
        if deadline_ns is not None and now + wait > deadline_ns / 1e9:
            raise DeadlineExceeded("the deadline would pass while the request waits its turn (bulk_bytes_per_s)")
        self._tokens -= size
        if wait > 0:
            await asyncio.sleep(wait)


class _Worker:
    """One worker process and the server's end of its socket pair."""

    def __init__(self, index: int, command: list[str], ration: Ration) -> None:
        self.index = index
        self.command = command
        self.ration = ration
        self.process: subprocess.Popen[bytes] | None = None
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def start(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        for sock in (ours, theirs):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
        with theirs:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "service.bulk_worker", str(theirs.fileno()), *self.command],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
            )
        self.reader, self.writer = await asyncio.open_unix_connection(sock=ours, limit=PIECE)
        header, _ = await asyncio.wait_for(self._read_reply(), START_TIMEOUT_S)
        if header != READY:
            raise RuntimeError(f"bulk worker {self.index} did not start: {header}")

    async def run(self, job: dict[str, Any], payload: list[bytes | bytearray | memoryview]) -> BulkReply:
        """Sends one job and reads its reply, both in pieces; raises ``ConnectionError`` if the worker is gone.

        ``payload`` is consumed: each chunk is let go as soon as it is sent, so that a large body is freed a piece at
        a time instead of all at once at the end (freeing 60 MiB of chunks in one go holds the event loop ~10 ms)."""
        if self.writer is None:
            raise ConnectionError(f"bulk worker {self.index} is not running")
        size = sum(len(p) for p in payload)
        self.writer.write(frame_head(job, size))
        payload.reverse()
        while payload:
            for piece in pieces([payload.pop()]):
                await self.ration.turn()  # drain() returns at once while the worker keeps up
                self.writer.write(piece)
                await self.writer.drain()
        header, parts = await self._read_reply()
        return BulkReply(header, parts)

    async def _read_reply(self) -> tuple[dict[str, Any], list[bytes]]:
        assert self.reader is not None
        try:
            (length,) = FRAME_HEAD.unpack(await self.reader.readexactly(FRAME_HEAD.size))
            header = orjson.loads(await self.reader.readexactly(length))
            (remaining,) = PAYLOAD_HEAD.unpack(await self.reader.readexactly(PAYLOAD_HEAD.size))
            parts = []
            while remaining:
                await self.ration.turn()
                part = await self.reader.readexactly(min(remaining, PIECE))
                parts.append(part)
                remaining -= len(part)
        except (asyncio.IncompleteReadError, struct.error) as exc:
            raise ConnectionError(f"bulk worker {self.index} went away") from exc
        return header, parts

    async def stop(self) -> None:
        """Ends the worker now: a job it is computing is abandoned (its request is answered by whoever waits)."""
        if self.writer is not None:
            self.writer.close()
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                await asyncio.get_running_loop().run_in_executor(None, self.process.wait, 2)
            except subprocess.TimeoutExpired:
                self.process.kill()
                await asyncio.get_running_loop().run_in_executor(None, self.process.wait, 2)


class BulkPool:
    """``workers`` bulk worker processes and the admission of large requests to them."""

    def __init__(
        self,
        workers: int,
        max_requests: int,
        priority: str,
        log_format: str,
        log_level: str,
        bytes_per_s: float = float("inf"),
        ration: Ration | None = None,
    ) -> None:
        self.max_requests = max_requests
        self.ration = ration or Ration()
        self.jobs = 0
        """Jobs the workers have answered (successfully or not)."""
        self.restarts = 0
        """Workers that died and were replaced."""
        self.refused = 0
        """Large requests refused because ``max_requests`` were admitted."""
        self._rate = ByteRate(bytes_per_s, PIECE * 16)
        self._command = [priority, log_format, log_level]
        self._workers = [_Worker(i, self._command, self.ration) for i in range(workers)]
        self._idle: deque[_Worker] = deque()
        self._waiting: deque[asyncio.Future[_Worker]] = deque()
        self._admitted = 0
        self._closed = False

    @property
    def size(self) -> int:
        return len(self._workers)

    @property
    def admitted(self) -> int:
        return self._admitted

    async def start(self) -> None:
        await asyncio.gather(*(w.start() for w in self._workers))
        self._idle.extend(self._workers)

    async def close(self) -> None:
        """Stops the workers; requests waiting for one, or computed by one, are answered ``Unavailable``."""
        self._closed = True
        for waiter in self._waiting:
            if not waiter.done():
                waiter.set_exception(errors.Unavailable("the server is shutting down"))
        await asyncio.gather(*(w.stop() for w in self._workers), return_exceptions=True)

    async def pace(self, size: int, deadline_ns: int | None) -> None:
        """Waits until ``size`` more bytes of bulk work fit the event loop's budget (``bulk_bytes_per_s``); raises
        ``DeadlineExceeded`` at once if they would not before the deadline."""
        await self._rate.take(size, deadline_ns)

    def admit(self) -> Callable[[], None]:
        """A place for one large request, taken before its body is read (``QueueFull`` at once when none is left);
        returns the function that gives it back (idempotent), called once the answer is sent."""
        if self._admitted >= self.max_requests:
            self.refused += 1
            raise QueueFull(f"{self.max_requests} large requests are being served (bulk_max_requests); retry later")
        self._admitted += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self._admitted -= 1
                if self._admitted == 0:
                    # The body went through this process's heap in pieces; give the heap back to the system (about
                    # 0.1 ms), or the server keeps the size of its largest request for good.
                    release_memory()

        return release

    async def run(
        self, job: dict[str, Any], payload: list[bytes | bytearray | memoryview], deadline_ns: int | None
    ) -> BulkReply:
        """Runs ``job`` on the next free worker (within ``deadline_ns``, ``time.monotonic_ns``) and returns its reply;
        the worker's ``ServingError`` is raised here as the same class with the same message."""
        worker = await self._take(deadline_ns)
        job = {**job, "queued_ns": time.monotonic_ns(), "deadline_ns": deadline_ns}
        # Shielded: a client that goes away must not leave the worker half-way through a frame.
        task = asyncio.get_running_loop().create_task(self._run_on(worker, job, payload))
        try:
            if deadline_ns is None:
                reply = await asyncio.shield(task)
            else:
                timeout = max(0.0, (deadline_ns - time.monotonic_ns()) / 1e9)
                try:
                    reply = await asyncio.wait_for(asyncio.shield(task), timeout)
                except TimeoutError:
                    raise DeadlineExceeded("the deadline passed while the request was computed") from None
        finally:
            if not task.done():
                task.add_done_callback(lambda t: t.exception() if not t.cancelled() else None)
        await self.pace(reply.size, None)  # the answer passes through the event loop too
        error = reply.header.get("error")
        if error is not None:
            cls = getattr(errors, str(error), None)
            if not (isinstance(cls, type) and issubclass(cls, ServingError)):
                cls = InternalError
            raise cls(str(reply.header.get("message", "")))
        return reply

    async def _run_on(self, worker: _Worker, job: dict[str, Any], payload: list[Any]) -> BulkReply:
        try:
            reply = await worker.run(job, payload)
            self.jobs += 1
            return reply
        except (ConnectionError, OSError) as exc:
            if self._closed:  # stopped by the shutdown, not failed
                raise errors.Unavailable("the server shut down before this request was computed") from None
            log.error("bulk worker %d failed (%s); starting a new one", worker.index, exc)
            self.restarts += 1
            await worker.stop()
            replacement = _Worker(worker.index, self._command, self.ration)
            self._workers[worker.index] = replacement
            worker = replacement
            if not self._closed:
                try:
                    await replacement.start()
                except Exception:
                    log.exception("bulk worker %d could not be restarted", worker.index)
                    raise InternalError("a bulk worker failed; the server logged the details") from exc
            raise InternalError("the bulk worker serving this request failed; the server logged the details") from exc
        finally:
            self._give_back(worker)

    async def _take(self, deadline_ns: int | None) -> _Worker:
        if self._idle:
            return self._idle.popleft()
        waiter: asyncio.Future[_Worker] = asyncio.get_running_loop().create_future()
        self._waiting.append(waiter)
        timeout = None if deadline_ns is None else max(0.0, (deadline_ns - time.monotonic_ns()) / 1e9)
        try:
            return await asyncio.wait_for(asyncio.shield(waiter), timeout)
        except (TimeoutError, asyncio.CancelledError) as exc:
            if waiter in self._waiting:
                self._waiting.remove(waiter)
            elif waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self._give_back(waiter.result())  # handed a worker just as it gave up: pass it on
            if isinstance(exc, TimeoutError):
                raise DeadlineExceeded("the deadline passed while the request waited for a bulk worker") from None
            raise

    def _give_back(self, worker: _Worker) -> None:
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(worker)
                return
        self._idle.append(worker)
