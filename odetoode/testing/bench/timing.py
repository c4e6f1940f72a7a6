"""Timing round trips: sequential calls with the garbage collector paused, their percentiles, and rows of a table
measured in alternating rounds against their floors, so that drift on a shared machine hits a row and its floor
alike."""

from __future__ import annotations

import asyncio
import gc
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from odetoode.testing.bench.host import cpu_seconds


@dataclass(frozen=True)
class Timing:
    """Percentiles and mean of one row's round trips (us)."""

    name: str
    p50_us: float
    p90_us: float
    p99_us: float
    mean_us: float
    server_cpu_us: float = math.nan
    """CPU time (all threads) of the process that answered, per call (nan: not measured): less sensitive to a busy
    machine than the round trip."""


def sample(fn: Callable[[], object], n: int, warmup: int) -> np.ndarray:
    """``n`` sequential calls of ``fn`` in microseconds, after ``warmup`` untimed ones (garbage collector paused)."""
    for _ in range(warmup):
        fn()
    out = np.empty(n)
    gc.disable()
    try:
        for i in range(n):
            start = time.perf_counter_ns()
            fn()
            out[i] = time.perf_counter_ns() - start
    finally:
        gc.enable()
    return out / 1e3


def summarize(name: str, samples: np.ndarray, cpu_s: float | None = None) -> Timing:
    """``samples`` (us) as a ``Timing``; ``cpu_s``: CPU seconds the answering process used over them."""
    p50, p90, p99 = (float(x) for x in np.percentile(samples, [50, 90, 99]))
    cpu_us = math.nan if cpu_s is None else 1e6 * cpu_s / len(samples)
    return Timing(name, p50, p90, p99, float(samples.mean()), cpu_us)


def time_calls(name: str, fn: Callable[[], object], *, repeats: int, warmup: int = 200) -> Timing:
    """Times ``repeats`` sequential calls of ``fn`` after ``warmup`` calls (garbage collector paused)."""
    return summarize(name, sample(fn, repeats, warmup))


async def next_tick(tick: float, period: float) -> float:
    """Sleeps until ``tick + period`` (``time.monotonic``) and returns it; a client already behind returns now
    instead, so it does not burst to catch up."""
    tick += period
    delay = tick - time.monotonic()
    if delay <= 0:
        return time.monotonic()
    await asyncio.sleep(delay)
    return tick


@dataclass(frozen=True)
class Row:
    """One row of a latency table: a named round trip, the name of the row it is compared with (``None``: it is a
    floor) and the process that answers it (``None``: its CPU time is not measured)."""

    name: str
    call: Callable[[], object]
    floor: str | None = None
    answered_by: int | None = None


@dataclass
class Rounds:
    """What ``alternate`` measured: each row's round trips, one array per round (us), the CPU seconds its answering
    process used while they were timed, and the wall time of all rounds."""

    chunks: dict[str, list[np.ndarray]]
    cpu_s: dict[str, float]
    seconds: float

    def timing(self, name: str) -> Timing:
        return summarize(name, np.concatenate(self.chunks[name]), self.cpu_s.get(name))

    def pairs(self, rows: Sequence[Row]) -> list[tuple[Timing, Timing]]:
        """``(row, its floor)`` for each row, in order (a floor is its own floor), for ``ratio_table``."""
        return [(self.timing(row.name), self.timing(row.floor or row.name)) for row in rows]

    def per_round(self, name: str, floor: str) -> np.ndarray:
        """The p50 of ``name`` over the p50 of ``floor``, round by round."""
        ours = np.array([np.percentile(c, 50) for c in self.chunks[name]])
        return ours / np.array([np.percentile(c, 50) for c in self.chunks[floor]])


def alternate(groups: Sequence[Sequence[Row]], *, requests: int, rounds: int, warmup: int, rewarm: int = 20) -> Rounds:
    """Times every row of ``groups`` (a group: a floor and what is compared with it) in ``rounds`` rounds.

    First ``warmup`` untimed calls of each row; then, each round, group after group, each row of the group in turn
    gets ``rewarm`` untimed calls and ``requests // rounds`` (at least 1) timed ones, with the CPU time of the process
    that answers it read around the timed ones. The order within a group rotates every round (and runs backwards
    every other cycle of rotations), so that over whole cycles each row takes each place equally often, and
    comes as often right before a row as right after it (with a fixed order and its reverse, the middle rows of three
    or more would never go first)."""
    rows = [row for group in groups for row in group]
    for row in rows:
        sample(row.call, 0, warmup)
    chunk = max(1, requests // rounds)
    chunks: dict[str, list[np.ndarray]] = {row.name: [] for row in rows}
    cpu = {row.name: 0.0 for row in rows if row.answered_by is not None}
    started = time.perf_counter()
    for r in range(rounds):
        for group in groups:
            for row in _order(group, r):
                sample(row.call, 0, rewarm)
                if row.answered_by is None:
                    chunks[row.name].append(sample(row.call, chunk, warmup=0))
                    continue
                before = cpu_seconds(row.answered_by)
                chunks[row.name].append(sample(row.call, chunk, warmup=0))
                cpu[row.name] += cpu_seconds(row.answered_by) - before
    return Rounds(chunks, cpu, time.perf_counter() - started)


def _order(group: Sequence[Row], r: int) -> list[Row]:
    """The rows of ``group`` in round ``r``: rotated by ``r``, backwards in every other cycle of rotations (for two
    rows: ab, ba, ba, ab)."""
    k = r % len(group)
    order = [*group[k:], *group[:k]]
    return order[::-1] if (r // len(group)) % 2 else order


def verdict(ok: bool) -> str:
    """How a benchmark says whether a figure meets its target."""
    return "meets" if ok else "MISSES"


def format_ratios(ratios: np.ndarray) -> str:
    """Per-round ratios as ``1.08 1.11 ... (median 1.10)``."""
    return " ".join(f"{x:.2f}" for x in ratios) + f" (median {np.median(ratios):.2f})"
