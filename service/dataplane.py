"""The transport-free core: every REST route and gRPC method is a thin conversion around a call here.

All logic that must be identical across transports lives in this module -- model resolution, input validation, the
draining state, timing and metrics -- so REST and gRPC cannot drift apart.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import numpy as np

from odetoode.modelfile import POLICY_OUTPUT, PREFIX, ModelDescription
from service import server_version
from service.batching import Timing
from service.binding import bind_inputs, bind_observation, check_requested_outputs
from service.bulk import BulkPool, BulkReply
from service.classification import answer_outputs
from service.errors import (
    ERROR_TABLE,
    InternalError,
    InvalidArgument,
    ModelNotReady,
    PermissionDenied,
    ServingError,
    Unavailable,
)
from service.inference import Acted, InferRequest, InferResponse, ModelConfig, ModelMetadata
from service.metrics import REFUSAL_REASONS, ServerMetrics
from service.repository import IndexEntry, ModelRepository, ServedVersion
from service.settings import ServerSettings
from service.statistics import ModelStatistics

log = logging.getLogger(__name__)

SERVER_NAME = "odetoode"
PLATFORM = "onnxruntime_onnx"
_ACTION_OUTPUT = (POLICY_OUTPUT,)
EXTENSIONS = (
    "binary_tensor_data",
    "classification",
    "model_repository",
    "model_configuration",
    "schedule_policy",
    "statistics",
)
UNKNOWN_LABEL = "_unknown"
"""The one label value every model name or version the repository does not know collapses to."""


class Answer(Protocol):
    """What every inference path answers, as far as the bookkeeping in ``DataPlane._serve`` is concerned."""

    @property
    def version(self) -> str: ...
    @property
    def timing(self) -> Timing: ...
    @property
    def total_ns(self) -> int: ...


A = TypeVar("A", bound=Answer)


@dataclass(frozen=True)
class BulkAnswer:
    """A bulk worker's encoded answer (``reply.parts``, ready for the wire) and where its time went."""

    reply: BulkReply
    version: str
    timing: Timing
    total_ns: int


class _Admitted:
    """One admitted request's bookkeeping, the same for every inference path: entered, it refuses while draining,
    counts the request in flight and notes its start; left, it counts it out, counts a failure by its error type,
    and turns anything unexpected into an ``InternalError`` (logged, without details for the client).

    A class rather than a generator-based context manager: entering and leaving are two plain method calls, which
    the robots' path can afford (a robot's round trip is a few hundred microseconds)."""

    __slots__ = ("model", "plane", "protocol", "start", "version")

    def __init__(self, plane: DataPlane, protocol: str, model: str, version: str) -> None:
        self.plane, self.protocol, self.model, self.version = plane, protocol, model, version
        self.start = 0

    def __enter__(self) -> _Admitted:
        self.start = self.plane._enter(self.protocol)
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        plane = self.plane
        plane._leave(self.protocol)
        if isinstance(exc, ServingError):
            plane._count_failure(self.protocol, self.model, self.version, exc, self.start)
        elif isinstance(exc, Exception):
            raise plane._internal_error(self.protocol, self.model, self.version, self.start) from exc

    def succeeded(self, version: str, timing: Timing) -> int:
        """Records the answer of ``version`` (the one that answered); returns the request's total time in ns."""
        end = time.monotonic_ns()
        total = end - self.start
        series = self.plane.metrics.series(self.model, version, self.protocol)
        series.success(total, timing.queue_ns, timing.compute_ns)
        series.statistics.succeeded(end, total, timing.queue_ns, timing.compute_ns)
        return total


class DataPlane:
    """Health, metadata, inference and repository operations, independent of any wire format."""

    def __init__(
        self, repository: ModelRepository, metrics: ServerMetrics, settings: ServerSettings, bulk: BulkPool
    ) -> None:
        self.repository = repository
        self.metrics = metrics
        self.settings = settings
        self.bulk = bulk
        self._draining = False
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    # -- health and metadata ---------------------------------------------------------------------------------------

    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        """Ready when not draining and at least one model version is ready (never "ready" with nothing to serve)."""
        return not self._draining and self.repository.ready_count() > 0

    def server_metadata(self) -> dict[str, Any]:
        return {"name": SERVER_NAME, "version": server_version(), "extensions": list(EXTENSIONS)}

    def model_metadata(self, name: str, version: str | None = None) -> ModelMetadata:
        served = self.repository.resolve(name, version)
        versions = [str(sv.version) for sv in self.repository.served_versions(name)]
        return ModelMetadata(name, versions, PLATFORM, served.runtime.inputs, served.runtime.outputs)

    def model_ready(self, name: str, version: str | None = None) -> bool:
        try:
            self.repository.resolve(name, version)
        except ModelNotReady:
            return False
        return True

    def model_names(self) -> list[str]:
        """KServe V1's model list: the models with a ready version, sorted; ``PermissionDenied`` when callers may not
        learn them (``list_models`` off)."""
        if not self.settings.list_models:
            raise PermissionDenied("listing the models is disabled on this server (list_models)")
        return self.repository.ready_names()

    def model_config(self, name: str, version: str | None = None) -> ModelConfig:
        """Triton's model-configuration extension, plus what the model file says about itself."""
        sv = self.repository.resolve(name, version)
        return ModelConfig(
            name=name,
            version=str(sv.version),
            platform=PLATFORM,
            backend="onnxruntime",
            max_batch_size=sv.runtime.max_batch_size,
            inputs=list(sv.runtime.inputs),
            outputs=list(sv.runtime.outputs),
            max_queue_delay_us=sv.config.max_queue_delay_us,
            max_queue_size=sv.config.max_queue_size,
            execution_providers=list(sv.runtime.providers),
            execution="inline" if sv.batcher.inline else "thread pool",
            description=_described(sv.runtime.description),
            labels={name: list(labels) for name, labels in sv.config.labels.items()},
        )

    def statistics(self, name: str | None = None, version: str | None = None) -> list[ModelStatistics]:
        """Triton's statistics extension: the figures of ``version`` of ``name``, of every ready version of ``name``,
        or (no name) of every ready version of every model. A model or version is refused as ``resolve`` refuses
        it (an unknown model: ``ModelNotFound``)."""
        if not name:
            if version:
                raise InvalidArgument("version: give a model name with it, or neither for every model")
            served = [sv for n in self.repository.ready_names() for sv in self.repository.served_versions(n)]
        elif version:
            served = [self.repository.resolve(name, version)]
        else:
            self.repository.resolve(name)  # refuses an unknown model, or one with no ready version
            served = self.repository.served_versions(name)
        return [self.metrics.statistics.snapshot(sv.name, str(sv.version)) for sv in served]

    # -- inference -------------------------------------------------------------------------------------------------

    def resolve_for(self, protocol: str, name: str, version: str | None = None) -> ServedVersion:
        """The version that answers a request for ``name`` (``version``: a number, or the highest ready one); a
        refusal (no such model, not ready) is counted like any failed request of ``protocol``."""
        try:
            self._refuse_if_draining()
            return self.repository.resolve(name, version)
        except ServingError as exc:
            self._count_failure(protocol, name, version or "", exc)
            raise

    async def infer(self, request: InferRequest, served: ServedVersion | None = None) -> InferResponse:
        """Validates inputs, computes through the batcher, and records metrics; ``served`` if the transport resolved
        the model already (to check the request's tensors against it while decoding them)."""

        async def compute(start: int) -> InferResponse:
            target = served
            if target is None or target.batcher.closed:  # not resolved yet, or replaced while its body was read
                target = self.repository.resolve(request.model, request.version)
            return await self._compute(target, request, start)

        return await self._serve(request.protocol, request.model, request.version or "", compute)

    def admit_bulk(self) -> Callable[[], None]:
        """A place for one large request, taken before its body is read (``QueueFull`` at once when none is left);
        returns the function that gives it back once the answer is sent."""
        self._refuse_if_draining()
        return self.bulk.admit()

    async def infer_bulk(
        self,
        protocol: str,
        served: ServedVersion,
        job: dict[str, Any],
        payload: list[bytes | bytearray | memoryview],
        deadline_ns: int | None,
    ) -> BulkAnswer:
        """A large request, decoded, computed and encoded by a bulk worker process (``service.bulk``), with the same
        refusal while draining, in-flight accounting and metrics as ``infer``. ``job`` names the codec (``kind``)
        and its wire details; the answer is encoded already, ready for the wire."""
        version = str(served.version)

        async def compute(start: int) -> BulkAnswer:
            wire = {"model": served.name, "version": version, "model_file": str(served.runtime.path),
                    "file_stamp": list(served.fingerprint[:2]), "config": served.config.to_wire(),
                    "max_elements": served.signature.max_elements}  # fmt: skip
            reply = await self.bulk.run({**wire, **job}, payload, deadline_ns)
            h = reply.header
            timing = Timing(int(h["queue_ns"]), int(h["compute_ns"]), int(h["rows"]))
            self.metrics.batch_observer(served.name, version)(timing.batch_size, timing.compute_ns)  # one run: a batch
            return BulkAnswer(reply, version, timing, time.monotonic_ns() - start)

        return await self._serve(protocol, served.name, version, compute)

    async def _serve(self, protocol: str, model: str, version: str, compute: Callable[[int], Awaitable[A]]) -> A:
        """An inference through the one bookkeeping path (``_Admitted``); ``compute`` gets the request's start."""
        with _Admitted(self, protocol, model, version) as admitted:
            response = await compute(admitted.start)
        admitted.succeeded(response.version, response.timing)
        return response

    def _refuse_if_draining(self) -> None:
        if self._draining:
            raise Unavailable("the server is shutting down and accepts no new requests")

    def _enter(self, protocol: str) -> int:
        """Admits one request (or refuses it while draining); returns its start on ``time.monotonic_ns``."""
        self._refuse_if_draining()
        self._inflight += 1
        self._idle.clear()
        self.metrics.inflight_for(protocol).inc()
        return time.monotonic_ns()

    def _leave(self, protocol: str) -> None:
        self.metrics.inflight_for(protocol).dec()
        self._inflight -= 1
        if self._inflight == 0:
            self._idle.set()

    def _count_failure(self, protocol: str, model: str, version: str, exc: ServingError, start: int = 0) -> None:
        """Counts a failed request (``start``: when it was admitted; 0 if refused before) in the metrics, and in the
        statistics of the served version it reached (none for a model or version that is not served)."""
        self.metrics.failures.labels(*self._labels(model, version), protocol, type(exc).__name__).inc()
        exc.counted = True
        served = [str(sv.version) for sv in self.repository.served_versions(model)]
        reached = version or (served[-1] if served else "")  # no version named: the highest ready one answers
        if reached in served:
            end = time.monotonic_ns()
            self.metrics.statistics.of(model, reached).failed(end, end - start if start else 0)

    def count_refusal(self, protocol: str, error: BaseException) -> None:
        """Counts an error a transport answers that this data plane did not count as a failed request: one refused
        before it reached a model (no accepted token, too large, malformed, refused from its headers, no bulk place,
        draining)."""
        if isinstance(error, ServingError) and error.counted:
            return
        kind = next((c for c in type(error).__mro__ if c in ERROR_TABLE), None)
        reason = kind.__name__ if kind is not None else type(error).__name__
        self.metrics.refusals.labels(protocol, reason if reason in REFUSAL_REASONS else InternalError.__name__).inc()

    def _labels(self, model: str, version: str) -> tuple[str, str]:
        """(model, version) label values for a request: names and versions the repository knows, ``""`` for no
        version, and ``_unknown`` for anything else -- a client-chosen string never creates a series."""
        if not self.repository.known(model):
            return UNKNOWN_LABEL, UNKNOWN_LABEL if version else ""
        if version and not self.repository.known_version(model, version):
            return model, UNKNOWN_LABEL
        return model, version

    def _internal_error(self, protocol: str, model: str, version: str, start: int) -> InternalError:
        """Logs the exception being handled and counts it; the client gets a message without its details."""
        log.exception("inference on %s failed", model)
        error = InternalError("inference failed inside the server; the details are in its log")
        self._count_failure(protocol, model, version, error, start)
        return error

    async def _compute(self, served: ServedVersion, request: InferRequest, start: int) -> InferResponse:
        runtime = served.runtime
        feeds = bind_inputs(request.inputs, served.signature, allow_non_finite=served.config.allow_non_finite)
        names = check_requested_outputs(request.outputs, runtime.outputs, batched=runtime.batched, feeds=feeds)
        results, timing = await served.batcher.submit(feeds, names, request.deadline_ns)
        outputs = answer_outputs(request.outputs, names, results, batched=runtime.batched, labels=served.config.labels)
        return InferResponse(
            model=request.model,
            version=str(served.version),
            outputs=outputs,
            timing=timing,
            total_ns=time.monotonic_ns() - start,
            id=request.id,
        )

    # -- policies (the robot API) ----------------------------------------------------------------------------------

    def policy(self, name: str, version: str | None = None) -> ServedVersion:
        """The served version of a policy; any other model is refused with a message that says what it is."""
        self._refuse_if_draining()
        served = self.repository.resolve(name, version)
        description = served.runtime.description
        if description is None:
            raise InvalidArgument(
                f"policy: {name!r} is an ONNX model without a policy description (serve it over the inference "
                "protocol, or describe it with python -m trainer describe-policy: docs/external-policies.md)"
            )
        if description.kind != "policy":
            raise InvalidArgument(f"policy: {name!r} is a {description.kind}, not a policy")
        return served

    async def act_on(self, served: ServedVersion, observation: np.ndarray, deadline_ns: int | None = None) -> Acted:
        """One observation (flat float32) -> one action of ``served`` (resolved by ``policy``; a stream resolves once),
        through the same bookkeeping, batcher and metrics as OIP and the checks ``bind_inputs`` makes for one input.
        (The OIP path's request and response objects are skipped: a robot's round trip is a few hundred
        microseconds, and every layer of calls costs a few of them once gRPC has cooled the caches.)"""
        version = str(served.version)
        with _Admitted(self, "policy", served.name, version) as admitted:
            row = bind_observation(observation, served.signature, served.name,
                                   allow_non_finite=served.config.allow_non_finite)  # fmt: skip
            results, timing = await served.batcher.submit({served.runtime.inputs[0].name: row}, _ACTION_OUTPUT,
                                                          deadline_ns)  # fmt: skip
        return Acted(version, results[0], timing, admitted.succeeded(version, timing))

    # -- repository ------------------------------------------------------------------------------------------------

    def repository_index(self, ready_only: bool = False) -> list[IndexEntry]:
        """The repository extension's index: like ``load`` and ``unload``, only with ``repository_api`` on (it tells
        every model name and why a version failed)."""
        self._require_repository_api("index")
        return self.repository.index(ready_only)

    async def load(self, name: str, parameters: Mapping[str, Any] | None = None) -> None:
        """Repository load. Triton's ``config`` and ``file:`` parameters (a model sent by the client) are refused:
        this server loads only what is in its repository."""
        self._require_repository_api("load")
        _refuse_parameters(parameters, allowed=())
        await self.repository.load(name)

    async def unload(self, name: str, parameters: Mapping[str, Any] | None = None) -> None:
        self._require_repository_api("unload")
        _refuse_parameters(parameters, allowed=("unload_dependents",))  # no ensembles here: nothing depends
        await self.repository.unload(name)

    def _require_repository_api(self, operation: str) -> None:
        if not self.settings.repository_api:
            raise PermissionDenied(
                f"repository {operation} is disabled; start the server with --repository-api true to allow it"
            )

    # -- shutdown --------------------------------------------------------------------------------------------------

    def start_drain(self) -> None:
        """Readiness turns false and new requests are refused; those already accepted run to completion."""
        self._draining = True

    @property
    def draining(self) -> bool:
        return self._draining

    async def wait_idle(self, timeout: float) -> bool:
        """Waits until no request is in flight (or ``timeout`` s); returns whether it got there."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True


def _described(description: ModelDescription | None) -> dict[str, str]:
    """A model file's own description as its metadata strings without the ``odetoode.`` prefix (none: empty)."""
    if description is None:
        return {}
    return {k.removeprefix(PREFIX): v for k, v in description.to_metadata_props().items()}


def _refuse_parameters(parameters: Mapping[str, Any] | None, allowed: tuple[str, ...]) -> None:
    for key in parameters or {}:
        if key not in allowed:
            raise InvalidArgument(f"parameters.{key}: not supported; only models already in the repository load")
