"""Wiring: settings -> repository -> data plane -> REST, gRPC and metrics listeners; signals and graceful drain."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import socket
import ssl
import time
from collections.abc import Generator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import uvicorn
from prometheus_client import CollectorRegistry, make_asgi_app

from service.auth import TokenCheck, TokenSource
from service.bulk import BulkPool
from service.dataplane import DataPlane
from service.errors import Unavailable
from service.grpc_guard import OpenStreams
from service.grpc_server import Health, build_grpc_server
from service.http import FramingGuard, guarded_protocol, raise_file_limit
from service.memory import map_large_buffers
from service.metrics import ServerMetrics
from service.ration import Ration
from service.repository import ModelRepository
from service.rest import create_app
from service.runtime import available_cpus
from service.settings import ServerSettings

log = logging.getLogger(__name__)


FLUSH_S = 0.5
"""At shutdown, once the grace period is over: how long the last answers get to leave before connections close."""
ACCEPT_BATCH = 16
"""Connections the HTTP ports accept per turn of the event loop (see ``ServerSettings.http_backlog``)."""


class _Uvicorn(uvicorn.Server):
    """uvicorn without its own signal handling: the server process owns SIGTERM/SIGINT and drains itself."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class Server:
    """One process serving every model of the repository over REST, gRPC and Prometheus."""

    def __init__(
        self,
        settings: ServerSettings,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = ServerMetrics(registry)
        self.executor = ThreadPoolExecutor(max_workers=available_cpus(), thread_name_prefix="inference")
        self.repository = ModelRepository(settings, self.metrics, self.executor)
        self.ration = Ration()
        """The share of each event-loop turn for HTTP and bulk work; robots' calls are never rationed."""
        self.bulk = BulkPool(
            settings.bulk_workers or max(1, available_cpus() // 2),
            settings.bulk_max_requests,
            settings.bulk_worker_priority,
            settings.log_format,
            settings.log_level,
            settings.bulk_bytes_per_s,
            self.ration,
        )
        self.plane = DataPlane(self.repository, self.metrics, settings, self.bulk)
        self.metrics.watch_bulk(self.bulk)
        self.metrics.watch_server(self.plane.ready, self.repository.queue_levels)
        self.health = Health(self.plane)
        self.repository.on_change.append(self.health.update)
        self.tokens = TokenSource(settings)  # raises ConfigurationError: authentication fails closed
        self.auth = TokenCheck(self.tokens)
        self.app = create_app(self.plane, self.ration, self.auth)
        self.streams = OpenStreams()
        self.grpc_server: grpc.aio.Server | None = None
        self.http_server: _Uvicorn | None = None
        self._http_task: asyncio.Task[None] | None = None
        self._token_watch: asyncio.Task[None] | None = None
        self.metrics_server: _Uvicorn | None = None
        self._metrics_task: asyncio.Task[None] | None = None
        self.http_port = settings.http_port
        self.grpc_port = settings.grpc_port
        self.metrics_port = settings.metrics_port
        self._stopped = asyncio.Event()

    async def start(self) -> None:
        """Loads the models and opens the listeners; returns once every port accepts connections."""
        s = self.settings
        map_large_buffers()  # a large request's chunks are unmapped when freed, not kept in the heap
        per_port = self._connection_bound()
        await asyncio.gather(self.repository.start(), self.bulk.start())
        self.grpc_server = build_grpc_server(self.plane, self.health, per_port, self.auth, self.streams)
        address = f"{s.host}:{s.grpc_port}"
        if s.tls_cert is not None and s.tls_key is not None:
            credentials = grpc.ssl_server_credentials(
                [(s.tls_key.read_bytes(), s.tls_cert.read_bytes())],
                root_certificates=None if s.tls_client_ca is None else s.tls_client_ca.read_bytes(),
                require_client_auth=s.tls_client_ca is not None,
            )
            self.grpc_port = self.grpc_server.add_secure_port(address, credentials)
        else:
            self.grpc_port = self.grpc_server.add_insecure_port(address)
        if self.grpc_port == 0:
            raise OSError(f"cannot listen for gRPC on {s.host}:{s.grpc_port}")
        await self.grpc_server.start()
        self.http_server, self._http_task = await self._serve_http(self.app, s.http_port, per_port)
        self.http_port = self.http_server.servers[0].sockets[0].getsockname()[1]
        if self.tokens.file is not None:
            self._token_watch = asyncio.get_running_loop().create_task(self.tokens.watch(s.auth_token_reload_s))
        if s.metrics_port is not None and self.auth.enabled and not s.auth_open_metrics:
            log.info("metrics port disabled: auth covers metrics, which stay on the REST /metrics")
        elif s.metrics_port is not None:
            app = FramingGuard(make_asgi_app(registry=self.metrics.registry))
            self.metrics_server, self._metrics_task = await self._serve_http(app, s.metrics_port, per_port)
            self.metrics_port = self.metrics_server.servers[0].sockets[0].getsockname()[1]
        await self.health.update()
        log.info(
            "serving %d model version(s): http :%d, grpc :%d, metrics :%s",
            self.repository.ready_count(), self.http_port, self.grpc_port, self.metrics_port,
        )  # fmt: skip

    def _connection_bound(self) -> int:
        """Connections per port: ``max_connections``, within what the open-file limit allows for three ports beside
        the files and sockets the server holds anyway (raising the limit first, as far as the system lets it)."""
        wanted = self.settings.max_connections
        reserve = 256  # model files, bulk workers, ONNX Runtime, logs, the listeners themselves
        limit = raise_file_limit(3 * wanted + reserve)
        bound = min(wanted, max(16, (limit - reserve) // 3))
        if bound < wanted:
            log.warning("open-file limit %d: at most %d connections per port instead of %d", limit, bound, wanted)
        return bound

    async def _serve_http(self, app: Any, port: int, max_connections: int) -> tuple[_Uvicorn, asyncio.Task[None]]:
        """A uvicorn server for ``app`` on ``port`` with the connection hygiene of ``service.http``."""
        s = self.settings
        tls: dict[str, Any] = {}
        if s.tls_cert is not None:
            tls = {"ssl_certfile": str(s.tls_cert), "ssl_keyfile": str(s.tls_key)}
            if s.tls_client_ca is not None:
                tls.update(ssl_ca_certs=str(s.tls_client_ca), ssl_cert_reqs=ssl.CERT_REQUIRED)
        protocol = guarded_protocol(max_connections, s.http_head_timeout_s, s.http_write_timeout_s, self.ration)
        family = socket.AF_INET6 if ":" in s.host else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # TCP named: asyncio then turns
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # Nagle off on what it accepts
        listener.bind((s.host, port))
        listener.listen(s.http_backlog)
        config = uvicorn.Config(
            app, host=s.host, port=port, log_config=None, access_log=False, lifespan="off", http=protocol,
            backlog=ACCEPT_BATCH,
            timeout_keep_alive=s.http_keep_alive_s,  # type: ignore[arg-type]  # a float works (call_later)
            timeout_graceful_shutdown=FLUSH_S,  # type: ignore[arg-type]  # a float works (asyncio.wait_for)
            **tls,
        )  # fmt: skip
        server = _Uvicorn(config)
        task = asyncio.get_running_loop().create_task(server.serve(sockets=[listener]))
        while not server.started:
            if task.done():
                task.result()
                raise OSError(f"cannot serve HTTP on {s.host}:{port}")
            await asyncio.sleep(0.01)
        # asyncio accepts as many connections per turn as the backlog it was given, and listens with that backlog
        # too: it got ACCEPT_BATCH; the system's queue gets its full length back (listen() may be called again).
        listener.listen(s.http_backlog)
        return server, task

    async def stop(self) -> None:
        """Graceful drain, within ``drain_grace_s`` plus about ``FLUSH_S`` in all: not ready at once and new requests
        refused; accepted ones get the rest of the grace period to finish; then those still queued or computed are
        answered UNAVAILABLE (with their ids, on streams), the answers get ``FLUSH_S`` to leave, and it stops."""
        if self._stopped.is_set():
            return
        grace = self.settings.drain_grace_s
        deadline = time.monotonic() + grace
        self.plane.start_drain()
        await self.health.update()
        log.info("draining: waiting up to %.1f s for in-flight requests", grace)
        if not await self.plane.wait_idle(max(0.0, deadline - time.monotonic())):
            log.warning("grace period over with requests still in flight: they are answered UNAVAILABLE")
        if self._token_watch is not None:
            self._token_watch.cancel()
        shut = Unavailable("the server shut down before this request was computed")
        await asyncio.gather(self.repository.close(0.0, shut), self.bulk.close())
        self.streams.close_all()  # each open stream ends UNAVAILABLE, by itself rather than cancelled by grpc
        stops: list[Any] = []
        if self.grpc_server is not None:
            stops.append(self.grpc_server.stop(grace=FLUSH_S))
        for server, task in ((self.http_server, self._http_task), (self.metrics_server, self._metrics_task)):
            if server is not None and task is not None:
                server.should_exit = True
                stops.append(asyncio.wait_for(asyncio.shield(task), FLUSH_S + 0.5))
        await asyncio.gather(*stops, return_exceptions=True)
        self.executor.shutdown(wait=False, cancel_futures=True)
        self._stopped.set()
        log.info("stopped")

    async def serve_forever(self) -> None:
        """Starts, then runs until SIGTERM or SIGINT, then drains and stops."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await self.start()
        # Modules, models and listeners live as long as the process: freeze them out of the collector's reach, so a
        # full collection under traffic scans request garbage only (~0 ms instead of 25-90 ms: a stall of dozens of
        # 1 kHz control cycles). Versions loaded later are collected normally.
        gc.collect()
        gc.freeze()
        await stop.wait()
        log.info("signal received")
        await self.stop()
