"""Real servers on ephemeral ports for tests and benchmarks: in a background thread (fast) or as a subprocess
(signals, exit codes, a process of its own to measure)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from service.server import Server
from service.settings import ServerSettings


@dataclass
class RunningServer:
    server: Server
    loop: asyncio.AbstractEventLoop

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.server.http_port}"

    @property
    def grpc(self) -> str:
        return f"127.0.0.1:{self.server.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.server.metrics_port}/metrics"

    def call(self, coro: Any, timeout: float = 60) -> Any:
        """Runs a coroutine on the server's event loop (e.g. a repository reconcile) and returns its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)


def test_settings(repository: Path, **overrides: Any) -> ServerSettings:
    values: dict[str, Any] = {
        "repository": repository,
        "host": "127.0.0.1",
        "http_port": 0,
        "grpc_port": 0,
        "metrics_port": 0,
        "model_control_mode": "none",
        "drain_grace_s": 5.0,
    }
    values.update(overrides)
    return ServerSettings(**values)


@contextlib.contextmanager
def running_server(repository: Path, **overrides: Any) -> Iterator[RunningServer]:
    """A ``Server`` on ephemeral ports in a thread with its own event loop; stopped (drained) on exit."""
    settings = test_settings(repository, **overrides)
    started = threading.Event()
    holder: dict[str, Any] = {}

    def run() -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            server = Server(settings, registry=CollectorRegistry())
            holder["server"], holder["loop"] = server, loop
            stop = asyncio.Event()
            holder["stop"] = stop
            loop.run_until_complete(server.start())
        except BaseException as exc:
            holder["error"] = exc
            if "server" in holder:  # started part of the way: stop what did start (workers, listeners)
                with contextlib.suppress(BaseException):
                    loop.run_until_complete(holder["server"].stop())
            loop.close()
            started.set()
            return
        started.set()
        loop.run_until_complete(stop.wait())
        loop.run_until_complete(server.stop())
        loop.close()

    thread = threading.Thread(target=run, name="test-server", daemon=True)
    thread.start()
    if not started.wait(120):
        raise TimeoutError("server did not start within 120 s")
    if "error" in holder:
        raise holder["error"]
    try:
        yield RunningServer(holder["server"], holder["loop"])
    finally:
        holder["loop"].call_soon_threadsafe(holder["stop"].set)
        thread.join(60)


@dataclass
class ServerProcess:
    process: subprocess.Popen[str]
    http_port: int
    grpc_port: int
    metrics_port: int
    log_lines: list[str]

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def terminate(self, timeout: float = 30) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)


def child_env(changes: dict[str, str | None] | None) -> dict[str, str]:
    """This process's environment with ``changes`` applied (a ``None`` value removes the variable)."""
    env = {**os.environ, **(changes or {})}
    return {k: v for k, v in env.items() if v is not None}


@contextlib.contextmanager
def server_process(
    repository: Path, *args: str, env: dict[str, str | None] | None = None, cwd: Path | None = None
) -> Iterator[ServerProcess]:
    """``python -m service`` as a child process on ephemeral ports (read back from its log); ``env`` adds variables
    to this process's environment (``None`` removes one); ``cwd``: where it runs (``-m`` puts it first on the path)."""
    cmd = [sys.executable, "-m", "service", "--repository", str(repository), "--host", "127.0.0.1",
           "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0", *args]  # fmt: skip
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env=child_env(env), cwd=cwd,
    )  # fmt: skip
    lines: list[str] = []
    pattern = re.compile(r"http :(\d+), grpc :(\d+), metrics :(\d+)")
    deadline = time.monotonic() + 120
    match = None
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        match = pattern.search(line)
        if match:
            break
    if match is None:
        proc.kill()
        raise RuntimeError("server process did not start:\n" + "".join(lines))

    def drain() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    handle = ServerProcess(proc, int(match[1]), int(match[2]), int(match[3]), lines)
    try:
        yield handle
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        reader.join(5)
        proc.stdout.close()
