"""What the benchmarks share: the floor's ONNX Runtime session, the floor server as a child process, CPU time of a
process, CPU pinning of server and clients, fixed-rate pacing of a client, and timed repeated calls with their
percentiles."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import odetoode.telemetry_off  # noqa: F401  (first: turns ONNX Runtime's telemetry off before onnxruntime is imported)

# isort: split
import numpy as np
import onnxruntime as ort


def cpu_session(path: Path) -> ort.InferenceSession:
    """The session exactly as ``service.runtime.ModelRuntime`` builds it on CPU (one intra-op thread)."""
    from service.runtime import session_options

    return ort.InferenceSession(str(path), session_options(), providers=["CPUExecutionProvider"])


@contextlib.contextmanager
def floor_process(script: str, model_file: Path, ready: str) -> Iterator[tuple[re.Match[str], int]]:
    """``python script --floor-server model_file`` as a child process. Waits for its first line, which must match
    ``ready`` (the ports it listens on); yields the match and the process id; SIGTERM at the end."""
    cmd = [sys.executable, str(Path(script).resolve()), "--floor-server", str(model_file)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.search(ready, line)
        if match is None:
            raise RuntimeError(f"floor server did not start: {line!r}")
        yield match, proc.pid
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def cpu_seconds(pid: int) -> float:
    """CPU time of process ``pid``: the sum over its threads of ``/proc/.../schedstat`` (nanoseconds, unlike the
    10 ms ticks of ``/proc/PID/stat``)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            total += int((task / "schedstat").read_text().split()[0])
    return total / 1e9


def add_pin_options(parser: argparse.ArgumentParser) -> None:
    pin = parser.add_mutually_exclusive_group()
    pin.add_argument("--pin", dest="pin", action="store_true", default=None, help="server on CPU 0, clients elsewhere")
    pin.add_argument("--no-pin", dest="pin", action="store_false", help="let the OS place server and clients")


def cpu_split(pin: bool | None) -> tuple[set[int] | None, set[int] | None]:
    """(server CPUs, client CPUs): the first CPU for the server and the rest for clients when pinned (the default
    with two CPUs or more), else (None, None)."""
    cpus = sorted(os.sched_getaffinity(0))
    pinned = pin if pin is not None else len(cpus) >= 2
    return ({cpus[0]}, set(cpus[1:])) if pinned else (None, None)


@contextlib.contextmanager
def affinity(cpus: set[int] | None) -> Iterator[None]:
    """Runs the block with this process's CPU affinity set to ``cpus`` (children started in it inherit it)."""
    if not cpus:
        yield
        return
    saved = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, saved)


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
