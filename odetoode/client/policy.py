"""Synchronous robot client for ``odetoode.v1.PolicyService`` (``odetoode.client.aio`` has the asyncio one); the
package's docstring says what the clients promise (channel policy, deadlines, control loops)."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np

from odetoode.client.wire import (
    OVERFLOW,
    ActFailure,
    Action,
    Overflow,
    PolicyInfo,
    act_request,
    auth_metadata,
    channel_options,
    to_action,
    to_stream_result,
)
from odetoode.proto.odetoode.v1 import policy_pb2 as pb
from odetoode.proto.odetoode.v1 import policy_pb2_grpc as pb_grpc


@dataclass
class LoopReport:
    """What a control loop achieved. Latencies are client-measured round trips of answered cycles."""

    cycles: int = 0
    answered: int = 0
    missed: int = 0
    """Cycles whose action did not arrive within the cycle (late, dropped, failed, or the server unreachable)."""
    errors: int = 0
    reconnects: int = 0
    overruns: int = 0
    """(``realtime=False`` only) cycles whose action arrived after the cycle's tick."""
    duration_s: float = 0.0
    latencies_us: list[float] = field(default_factory=list, repr=False)

    @property
    def achieved_hz(self) -> float:
        return self.cycles / self.duration_s if self.duration_s else 0.0

    @property
    def missed_fraction(self) -> float:
        return self.missed / self.cycles if self.cycles else 0.0

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_us, q)) if self.latencies_us else float("nan")

    def summary(self) -> str:
        return (
            f"{self.cycles} cycles in {self.duration_s:.2f} s ({self.achieved_hz:.1f} Hz), answered {self.answered}, "
            f"missed {self.missed} ({100 * self.missed_fraction:.3f}%), overruns {self.overruns}, "
            f"reconnects {self.reconnects}; latency "
            f"p50 {self.percentile(50):.0f} us, p90 {self.percentile(90):.0f} us, p99 {self.percentile(99):.0f} us"
        )


class ActionStream:
    """One ``ActStream`` call driven from a thread: ``send`` observations, ``receive`` answers in order."""

    def __init__(self, stub: pb_grpc.PolicyServiceStub, first: pb.ActRequest,
                 metadata: Sequence[tuple[str, str]] | None = None) -> None:  # fmt: skip
        self._outbox: queue.Queue[pb.ActRequest | None] = queue.Queue()
        self._inbox: queue.Queue[Action | ActFailure | grpc.RpcError | None] = queue.Queue()
        self._sent: dict[int, int] = {}
        self._first = first
        self._call = stub.ActStream(self._requests(), metadata=metadata)
        self._reader = threading.Thread(target=self._read, daemon=True, name="act-stream-reader")
        self._reader.start()

    def _requests(self) -> Iterator[pb.ActRequest]:
        while True:
            item = self._outbox.get()
            if item is None:
                return
            yield item

    def _read(self) -> None:
        try:
            for msg in self._call:
                self._inbox.put(to_stream_result(msg, self._sent))
            self._inbox.put(None)
        except grpc.RpcError as exc:
            self._inbox.put(exc)

    def send(self, observation: np.ndarray | Sequence[float], sequence: int) -> None:
        request = act_request("", observation, sequence, None)
        if self._first is not None:  # the first message carries the policy, version and options
            self._first.observation, self._first.sequence = request.observation, sequence
            request, self._first = self._first, None  # type: ignore[assignment]
        self._sent[sequence] = time.monotonic_ns()
        self._outbox.put(request)

    def receive(self, timeout: float | None = None) -> Action | ActFailure | None:
        """The next answer; ``None`` when the stream ended. Raises ``queue.Empty`` on timeout, ``grpc.RpcError``
        if the stream failed."""
        item = self._inbox.get(timeout=timeout)
        if isinstance(item, grpc.RpcError):
            self._inbox.put(item)  # stays failed
            raise item
        return item

    def close(self) -> None:
        self._outbox.put(None)
        self._call.cancel()
        self._reader.join(5)


class PolicyClient:
    """Synchronous client; thread-safe for unary calls.

    ``credentials``: ``grpc.ssl_channel_credentials(...)`` for a TLS server (with a client key and certificate for
    mutual TLS); ``token``: the bearer token of a server that requires one.
    """

    def __init__(
        self,
        target: str = "localhost:8001",
        *,
        timeout: float = 1.0,
        credentials: grpc.ChannelCredentials | None = None,
        token: str | None = None,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        opts = [*channel_options(), *options]
        self.target = target
        self.timeout = timeout
        self._metadata = auth_metadata(token)
        self._channel = (
            grpc.secure_channel(target, credentials, options=opts)
            if credentials is not None
            else grpc.insecure_channel(target, options=opts)
        )
        self._stub = pb_grpc.PolicyServiceStub(self._channel)

    def __enter__(self) -> PolicyClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def wait_ready(self, timeout: float = 30.0) -> None:
        grpc.channel_ready_future(self._channel).result(timeout=timeout)

    def act(self, policy: str, observation: np.ndarray | Sequence[float], *, version: str | None = None,
            sequence: int = 0, timeout: float | None = None) -> Action:  # fmt: skip
        """One action (retried on UNAVAILABLE within ``timeout``)."""
        sent = time.monotonic_ns()
        response = self._stub.Act(act_request(policy, observation, sequence, version), timeout=timeout or self.timeout,
                                  metadata=self._metadata)  # fmt: skip
        return to_action(response, sent)

    def get_policy(self, policy: str, version: str | None = None, *, timeout: float | None = None) -> PolicyInfo:
        return self._stub.GetPolicy(pb.GetPolicyRequest(policy=policy, version=version or ""),
                                    timeout=timeout or self.timeout, metadata=self._metadata)  # fmt: skip

    def stream(self, policy: str, *, version: str | None = None, overflow: Overflow = "queue",
               follow_latest: bool = False, max_pending: int = 0, deadline_us: int = 0) -> ActionStream:  # fmt: skip
        options = pb.StreamOptions(overflow=OVERFLOW[overflow], follow_latest=follow_latest,
                                   max_pending=max_pending, deadline_us=deadline_us)  # fmt: skip
        first = pb.ActRequest(policy=policy, version=version or "", options=options)
        return ActionStream(self._stub, first, self._metadata)

    def control_loop(
        self,
        policy: str,
        hz: float,
        on_observation: Callable[[int, Action | None], np.ndarray | Sequence[float] | None],
        *,
        duration_s: float | None = None,
        cycles: int | None = None,
        version: str | None = None,
        on_action: Callable[[Action], None] | None = None,
        reconnect_backoff_s: float = 0.05,
        realtime: bool = True,
    ) -> LoopReport:
        """Runs ``on_observation(sequence, previous_action)`` at ``hz`` and sends what it returns.

        ``realtime`` (a robot): each cycle waits for its own action until the next tick; a late answer is
        discarded (never applied to a later cycle) and the cycle counts as missed. ``realtime=False`` (a
        simulation, where time is virtual): each cycle waits for its action however long it takes (up to the
        client's timeout) and overruns are counted as missed deadlines. Stops when ``on_observation`` returns
        ``None``, after ``duration_s`` or after ``cycles``."""
        period = 1.0 / hz
        report = LoopReport()
        stream: ActionStream | None = None
        backoff = reconnect_backoff_s
        start = time.perf_counter()
        tick = start
        previous: Action | None = None
        sequence = 0
        try:
            while True:
                if cycles is not None and sequence >= cycles:
                    break
                if duration_s is not None and time.perf_counter() - start >= duration_s:
                    break
                observation = on_observation(sequence, previous)
                if observation is None:
                    break
                report.cycles += 1
                deadline = tick + period
                previous = None
                try:
                    if stream is None:
                        stream = self.stream(policy, version=version, overflow="latest" if realtime else "queue")
                    stream.send(observation, sequence)
                    wait_until = deadline if realtime else time.perf_counter() + max(self.timeout, period)
                    previous = self._await(stream, sequence, wait_until, report)
                    if previous is not None and not realtime and time.perf_counter() > deadline:
                        report.overruns += 1
                    backoff = reconnect_backoff_s
                except grpc.RpcError:
                    # The server went away (restart, network): count the cycle, reconnect with back-off.
                    if stream is not None:
                        stream.close()
                        stream = None
                        report.reconnects += 1
                    time.sleep(min(backoff, period))
                    backoff = min(backoff * 2, 1.0)
                if previous is None:
                    report.missed += 1
                elif on_action is not None:
                    on_action(previous)
                sequence += 1
                tick = deadline
                now = time.perf_counter()
                if realtime and now > tick + period:  # fell more than a cycle behind: skip, do not burst
                    skipped = int((now - tick) / period)
                    report.missed += skipped
                    report.cycles += skipped
                    tick += skipped * period
                elif not realtime and now > tick:
                    tick = now  # virtual time: no catching up after an overrun
                _sleep_until(tick)
        finally:
            report.duration_s = time.perf_counter() - start
            if stream is not None:
                stream.close()
        return report

    @staticmethod
    def _await(stream: ActionStream, sequence: int, deadline: float, report: LoopReport) -> Action | None:
        while True:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                return None
            try:
                result = stream.receive(timeout=remaining)
            except queue.Empty:
                return None
            if result is None:
                raise grpc.RpcError("stream ended")
            if result.sequence != sequence:
                continue  # a late answer to an earlier cycle: never applied now
            if isinstance(result, ActFailure):
                report.errors += 0 if result.dropped else 1
                return None
            report.answered += 1
            report.latencies_us.append(result.latency_ns / 1e3)
            return result


def _sleep_until(t: float) -> None:
    """Sleeps until ``perf_counter() >= t``: coarse sleep, then a short spin (sleep overshoots ~0.1 ms)."""
    while True:
        remaining = t - time.perf_counter()
        if remaining <= 0:
            return
        if remaining > 3e-4:
            time.sleep(remaining - 2e-4)
