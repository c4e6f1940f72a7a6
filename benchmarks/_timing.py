"""Shared timing helpers for the benchmarks: timed repeated calls, their percentiles, and a table printer."""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Timing:
    name: str
    p50_us: float
    p99_us: float
    mean_us: float


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


def summarize(name: str, samples: np.ndarray) -> Timing:
    return Timing(name, float(np.percentile(samples, 50)), float(np.percentile(samples, 99)), float(samples.mean()))


def time_calls(name: str, fn: Callable[[], object], *, repeats: int, warmup: int = 200) -> Timing:
    """Times ``repeats`` sequential calls of ``fn`` after ``warmup`` calls (garbage collector paused)."""
    return summarize(name, sample(fn, repeats, warmup))


def print_table(title: str, rows: list[Timing], floor: Timing, reference: Timing | None = None) -> None:
    """Prints p50/p99 with each row's p50 ratio to the floor (and to ``reference`` if given)."""
    print(f"\n{title}")
    ref_col = f"  x {reference.name:>10}" if reference else ""
    print(f"{'':<28}{'p50 us':>10}{'p99 us':>10}{'x floor':>10}{ref_col}")
    for row in rows:
        ref = f"{row.p50_us / reference.p50_us:>13.2f}" if reference else ""
        print(f"{row.name:<28}{row.p50_us:>10.1f}{row.p99_us:>10.1f}{row.p50_us / floor.p50_us:>10.2f}{ref}")
