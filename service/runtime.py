"""One ONNX Runtime session per model version: provider choice, thread sizing, IO binding, warm-up, self-check.

Loading is where a model proves itself: the file must be ONNX, the requested execution providers must really be
active (ONNX Runtime silently falls back to CPU when CUDA cannot start; we check the session's providers and fail
loudly unless the model allows the fallback), and a file that describes itself with odetoode metadata must keep its
word: its graph must have the inputs and outputs its kind promises, and the golden input/output pairs recorded at
export must be reproduced before the version takes traffic.

Any other ONNX model is served as Triton's ONNX backend serves it: inputs, outputs, datatypes and shapes come from
the graph. It is *batched* -- requests are stacked along the first dimension -- when every input and output has a
variable first dimension and its ``config.yaml`` does not say ``max_batch_size: 0``; otherwise each request runs alone
with the shapes it brings.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from odetoode.modelfile import ModelDescription, ModelFormatError, description_of
from service.classification import check_labels
from service.errors import GoldenCheckFailed, InvalidArgument, ModelLoadError, ProviderUnavailable, without_paths
from service.model_config import CONFIG_FILE, Provider, ResolvedConfig
from service.tensors import DATATYPES, TensorSpec, datatype_of_onnx

log = logging.getLogger(__name__)

ORT_PROVIDERS: dict[str, str] = {
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
GPU_PROVIDERS = ("cuda", "tensorrt")
PROVIDER_OPTIONS: dict[str, dict[str, str]] = {
    # Full float32 on the GPU. The CUDA provider runs float32 MatMul in TF32 (10 mantissa bits) by default on
    # Ampere and later GPUs; a policy chains tens of unrolled flow steps, so TF32 could move its actions past the
    # golden self-check's tolerance (checked against float32 CPU results) and the server would refuse the model.
    # These models are far too small for TF32's speed to matter.
    "CUDAExecutionProvider": {"use_tf32": "0"},
}
MAX_MODEL_BYTES = 512 * 1024 * 1024


def available_cpus() -> int:
    """CPUs this process may actually use: its affinity mask, capped by a cgroup v2 CPU quota (containers).

    ONNX Runtime sizes its default pools from the host's cores, which oversubscribes a container limited to a few.
    """
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, int(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cpus)


def choose_providers(requested: Sequence[Provider], allow_cpu_fallback: bool, available: Sequence[str]) -> list[str]:
    """The ONNX Runtime provider list for ``requested`` (in order), given the providers this build has.

    A requested GPU provider that this build lacks fails the load, unless ``allow_cpu_fallback`` -- then it is
    dropped and CPU is appended (with a warning).
    """
    chosen: list[str] = []
    missing = []
    for name in requested:
        ort_name = ORT_PROVIDERS[name]
        if ort_name in available:
            chosen.append(ort_name)
        else:
            missing.append(name)
    if missing and any(m in GPU_PROVIDERS for m in missing):
        if not allow_cpu_fallback:
            raise ProviderUnavailable(
                f"execution provider(s) {missing} requested but this ONNX Runtime build has only {list(available)}; "
                "install odetoode[gpu] on a GPU host, or set allow_cpu_fallback: true to serve on CPU"
            )
        log.warning("providers %s unavailable (have %s); falling back to CPU", missing, list(available))
    if ORT_PROVIDERS["cpu"] not in chosen:  # ONNX Runtime adds it anyway, for ops a GPU provider lacks
        chosen.append(ORT_PROVIDERS["cpu"])
    return chosen


def session_options(intra_op_threads: int = 1, *, memory_arena: bool = True) -> ort.SessionOptions:
    """How every session of the server is configured on CPU; benchmarks build their floors with the same.

    ``memory_arena``: ONNX Runtime keeps the memory of its largest run for the next (fast for the event loop's
    steady small batches); off, it gives it back after each run (for the bulk workers, whose batches are large and
    rare, so that one 65,536-row request does not leave its tens of MiB behind)."""
    options = ort.SessionOptions()
    options.enable_cpu_mem_arena = memory_arena
    options.intra_op_num_threads = min(intra_op_threads, available_cpus())
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return options


@dataclass(frozen=True)
class SelfCheck:
    """What the golden self-check found: the worst absolute error and whether it is within the file's tolerance."""

    pairs: int
    max_abs_error: float
    passed: bool


class ModelRuntime:
    """A loaded, checked ONNX Runtime session for one model version. ``run`` is thread-safe."""

    def __init__(self, path: Path, config: ResolvedConfig, *, memory_arena: bool = True) -> None:
        self.path = path
        self.config = config
        size = path.stat().st_size
        if size > MAX_MODEL_BYTES:
            raise ModelLoadError(f"{path.name}: {size} bytes is larger than the {MAX_MODEL_BYTES}-byte limit")
        options = session_options(config.intra_op_threads, memory_arena=memory_arena)
        # Only the graph in the file: no custom-op libraries are ever registered from a repository.
        providers = choose_providers(config.providers, config.allow_cpu_fallback, ort.get_available_providers())
        try:
            extra = [PROVIDER_OPTIONS.get(p, {}) for p in providers]
            self.session = ort.InferenceSession(str(path), options, providers=providers, provider_options=extra)
        except Exception as exc:  # ORT raises several unrelated exception types for a bad file
            raise ModelLoadError(f"{path.name}: ONNX Runtime cannot load it ({_first_line(exc)})") from None
        active = self.session.get_providers()
        dropped = [p for p in providers if p != ORT_PROVIDERS["cpu"] and p not in active]
        if dropped and not config.allow_cpu_fallback:
            raise ProviderUnavailable(
                f"{path.name}: {dropped} could not start (ONNX Runtime fell back to {active}); "
                "set allow_cpu_fallback: true to accept CPU"
            )
        self.providers: list[str] = list(active)
        self.on_gpu = active[0] in (ORT_PROVIDERS["cuda"], ORT_PROVIDERS["tensorrt"])
        try:
            self.description: ModelDescription | None = description_of(self.session.get_modelmeta().custom_metadata_map)
        except ModelFormatError as exc:
            raise ModelLoadError(f"{path.name}: {exc}") from None
        try:
            self.inputs = [_spec(i) for i in self.session.get_inputs()]
            self.outputs = [_spec(o) for o in self.session.get_outputs()]
        except InvalidArgument as exc:
            raise ModelLoadError(f"{path.name}: {exc}") from None
        if self.description is not None:
            _check_contract(self.description, self.inputs, self.outputs, path.name)
        self.batched = config.max_batch_size > 0 and all(
            spec.shape and spec.shape[0] == -1 for spec in (*self.inputs, *self.outputs)
        )
        """Requests are stacked along the first dimension (a batch of rows) and may share one run."""
        self.max_batch_size = config.max_batch_size if self.batched else 0
        """Triton's meaning: the most rows per run of a batched model, 0 for a model without a batch dimension."""
        self.compute_us_batch1 = float("nan")
        self.compute_us_largest = float("nan")

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self.outputs]

    def run(self, feeds: dict[str, np.ndarray], output_names: Sequence[str] | None = None) -> list[np.ndarray]:
        """Computes ``output_names`` (default: all) for ``feeds``; on CUDA through IO binding."""
        names = list(output_names or self.output_names)
        if not self.on_gpu:
            return self.session.run(names, feeds)
        binding = self.session.io_binding()
        for name, value in feeds.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(value))
        for name in names:
            binding.bind_output(name, "cpu")
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()

    def self_check(self) -> SelfCheck | None:
        """Runs the golden inputs recorded at export and compares with the recorded outputs (first output); ``None``
        for a model that records none (no odetoode description)."""
        if self.description is None:
            return None
        golden = self.description.golden
        spec = self.inputs[0]
        x = np.asarray(golden.inputs, dtype=np.float32).reshape(len(golden.inputs), *_concrete(spec.shape[1:]))
        expected = np.asarray(golden.outputs, dtype=np.float64)
        actual = self.run({spec.name: x}, [self.outputs[0].name])[0].reshape(expected.shape).astype(np.float64)
        error = float(np.max(np.abs(actual - expected)))
        passed = bool(np.allclose(actual, expected, rtol=golden.rtol, atol=golden.atol))
        return SelfCheck(len(golden.inputs), error, passed)

    def warm_up(self) -> None:
        """Runs one row and the largest batch once (allocations, kernel choice), then times both.

        The feeds are zeros (empty strings for BYTES) with every variable dimension other than the batch set to 1. A
        model this project did not describe may refuse such feeds (a variable dimension it needs larger, a value it
        cannot take): it is then served without timings, which keeps it off the event loop (``rows_within`` is 0).
        """
        largest = max(1, self.max_batch_size)
        feeds = {batch: self._zeros(batch) for batch in (1, largest)}
        try:
            for feed in feeds.values():
                self.run(feed)
        except Exception as exc:  # ONNX Runtime raises several unrelated types for a run it refuses
            if self.description is not None:
                raise ModelLoadError(f"{self.path.name}: warm-up run failed ({_first_line(exc)})") from None
            log.info("%s: no warm-up (%s); served off the event loop", self.path.name, _first_line(exc))
            return
        self.compute_us_batch1 = _median_us(self.run, feeds[1], 20)
        self.compute_us_largest = _median_us(self.run, feeds[largest], 5) if largest > 1 else self.compute_us_batch1

    def _zeros(self, batch: int) -> dict[str, np.ndarray]:
        feeds = {}
        for spec in self.inputs:
            dims = [d if d >= 0 else 1 for d in spec.shape]
            if self.batched:
                dims[0] = batch
            text = spec.datatype == "BYTES"
            feeds[spec.name] = np.full(dims, "", dtype=object) if text else np.zeros(dims, DATATYPES[spec.datatype])
        return feeds

    def rows_within(self, budget_us: float) -> int:
        """The most rows one run computes within ``budget_us`` (0 if not even one, or never timed), from the warm-up
        timings: a straight line through batch 1 and the largest batch, which is how these graphs scale."""
        if not self.compute_us_batch1 < budget_us:
            return 0
        largest = max(1, self.max_batch_size)
        if largest == 1:
            return 1
        per_row = max(0.0, (self.compute_us_largest - self.compute_us_batch1) / (largest - 1))
        if per_row == 0:
            return largest
        return 1 + int((budget_us - self.compute_us_batch1) / per_row)

    def check(self) -> None:
        """Warm-up and, for a described model, the golden self-check; raises ``ModelLoadError`` if the outputs differ
        from the recorded ones."""
        self.warm_up()
        result = self.self_check()
        if result is not None and not result.passed:
            raise GoldenCheckFailed(
                f"{self.path.name}: golden self-check failed (max abs error {result.max_abs_error:.3g} over "
                f"{result.pairs} recorded pairs): the file does not compute what was exported"
            )


def _spec(node: Any) -> TensorSpec:
    return TensorSpec(node.name, datatype_of_onnx(node.type), _dims(node.shape))


def _check_contract(description: ModelDescription, inputs: list[TensorSpec], outputs: list[TensorSpec],
                    file: str) -> None:  # fmt: skip
    """A described model's graph has what its kind promises: one input of the kind's name, its outputs in order, a
    batch dimension."""
    expected = (description.input_name,)
    if [i.name for i in inputs] != list(expected):
        raise ModelLoadError(f"{file}: a {description.kind} must have the single input {expected[0]!r}")
    if [o.name for o in outputs] != list(description.output_names):
        raise ModelLoadError(f"{file}: a {description.kind} must have outputs {list(description.output_names)}")
    if any(not spec.shape or spec.shape[0] != -1 for spec in (*inputs, *outputs)):
        raise ModelLoadError(f"{file}: a {description.kind} must have a variable batch dimension first")


def _median_us(run: Any, feeds: dict[str, np.ndarray], repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        run(feeds)
        samples.append(time.perf_counter() - start)
    return float(np.median(samples) * 1e6)


def _dims(shape: Sequence[Any]) -> tuple[int, ...]:
    return tuple(d if isinstance(d, int) and d >= 0 else -1 for d in shape)


def _concrete(shape: Sequence[int]) -> tuple[int, ...]:
    if any(d < 0 for d in shape):
        raise ModelLoadError(f"only the batch dimension may be variable, got {list(shape)}")
    return tuple(shape)


def _first_line(exc: BaseException) -> str:
    text = without_paths(str(exc)).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


def fell_back(runtime: ModelRuntime, config: ResolvedConfig) -> bool:
    """Whether a version that requested a GPU provider runs on CPU (``allow_cpu_fallback``)."""
    return runtime.providers[0] == ORT_PROVIDERS["cpu"] and any(p != "cpu" for p in config.providers)


def open_checked(path: Path, config: ResolvedConfig) -> ModelRuntime:
    """A version's runtime, opened and self-checked (labels against its outputs, golden pairs): what a loader
    thread does before the version may take traffic."""
    runtime = ModelRuntime(path, config)
    # labels need the graph's outputs: checked once it is open, before any warm-up
    check_labels(config.labels, runtime.outputs, runtime.batched, f"{path.parent.parent.name}/{CONFIG_FILE}")
    runtime.check()
    return runtime
