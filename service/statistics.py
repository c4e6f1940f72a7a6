"""Triton's statistics extension: cumulative counts and durations per model version, as ``GET /v2/models/.../stats``
and gRPC ``ModelStatistics`` report them.

Fed by the data plane's one bookkeeping path, so every inference path counts (OIP over REST and gRPC, the robots'
policy API, bulk requests): a success or a failure per request, and an execution per batch (the batcher's
``on_batch`` hook; a bulk worker's run is one batch). Plain integers, written on the event loop thread only and read
there by a statistics request, so a snapshot is consistent without a lock. On the hot path a request costs a few
additions: its version's figures are found with its Prometheus series (``RequestSeries.statistics``), and its instant
is the monotonic one the data plane read already (turned into wall-clock time only when asked). Like the Prometheus
series, the figures of a version are kept for the life of the process.

What this server's timings mean in Triton's terms:

- ``success`` / ``fail``: requests and their time inside the server (from decoded to answer ready, or to failure);
- ``queue``: time in the batcher's queue, per successful request;
- ``compute_infer``: the ONNX Runtime run of the batch each successful request joined (per request), or of each batch
  (``batch_stats``). ONNX Runtime binds the inputs and copies the outputs inside that run, so ``compute_input`` and
  ``compute_output`` count the same requests and batches with 0 ns: the time is in ``compute_infer``;
- ``inference_count``: rows executed (a model without a batch dimension: one per request); ``execution_count``:
  batches executed;
- ``last_inference``: the last request, succeeded or failed, in milliseconds since the epoch (0: none yet).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

INFERENCE_STATS = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")
"""The ``inference_stats`` a snapshot reports, by Triton's names."""
BATCH_STATS = ("compute_input", "compute_infer", "compute_output")
"""The durations of each ``batch_stats`` entry, by Triton's names."""


@dataclass(frozen=True)
class Duration:
    """A cumulative count and its total duration in nanoseconds (Triton's ``StatisticDuration``)."""

    count: int = 0
    ns: int = 0


@dataclass(frozen=True)
class BatchStatistics:
    """The executions of one batch size: ``durations`` keyed by ``BATCH_STATS``."""

    batch_size: int
    durations: dict[str, Duration]


@dataclass(frozen=True)
class ModelStatistics:
    """One version's figures (Triton's ``ModelStatistics``): ``inference_stats`` keyed by ``INFERENCE_STATS``,
    ``batch_stats`` by increasing batch size."""

    name: str
    version: str
    last_inference: int
    inference_count: int
    execution_count: int
    inference_stats: dict[str, Duration]
    batch_stats: list[BatchStatistics]


class VersionStatistics:
    """The running figures of one model version."""

    __slots__ = ("batches", "compute_ns", "execution_count", "fail_count", "fail_ns", "inference_count", "last_ns",
                 "queue_ns", "success_count", "success_ns")  # fmt: skip

    def __init__(self) -> None:
        self.success_count = self.success_ns = self.queue_ns = self.compute_ns = 0
        self.fail_count = self.fail_ns = 0
        self.inference_count = self.execution_count = 0
        self.last_ns = 0
        """When the last request ended, on ``time.monotonic_ns`` (0: none yet)."""
        self.batches: dict[int, list[int]] = {}
        """batch size -> [executions, compute ns]"""

    def succeeded(self, end_ns: int, total_ns: int, queue_ns: int, compute_ns: int) -> None:
        """A request answered at ``end_ns`` (``time.monotonic_ns``): its time in the server, in the queue, and of the
        batch it was computed in."""
        self.success_count += 1
        self.success_ns += total_ns
        self.queue_ns += queue_ns
        self.compute_ns += compute_ns
        self.last_ns = end_ns

    def failed(self, end_ns: int, elapsed_ns: int) -> None:
        """A request failed at ``end_ns`` after ``elapsed_ns`` in the server (0 for one refused before admission)."""
        self.fail_count += 1
        self.fail_ns += elapsed_ns
        self.last_ns = end_ns

    @property
    def last_inference_ms(self) -> int:
        """The last request's end in milliseconds since the epoch (0: none yet)."""
        if not self.last_ns:
            return 0
        return (time.time_ns() - (time.monotonic_ns() - self.last_ns)) // 1_000_000

    def executed(self, rows: int, compute_ns: int) -> None:
        """A batch of ``rows`` computed in ``compute_ns``."""
        self.inference_count += rows
        self.execution_count += 1
        cell = self.batches.get(rows)
        if cell is None:
            cell = self.batches[rows] = [0, 0]
        cell[0] += 1
        cell[1] += compute_ns

    def snapshot(self, name: str, version: str) -> ModelStatistics:
        computed = Duration(self.success_count, self.compute_ns)
        inference = {
            "success": Duration(self.success_count, self.success_ns),
            "fail": Duration(self.fail_count, self.fail_ns),
            "queue": Duration(self.success_count, self.queue_ns),
            "compute_input": Duration(self.success_count, 0),
            "compute_infer": computed,
            "compute_output": Duration(self.success_count, 0),
        }
        batches = [
            BatchStatistics(size, {"compute_input": Duration(count, 0), "compute_infer": Duration(count, ns),
                                   "compute_output": Duration(count, 0)})
            for size, (count, ns) in sorted(self.batches.items())
        ]  # fmt: skip
        return ModelStatistics(name, version, self.last_inference_ms, self.inference_count, self.execution_count,
                               inference, batches)  # fmt: skip


class Statistics:
    """Every model version's ``VersionStatistics``, created when first recorded or asked for, kept for the life of the
    process (as the Prometheus series are)."""

    def __init__(self) -> None:
        self._versions: dict[tuple[str, str], VersionStatistics] = {}

    def of(self, model: str, version: str) -> VersionStatistics:
        key = (model, version)
        found = self._versions.get(key)
        if found is None:
            found = self._versions[key] = VersionStatistics()
        return found

    def snapshot(self, model: str, version: str) -> ModelStatistics:
        return self.of(model, version).snapshot(model, version)
