"""The model repository: what is on disk, what is served, and the moves between the two.

Layout: ``<root>/<name>/<version>/model.onnx`` with an optional ``<root>/<name>/config.yaml``. A reconcile pass
compares disk with what is served and, per model:

1. loads every version the version policy selects that is not served yet (or whose file or config changed): ONNX
   Runtime session, warm-up, golden self-check -- all in a loader thread, off the event loop;
2. only then swaps the new versions in, and drains and releases the versions that left, so there is never a moment
   without a ready version when one existed before (load before unload);
3. records failures (state FAILED with the reason, a metric, a log line) without touching any other model or the
   versions still being served -- a corrupt new file never takes down the old one.

``poll`` mode reconciles every ``poll_interval_s``; ``explicit`` mode only for models loaded through the repository
API (or listed at start-up); ``none`` once at start.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from odetoode.layout import model_names, version_files
from odetoode.modelfile import MODEL_NAME, VERSION_NAME
from service.batching import Batcher
from service.errors import (
    GoldenCheckFailed,
    InvalidArgument,
    ModelLoadError,
    ModelNotFound,
    ModelNotReady,
    ProviderUnavailable,
    ServingError,
    without_paths,
)
from service.metrics import ServerMetrics
from service.metrics_state import QueueLevel
from service.model_config import CONFIG_FILE, ResolvedConfig, load_serving_config, resolve
from service.runtime import ModelRuntime, available_cpus, fell_back, open_checked
from service.settings import ServerSettings
from service.tensors import Signature

log = logging.getLogger(__name__)
NAMES_LISTED = 20
"""An unknown-model error names at most this many served models."""
Fingerprint = tuple[int, int, int]


class State(StrEnum):
    LOADING = "LOADING"
    READY = "READY"
    UNAVAILABLE = "UNAVAILABLE"
    UNLOADING = "UNLOADING"
    FAILED = "FAILED"


@dataclass
class ServedVersion:
    """A version that takes traffic: its runtime, its request queue and its effective settings."""

    name: str
    version: int
    runtime: ModelRuntime
    batcher: Batcher
    config: ResolvedConfig
    fingerprint: Fingerprint
    signature: Signature
    """What one request may carry: checked against every tensor header before its data is decoded."""
    loaded_at: float = field(default_factory=time.time)


@dataclass(frozen=True)
class IndexEntry:
    name: str
    version: str
    state: str
    reason: str = ""


@dataclass
class _Status:
    state: State
    reason: str = ""
    fingerprint: Fingerprint | None = None


def _fingerprint(model_file: Path, config_file: Path) -> Fingerprint:
    st = model_file.stat()
    try:
        config_mtime = config_file.stat().st_mtime_ns
    except FileNotFoundError:
        config_mtime = 0
    return (st.st_mtime_ns, st.st_size, config_mtime)


class ModelRepository:
    """Owns every served model version; all state changes happen on the event loop."""

    def __init__(self, settings: ServerSettings, metrics: ServerMetrics, executor: Executor) -> None:
        self.settings = settings
        self.root = settings.repository
        self.metrics = metrics
        self._executor = executor
        self._loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model-loader")
        self._served: dict[str, dict[int, ServedVersion]] = {}
        self._status: dict[str, dict[int, _Status]] = {}
        self._config_errors: dict[str, str] = {}
        self._wanted: set[str] | None = None  # None: every model on disk (poll/none modes)
        self._lock = asyncio.Lock()
        self._poller: asyncio.Task[None] | None = None
        self.on_change: list[Callable[[], Awaitable[None]]] = []
        """Called after every reconcile pass (health status, for one)."""

    # -- lifecycle ------------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Loads the initial models and, in poll mode, starts watching the repository."""
        if not self.root.is_dir():
            log.warning("model repository %s does not exist; serving nothing until it does", self.root)
        if self.settings.model_control_mode == "explicit":
            self._wanted = set(self.settings.startup_models or model_names(self.root))
        await self.reconcile()
        if self.settings.model_control_mode == "poll":
            self._poller = asyncio.get_running_loop().create_task(self._poll_forever())

    async def _poll_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.poll_interval_s)
            try:
                await self.reconcile()
            except Exception:  # a scan must never kill the poller
                log.exception("repository scan failed")

    async def close(self, timeout: float = 0.0, error: ServingError | None = None) -> None:
        """Stops polling and unloads every version at once: queued requests get ``timeout`` s to finish, then are
        answered ``error``. Does not wait for a load in progress (its thread is abandoned)."""
        if self._poller is not None:
            self._poller.cancel()
            await asyncio.gather(self._poller, return_exceptions=True)
        served = [sv for versions in self._served.values() for sv in versions.values()]
        await asyncio.gather(*(sv.batcher.close(timeout, error) for sv in served))
        for sv in served:
            self._set(sv.name, sv.version, State.UNAVAILABLE, "the server is shutting down")
        self._served.clear()
        self._loader.shutdown(wait=False, cancel_futures=True)

    # -- queries --------------------------------------------------------------------------------------------------

    def ready_count(self) -> int:
        return sum(len(v) for v in self._served.values())

    def known(self, name: str) -> bool:
        return name in self._served or name in self._status

    def known_version(self, name: str, version: str) -> bool:
        """Whether ``version`` (a client's string) names a version of ``name`` that the repository knows of."""
        if not VERSION_NAME.fullmatch(version):
            return False
        v = int(version)
        return v in self._served.get(name, {}) or v in self._status.get(name, {})

    def served_versions(self, name: str) -> list[ServedVersion]:
        return [self._served[name][v] for v in sorted(self._served.get(name, {}))]

    def resolve(self, name: str, version: str | None = None) -> ServedVersion:
        """The version that answers a request: the given one, or the highest ready one."""
        if not self.known(name):
            raise self.not_found(name)
        served = self._served.get(name, {})
        if version:
            if not VERSION_NAME.fullmatch(version):
                raise InvalidArgument(f"model_version: {version!r} is not a version number")
            v = int(version)
            if v in served:
                return served[v]
            status = self._status.get(name, {}).get(v)
            if status is None:
                raise ModelNotFound(f"model {name!r} has no version {v}")
            reason = f": {status.reason}" if status.reason else ""
            raise ModelNotReady(f"version {v} of model {name!r} is {status.state.value}{reason}")
        if served:
            return served[max(served)]
        reasons = "; ".join(
            f"v{v} {s.state.value}{': ' + s.reason if s.reason else ''}"
            for v, s in sorted(self._status.get(name, {}).items())
        )
        raise ModelNotReady(f"model {name!r} has no ready version" + (f" ({reasons})" if reasons else ""))

    def queue_levels(self) -> list[QueueLevel]:
        """The batcher queue of every served version (read by the metrics when scraped)."""
        return [
            QueueLevel(sv.name, str(sv.version), sv.batcher.queued, sv.batcher.max_queue_size)
            for versions in list(self._served.values())
            for sv in list(versions.values())
        ]

    def ready_names(self) -> list[str]:
        """The models with at least one ready version, sorted."""
        return sorted(name for name, versions in self._served.items() if versions)

    def not_found(self, name: str) -> ModelNotFound:
        """The error for a model this repository does not know; it names the served models when callers may learn
        them (``list_models``), at most ``NAMES_LISTED`` of them."""
        message = f"unknown model {name!r}"
        if self.settings.list_models:
            names = self.ready_names()
            shown = ", ".join(repr(n) for n in names[:NAMES_LISTED]) + (", ..." if len(names) > NAMES_LISTED else "")
            message += f"; the models served are {shown}" if names else "; no model is served"
        return ModelNotFound(message)

    def index(self, ready_only: bool = False) -> list[IndexEntry]:
        """Triton's repository index: every known model version with its state and, when not ready, why."""
        entries: list[IndexEntry] = []
        for name in sorted(set(self._served) | set(self._status) | set(model_names(self.root))):
            statuses = self._status.get(name, {})
            if not statuses and name not in self._served:
                if not ready_only:
                    entries.append(IndexEntry(name, "", State.UNAVAILABLE.value, self._config_errors.get(name, "")))
                continue
            for v in sorted(set(statuses) | set(self._served.get(name, {}))):
                status = statuses.get(v, _Status(State.READY))
                if ready_only and status.state != State.READY:
                    continue
                entries.append(IndexEntry(name, str(v), status.state.value, status.reason))
        return entries

    # -- changes --------------------------------------------------------------------------------------------------

    async def load(self, name: str) -> None:
        """Repository API ``load``: (re)load ``name`` from disk now; raises ``ModelLoadError`` if nothing loads."""
        if not MODEL_NAME.fullmatch(name):
            raise InvalidArgument(f"model name {name!r} must match {MODEL_NAME.pattern}")
        if not version_files(self.root / name):
            raise ModelNotFound(f"model {name!r} has no version in the repository")
        if self._wanted is not None:
            self._wanted.add(name)
        await self.reconcile([name], force=True)
        if not self._served.get(name):
            statuses = self._status.get(name, {})
            reasons = "; ".join(f"v{v}: {s.reason}" for v, s in sorted(statuses.items()) if s.reason)
            raise ModelLoadError(f"model {name!r} did not load" + (f" ({reasons})" if reasons else ""))

    async def unload(self, name: str) -> None:
        """Repository API ``unload``: stop serving every version of ``name`` (queued requests still finish)."""
        if not self.known(name):
            raise self.not_found(name)
        if self._wanted is None:
            self._wanted = set(model_names(self.root))
        self._wanted.discard(name)
        await self.reconcile([name])

    async def reconcile(self, names: Iterable[str] | None = None, *, force: bool = False) -> None:
        """Brings the served set in line with disk for ``names`` (default: every model known or on disk)."""
        async with self._lock:
            # What is known but no longer on disk too: a directory removed while a pass read it leaves its name
            # behind, and only a later pass that still looks at it can forget it.
            known = set(self._served) | set(self._status)
            targets = set(names) if names is not None else set(model_names(self.root)) | known
            for name in sorted(targets):
                try:
                    await self._reconcile_model(name, force)
                except Exception:  # one model's trouble never stops the others
                    log.exception("reconciling model %s failed", name)
        for callback in self.on_change:
            await callback()

    async def _reconcile_model(self, name: str, force: bool) -> None:
        model_dir = self.root / name
        present = version_files(model_dir)
        selected = self._wanted is None or name in self._wanted  # explicit mode: loaded through the API
        statuses = self._status.setdefault(name, {})
        served = self._served.setdefault(name, {})
        wanted: list[int] = []
        if selected:
            try:
                config = resolve(load_serving_config(model_dir), self.settings)
                self._config_errors.pop(name, None)
            except ModelLoadError as exc:
                # Keep serving what already runs; report the broken config for everything that would have loaded.
                self._config_errors[name] = str(exc)
                log.error("%s", exc)
                for v in present:
                    if v not in served:
                        self._set(name, v, State.FAILED, str(exc))
                        self.metrics.model_load_failed(name, str(v), "invalid_config", attempted=False)
                return
            wanted = config.version_policy.select(list(present))
            await self._load_new(name, model_dir, present, wanted, config, force)
        # release what left (after the new versions are in: load before unload) -- unless none of the versions that
        # should replace them loaded: a damaged new version never takes down a working one
        leaving = [sv for v, sv in served.items() if v not in wanted]
        if wanted and not any(v in served for v in wanted):
            leaving = []
        for sv in leaving:
            del served[sv.version]
        await self._release(name, leaving)
        for v in list(statuses):
            if v not in present and v not in served:
                del statuses[v]
                self.metrics.forget_model(name, str(v))
        reason = "not selected by the version policy" if selected else "unloaded"
        for v in present:
            status = statuses.get(v)
            if v in served:
                continue
            if v not in wanted and (status is None or status.state != State.FAILED or not selected):
                self._set(name, v, State.UNAVAILABLE, reason)
        if not served:
            del self._served[name]
        if not statuses and not present and not model_dir.is_dir():
            del self._status[name]

    async def _load_new(self, name: str, model_dir: Path, present: dict[int, Path], wanted: list[int],
                        config: ResolvedConfig, force: bool) -> None:  # fmt: skip
        """Loads every wanted version that is not served yet, or whose file or config changed."""
        statuses, served = self._status[name], self._served[name]
        for v in wanted:
            try:
                fp = _fingerprint(present[v], model_dir / CONFIG_FILE)
            except FileNotFoundError:  # removed since the scan (a rename-into-place in progress): the next scan decides
                continue
            current, previous = served.get(v), statuses.get(v)
            if current is not None and current.fingerprint == fp and not force:
                continue
            known_bad = previous is not None and previous.state == State.FAILED and previous.fingerprint == fp
            if current is None and known_bad and not force:
                continue  # unchanged and known bad: do not retry every poll
            loaded = await self._load_version(name, v, present[v], config, fp, replacing=current is not None)
            if loaded is not None:
                served[v] = loaded
                self._set(name, v, State.READY)
                self.metrics.model_loaded(name, str(v), loaded.runtime.providers[0],
                                          cpu_fallback=fell_back(loaded.runtime, config))  # fmt: skip
                if current is not None:
                    await self._release(name, [current], forget=False)

    async def _load_version(
        self, name: str, version: int, path: Path, config: ResolvedConfig, fp: Fingerprint, *, replacing: bool
    ) -> ServedVersion | None:
        if not replacing:
            self._set(name, version, State.LOADING)
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        try:
            runtime = await loop.run_in_executor(self._loader, open_checked, path, config)
        except ServingError as exc:
            self._failed(name, version, fp, str(exc), _load_failure_reason(exc), replacing)
            return None
        except OSError as exc:  # the file went away or became unreadable between the scan and the load: no crash
            message = f"cannot read {path.name}: {exc.strerror or exc}"
            self._failed(name, version, fp, message, "unreadable", replacing)
            return None
        except Exception as exc:
            log.exception("loading %s v%d crashed", name, version)
            message = f"unexpected error: {type(exc).__name__}: {without_paths(str(exc))}"
            self._failed(name, version, fp, message, "crashed", replacing)
            return None
        inline_rows = 0 if runtime.on_gpu else runtime.rows_within(self.settings.inline_threshold_us)
        batcher = Batcher(
            runtime.run,
            max_batch_size=max(1, runtime.max_batch_size),
            max_queue_delay_us=config.max_queue_delay_us,
            max_queue_size=config.max_queue_size,
            inline_rows=inline_rows,
            executor=self._executor,
            workers=available_cpus(),
            on_batch=self.metrics.batch_observer(name, str(version)),
            batched=runtime.batched,
        )
        log.info(
            "loaded %s v%d in %.0f ms on %s (batch-1 compute %.0f us, %s)",
            name, version, (time.perf_counter() - started) * 1e3, runtime.providers[0], runtime.compute_us_batch1,
            f"inline up to {inline_rows} rows" if inline_rows else "thread pool",
        )  # fmt: skip
        self._status.setdefault(name, {})[version] = _Status(State.READY, "", fp)
        signature = Signature(tuple(runtime.inputs), config.max_request_rows, self.settings.max_request_bytes)
        return ServedVersion(name, version, runtime, batcher, config, fp, signature)

    def _failed(self, name: str, version: int, fp: Fingerprint, reason: str, kind: str, replacing: bool) -> None:
        """Records a failed load (``kind``: its ``LOAD_FAILURE_REASONS`` entry): FAILED for a new version; for a
        reload, the old file keeps serving."""
        self.metrics.model_load_failed(name, str(version), kind)
        if replacing:
            reason = f"reload failed, still serving the previous file: {reason}"
            log.error("%s v%d: %s", name, version, reason)
            status = self._status[name][version]
            status.reason, status.fingerprint = reason, fp
            return
        log.error("%s v%d failed to load: %s", name, version, reason)
        self._set(name, version, State.FAILED, reason, fp)

    async def _release(self, name: str, versions: list[ServedVersion], *, forget: bool = True) -> None:
        for sv in versions:
            if forget:
                self._set(name, sv.version, State.UNLOADING)
            await sv.batcher.close(timeout=self.settings.drain_grace_s)
            if forget:
                self._set(name, sv.version, State.UNAVAILABLE, "unloaded")
                self.metrics.model_unloaded(name, str(sv.version))
            log.info("released %s v%d", name, sv.version)

    def _set(self, name: str, version: int, state: State, reason: str = "", fp: Fingerprint | None = None) -> None:
        status = self._status.setdefault(name, {}).setdefault(version, _Status(state))
        status.state, status.reason = state, reason
        if fp is not None:
            status.fingerprint = fp
        self.metrics.set_model_state(name, str(version), state.value)


def _load_failure_reason(exc: ServingError) -> str:
    """The ``LOAD_FAILURE_REASONS`` entry of a load refused with ``exc``."""
    if isinstance(exc, GoldenCheckFailed):
        return "golden_check"
    if isinstance(exc, ProviderUnavailable):
        return "provider"
    return "invalid_model"
