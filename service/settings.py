"""Server settings: environment variables ``ODETOODE_<FIELD>``, command-line flags ``--<field-name>``, or code.

Nothing here reads ``argv`` at import time; ``service.__main__`` asks for command-line parsing explicitly.
Per-model settings live in ``models/<name>/config.yaml`` (``service.model_config``) and override the defaults here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.model_config import Provider


class ConfigurationError(ValueError):
    """Settings the server cannot serve with (an auth token file without tokens, for one): the start is refused."""


class ServerSettings(BaseSettings):
    """How the server listens, which models it serves and how it runs them."""

    model_config = SettingsConfigDict(
        env_prefix="ODETOODE_",
        use_attribute_docstrings=True,
        extra="forbid",
        cli_kebab_case=True,
        cli_prog_name="python -m service",
    )

    repository: Path = Path("models")
    """Root of the model repository: ``<repository>/<name>/<version>/model.onnx`` (+ ``<name>/config.yaml``)."""

    host: str = "0.0.0.0"
    """Address every listener binds to."""

    http_port: int = Field(8000, ge=0, le=65535)
    """REST port (Open Inference Protocol v2, KServe V1, OpenAPI docs). 0 picks a free port."""

    grpc_port: int = Field(8001, ge=0, le=65535)
    """gRPC port (Open Inference Protocol v2, health, reflection). 0 picks a free port."""

    metrics_port: int | None = Field(8002, ge=0, le=65535)
    """Prometheus port; ``None`` disables it (metrics stay on the REST ``/metrics``). 0 picks a free port."""

    model_control_mode: Literal["none", "poll", "explicit"] = "poll"
    """``none``: load everything once at start; ``poll``: also rescan the repository every ``poll_interval_s``
    (new versions are loaded, removed ones unloaded); ``explicit``: load only ``startup_models`` and what the
    repository API asks for."""

    poll_interval_s: float = Field(2.0, gt=0)
    """Seconds between repository scans in ``poll`` mode."""

    startup_models: list[str] | None = None
    """In ``explicit`` mode, the models to load at start (``None``: all of them)."""

    repository_api: bool = False
    """Allow ``load``/``unload`` through the repository extension. Off by default: it changes what is served."""

    list_models: bool = True
    """Callers may learn which models are served: ``GET /v1/models`` lists them and an unknown-model error names
    them. Off where a caller must not learn the names of other callers' models (the repository index, with
    ``repository_api``, still lists them)."""

    providers: list[Provider] = ["cpu"]
    """Default execution providers in order of preference (``cuda``, ``tensorrt``, ``cpu``); a model's
    ``config.yaml`` may override them."""

    allow_cpu_fallback: bool = False
    """Default for models: if a requested GPU provider is unavailable, serve on CPU (with a warning and a metric)
    instead of failing the load."""

    intra_op_threads: int | None = Field(None, ge=1)
    """ONNX Runtime intra-op threads per session. ``None``: 1, the fastest for the small graphs served here (more
    threads add scheduling jitter to p99); requests still run in parallel across cores."""

    inline_threshold_us: float = Field(200.0, ge=0)
    """Models whose warm batch-1 CPU compute is below this run on the event loop itself: a thread hop would cost
    more than the computation. 0 disables inline execution."""

    max_batch_size: int = Field(256, ge=1)
    """Default largest batch the dynamic batcher forms from queued requests (single requests may be larger)."""

    max_queue_delay_us: int = Field(0, ge=0)
    """Default time the batcher may hold the first request of a batch waiting for more (0: never wait)."""

    max_queue_size: int = Field(1024, ge=1)
    """Default bound on queued requests per model version; beyond it requests fail with RESOURCE_EXHAUSTED."""

    max_request_bytes: int = Field(64 * 1024 * 1024, ge=1024)
    """Largest request body (REST, after decompression) or message (gRPC) accepted, and largest gRPC message sent.
    Also the most elements one tensor may declare."""

    grpc_max_message_bytes: int = Field(1024 * 1024, ge=1024)
    """Largest gRPC message received or sent (and never above ``max_request_bytes``). gRPC's Python binding copies a
    whole message on the event loop that also answers robots before any of our code sees it, so large payloads belong
    on REST with the binary tensor extension, which moves them in small pieces. Raising it to gRPC's usual 4 MiB puts
    robots' p99 round trip at the edge of its target under a stream of such messages (docs/serving.md)."""

    max_request_rows: int = Field(65536, ge=1)
    """Default largest batch (rows) one request may carry, whatever its size in bytes; a model's ``config.yaml``
    may change it. Checked from the request's declared shape, before any tensor data is decoded."""

    max_image_pixels: int = Field(4096 * 4096, ge=1)
    """Most pixels (width x height) of an image body (PNG or JPEG, ``POST /v1/models/{model}:predict`` with
    ``Content-Type: image/png``); checked from the image's header, before it is decoded (a PNG of a few KiB may
    declare a gigapixel). Decoding one takes 4-7 bytes of memory per pixel, 12 with transparency (200 MB at the
    default), in a bulk worker process for any image over 128x128 pixels."""

    bulk_request_bytes: int = Field(64 * 1024, ge=1024)
    """Requests larger than this (a REST body, an OIP gRPC message) are decoded, computed and encoded in the bulk
    worker processes, never on the event loop that answers robots; compressed REST bodies always are."""

    bulk_workers: int | None = Field(None, ge=1)
    """Bulk worker processes. ``None``: half the CPUs this process may use (at least one)."""

    bulk_max_requests: int = Field(8, ge=1)
    """Large requests admitted at once (being received, waiting for a worker, or computed); beyond, they are refused
    at once with 429 / RESOURCE_EXHAUSTED. Bounds the server's memory: each may hold up to ``max_request_bytes``."""

    bulk_bytes_per_s: float = Field(32 * 1024 * 1024, gt=0)
    """Rate at which the bytes of large requests and their answers pass through the event loop that answers robots
    (REST bodies as they are read, gRPC messages -- counted twice, since gRPC copies them whole on that loop -- as they
    are taken in); beyond it they wait their turn, within their deadline. This bounds the event loop's share of bulk
    work, and so what it adds to robots' round trips, whatever the bulk traffic."""

    bulk_worker_priority: Literal["idle", "low", "normal"] = "idle"
    """CPU priority of the bulk workers. ``idle`` (Linux ``SCHED_IDLE``): they use only CPU time nothing else wants,
    and the kernel preempts them the moment the event loop that answers robots wakes up; ``low``: nice 10 (they
    get a tenth of a busy CPU's time beside normal processes, and may run on a little before yielding it);
    ``normal``: as the server itself."""

    max_connections: int = Field(512, ge=1)
    """Open connections per port (REST, gRPC, metrics); beyond, a new connection is closed at once. The server raises
    its open-file limit to cover all ports (and lowers this bound if the system's hard limit cannot)."""

    http_backlog: int = Field(1024, ge=1)
    """New connections the REST and metrics ports let wait to be accepted (beyond, the system makes them retry their
    handshake a second later). They are accepted 16 per turn of the event loop, not all at once: accepting one costs
    ~0.1 ms here, and a burst of 500 accepted in one go held the loop 50 ms."""

    http_head_timeout_s: float = Field(10.0, gt=0)
    """A REST or metrics connection must send each request's head (request line and headers) within this long of
    opening or of its previous response, else it is closed."""

    http_body_timeout_s: float = Field(30.0, gt=0)
    """Longest pause while a request body arrives; then 408 and the connection is closed."""

    http_keep_alive_s: float = Field(5.0, gt=0)
    """An idle keep-alive REST or metrics connection is closed after this long."""

    http_write_timeout_s: float = Field(30.0, gt=0)
    """A client that reads none of its response for this long is disconnected."""

    grpc_handshake_timeout_s: float = Field(10.0, gt=0)
    """A gRPC connection must complete its (TLS and) HTTP/2 handshake within this long, else it is closed."""

    grpc_max_connection_idle_s: float = Field(300.0, gt=0)
    """A gRPC connection without calls for this long is closed (GOAWAY: clients reconnect on their next call)."""

    grpc_keepalive_time_s: float = Field(60.0, gt=0)
    """Server-initiated keepalive ping interval on idle connections."""

    grpc_keepalive_timeout_s: float = Field(20.0, gt=0)
    """Time to wait for a keepalive ping acknowledgement before closing the connection."""

    grpc_min_client_ping_interval_s: float = Field(5.0, gt=0)
    """Clients may ping this often (even without active calls) without a GOAWAY "too_many_pings"; the robot
    client SDK pings every 10 s."""

    drain_grace_s: float = Field(10.0, ge=0)
    """On SIGTERM: readiness turns false, new requests are refused, and in-flight requests get this long to
    finish before the process exits."""

    auth_tokens: list[SecretStr] = []
    """Bearer tokens accepted on every data path (REST ``Authorization: Bearer ...``, gRPC ``authorization``
    metadata); several allow rotation. Empty: no authentication. Prefer ``auth_token_file`` in deployments."""

    auth_token_file: Path | None = None
    """A file with one accepted token per line (a mounted Kubernetes secret), added to ``auth_tokens``; blank lines and
    ``#`` comments are not tokens. A file that yields no token refuses the start (authentication never turns itself
    off); the file is re-read when it changes (a rotated secret), and a change that yields no token is ignored."""

    auth_token_reload_s: float = Field(2.0, gt=0)
    """How often ``auth_token_file`` is checked for changes (one ``stat``; it is read only when it changed)."""

    auth_open_health: bool = True
    """Leave health (REST ``/v2/health/*``, gRPC ``grpc.health.v1``), docs and reflection open with auth on."""

    auth_open_metrics: bool = True
    """Leave ``/metrics`` (and the metrics port) open with auth on."""

    tls_cert: Path | None = None
    """PEM certificate (chain) for HTTPS on the REST and metrics ports and TLS on gRPC; needs ``tls_key``."""

    tls_key: Path | None = None
    """PEM private key of ``tls_cert``."""

    tls_client_ca: Path | None = None
    """PEM CA bundle: when set, clients must present a certificate it signed (mutual TLS) on every port."""

    log_format: Literal["text", "json"] = "text"
    """``json`` writes one JSON object per log line (for log shippers)."""

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    """Root log level."""

    @model_validator(mode="after")
    def _tls_pair(self) -> ServerSettings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("tls_client_ca (mutual TLS) needs tls_cert and tls_key")
        return self
