"""The machine around a benchmark: where its processes run (CPU pinning), and what a process uses (CPU time; memory
and open file descriptors of it or of its whole process tree), read from ``/proc``."""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


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


def cpu_seconds(pid: int) -> float:
    """CPU time of process ``pid``: the sum over its threads of ``/proc/.../schedstat`` (nanoseconds, unlike the
    10 ms ticks of ``/proc/PID/stat``)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            total += int((task / "schedstat").read_text().split()[0])
    return total / 1e9


def rss_mib(pid: int) -> float:
    """Resident memory of process ``pid`` (MiB); nan for a process without any (a zombie)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants."""
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        with contextlib.suppress(OSError, ValueError):
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
    return pids


def tree_usage(pid: int) -> tuple[float, int]:
    """(RSS in MiB, open file descriptors) of ``pid`` and its descendants (a process that ended meanwhile, or a
    zombie, counts for nothing)."""
    rss, fds = 0.0, 0
    for p in process_tree(pid):
        with contextlib.suppress(OSError, ValueError):
            mib = rss_mib(p)
            if not math.isnan(mib):
                rss += mib
                fds += open_fds(p)
    return rss, fds


@dataclass
class Series:
    """Timestamped samples of one quantity (``time.monotonic``), each with whether it was a success."""

    t: list[float] = field(default_factory=list)
    v: list[float] = field(default_factory=list)
    ok: list[bool] = field(default_factory=list)

    def add(self, value: float, ok: bool = True) -> None:
        self.t.append(time.monotonic())
        self.v.append(value)
        self.ok.append(ok)

    def window(self, start: float, end: float) -> tuple[np.ndarray, np.ndarray]:
        """(values, successes) of the samples taken in ``[start, end)``."""
        t = np.asarray(self.t)
        mask = (t >= start) & (t < end)
        return np.asarray(self.v)[mask], np.asarray(self.ok, dtype=bool)[mask]


def stop(proc: subprocess.Popen[Any], grace_s: float) -> None:
    """SIGTERM, then SIGKILL if the process has not exited within ``grace_s``; returns once it is gone."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
