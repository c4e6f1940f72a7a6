"""What ``benchmarks/gpu_check.py`` measures, each with the execution provider as a parameter: the CPU rows are made
(and tested) on any machine, the CUDA rows by the same code on a GPU host.

* ``open_runtime``: a model opened as the server opens it (``service.runtime.ModelRuntime``, its ``config.yaml`` over
  the server defaults), on one provider and with no CPU fallback; ``golden_on``: the server's load-time check
  (``ModelRuntime.check``: warm-up, golden self-check) run on that provider;
* ``node_placement``, ``misplaced``: where each node of a graph ran, read from ONNX Runtime's profiling output, and
  the nodes that ran off the provider although it has a kernel for their operator;
* ``measure``: wall time per run and rows per second at each batch size for several modes in alternating rounds
  (timed by ``odetoode.testing.bench``), through the server's own run path or with inputs and outputs resident on
  the device (IO binding), each mode's answers checked against the first's; ``crossover``:
  the batch size from which one row computes more rows per second than another;
* ``serve_check``: ``python -m service`` on a repository with ``--providers``: the provider each model is served on
  and whether its answers agree with a CPU session of the same file; ``run_benchmark``: one of ``benchmarks/*.py``
  as a child process (its own process group), its output kept; ``add_provider_option`` and ``matches_floor``: the
  latency benchmarks' server under test on another provider than their CPU floor.

Every figure is a wall time measured in this process; nothing here knows what a GPU should achieve.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, get_args

import numpy as np
import onnxruntime as ort

from odetoode.layout import MODEL_FILE, versions
from odetoode.modelfile import Golden
from odetoode.testing.bench import Row, alternate, sample, summarize
from service.model_config import Provider, load_serving_config, resolve
from service.runtime import ORT_PROVIDERS, ModelRuntime, SelfCheck, session_options
from service.settings import ServerSettings

KERNEL_EVENT = "_kernel_time"
"""ONNX Runtime's profiler names the event of one node's computation ``<node name>_kernel_time``."""


def bundled_models(repository: Path) -> dict[str, Path]:
    """Every model of ``repository`` at its newest version (what the server's default version policy serves):
    name -> ``<repository>/<name>/<version>/model.onnx``, by name."""
    found = {}
    for model_dir in sorted(p for p in repository.iterdir() if p.is_dir()):
        files = [model_dir / str(v) / MODEL_FILE for v in versions(model_dir)]
        files = [f for f in files if f.is_file()]
        if files:
            found[model_dir.name] = files[-1]
    return found


def open_runtime(model_file: Path, provider: Provider, *, threads: int = 1,
                 max_batch_size: int | None = None) -> ModelRuntime:  # fmt: skip
    """``model_file`` opened as the server opens it, on ``provider`` alone: its ``config.yaml`` over the server
    defaults, then the provider, ``threads`` intra-op threads and no CPU fallback, whatever the file asks for (a
    provider that cannot start raises ``ProviderUnavailable`` instead of running on CPU). Not warmed up."""
    model_dir = model_file.parent.parent
    config = resolve(load_serving_config(model_dir), ServerSettings(repository=model_dir.parent))
    changes: dict[str, Any] = {"providers": (provider,), "allow_cpu_fallback": False, "intra_op_threads": threads}
    if max_batch_size is not None:
        changes["max_batch_size"] = max_batch_size
    return ModelRuntime(model_file, dataclasses.replace(config, **changes))


def golden_on(runtime: ModelRuntime) -> SelfCheck | None:
    """The server's load-time check on ``runtime``'s provider -- warm-up, then the golden pairs recorded at export,
    raising ``GoldenCheckFailed`` as a load would -- and what it found (``None``: the file records no pairs)."""
    runtime.check()
    return runtime.self_check()


def random_feeds(runtime: ModelRuntime, batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """``batch`` rows for every input, uniform in [0, 1): an image's pixel range, and observations the policies'
    normalization maps to ordinary values. Only float32 inputs with fixed dimensions after the batch."""
    feeds = {}
    for spec in runtime.inputs:
        if spec.datatype != "FP32" or any(d < 0 for d in spec.shape[1:]):
            raise ValueError(f"{spec.name}: only FP32 inputs with fixed dimensions after the batch, got {spec}")
        feeds[spec.name] = rng.random((batch, *spec.shape[1:]), dtype=np.float32)
    return feeds


# -- where the nodes ran -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlacedNode:
    """One node of the graph as ONNX Runtime ran it (after its graph optimizations): name, operator, provider."""

    name: str
    op: str
    provider: str


def placement_of(events: Sequence[dict[str, Any]]) -> list[PlacedNode]:
    """The nodes of a profile (the JSON list of trace events ``end_profiling`` writes), each once, in order: every
    ``Node`` event named ``<node>_kernel_time`` carries the node's operator and provider in ``args.op_name`` and
    ``args.provider``."""
    nodes: dict[str, PlacedNode] = {}
    for event in events:
        name = event.get("name", "")
        if event.get("cat") == "Node" and name.endswith(KERNEL_EVENT):
            node = name.removesuffix(KERNEL_EVENT)
            nodes.setdefault(node, PlacedNode(node, event["args"]["op_name"], event["args"]["provider"]))
    return list(nodes.values())


def node_placement(runtime: ModelRuntime, profile_dir: Path, batches: Sequence[int] = (1, 64)) -> list[PlacedNode]:
    """Where each node of ``runtime``'s graph runs: a second session of the same file, with the same options and
    the providers ``runtime`` got (placement is decided when a session is made), profiled over one run per batch
    size. The profile stays in ``profile_dir``."""
    options = session_options(runtime.config.intra_op_threads)
    options.enable_profiling = True
    options.profile_file_prefix = str(profile_dir / runtime.path.parent.parent.name)
    session = ort.InferenceSession(str(runtime.path), options, providers=runtime.providers)
    rng = np.random.default_rng(0)
    for batch in batches:
        session.run(None, random_feeds(runtime, batch, rng))
    return placement_of(json.loads(Path(session.end_profiling()).read_text()))


def provider_kernels(provider: str) -> frozenset[str]:
    """The operators this ONNX Runtime build has a kernel for on ``provider`` (e.g. ``CUDAExecutionProvider``)."""
    from onnxruntime.capi import _pybind_state

    return frozenset(k.op_name for k in _pybind_state.get_all_opkernel_def() if k.provider == provider)


def misplaced(nodes: Sequence[PlacedNode], provider: str, kernels: frozenset[str]) -> list[PlacedNode]:
    """The nodes that ran off ``provider`` although it has a kernel for their operator (``kernels``): work ONNX
    Runtime left on the CPU that the device could have done (an operator without a kernel there has no choice)."""
    return [node for node in nodes if node.provider != provider and node.op in kernels]


# -- compute time and throughput -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mode:
    """One row of the compute table: a provider, its intra-op threads, and where inputs and outputs live."""

    provider: Provider
    threads: int = 1
    resident: bool = False
    """Inputs copied to the provider's device once and outputs left there (IO binding): the device's own cost.
    Off: ``ModelRuntime.run``, what the server pays per run (on a GPU, IO binding with host buffers in and out)."""

    @property
    def label(self) -> str:
        threads = f" x{self.threads} threads" if self.threads > 1 else ""
        return f"{self.provider}{threads}{' on device' if self.resident else ''}"


@dataclass(frozen=True)
class Cell:
    """One batch size of one mode: the median and 99th percentile wall time of a run, over ``runs`` runs."""

    batch: int
    runs: int
    p50_us: float
    p99_us: float
    agrees: bool = True
    """Whether this mode's answers at this batch size agree with the first mode's (``agree``)."""

    @property
    def rows_per_s(self) -> float:
        return self.batch * 1e6 / self.p50_us


def resident_call(runtime: ModelRuntime, feeds: dict[str, np.ndarray]) -> tuple[Callable[[], None], Any]:
    """A run of ``runtime`` on ``feeds`` copied once to its provider's device, outputs bound there: ``(call, the IO
    binding)``; ``binding.copy_outputs_to_cpu()`` reads the last run's outputs."""
    device = "cpu" if runtime.providers[0] == ORT_PROVIDERS["cpu"] else "cuda"  # TensorRT works in CUDA memory
    binding = runtime.session.io_binding()
    # on the CPU an OrtValue borrows the array's memory: the call holds both for as long as it may run
    values = {name: (array, ort.OrtValue.ortvalue_from_numpy(array, device, 0)) for name, array in feeds.items()}
    for name, (_, value) in values.items():
        binding.bind_ortvalue_input(name, value)
    for name in runtime.output_names:
        binding.bind_output(name, device, 0)
    session = runtime.session

    def call(_inputs: object = values) -> None:
        session.run_with_iobinding(binding)

    return call, binding


def time_cell(call: Callable[[], object], batch: int, seconds: float, max_runs: int) -> Cell:
    """Times ``call`` about ``seconds`` long (5 to ``max_runs`` runs, sized from a short probe that also warms up
    this batch size: allocations, kernel choice)."""
    probe = sample(call, 3, warmup=2)
    runs = int(np.clip(seconds * 1e6 / max(float(np.median(probe)), 1e-3), 5, max_runs))
    timing = summarize(f"batch {batch}", sample(call, runs, warmup=0))
    return Cell(batch, runs, timing.p50_us, timing.p99_us)


def mode_call(runtime: ModelRuntime, mode: Mode, feeds: dict[str, np.ndarray]) -> tuple[Callable[[], object], Any]:
    """A run of ``runtime`` on ``feeds`` the way ``mode`` runs it, and the outputs of one such run (on the host)."""
    if not mode.resident:
        return partial(runtime.run, feeds), runtime.run(feeds)
    call, binding = resident_call(runtime, feeds)
    call()
    return call, binding.copy_outputs_to_cpu()


def measure(model_file: Path, modes: Sequence[Mode], batches: Sequence[int], *, seconds: float = 0.15,
            rounds: int = 3, max_runs: int = 5000, seed: int = 0) -> dict[str, list[Cell]]:  # fmt: skip
    """``model_file`` opened once per mode (its provider and threads) and timed at each of ``batches``, every mode on
    the same random rows, the modes in alternating rounds (``odetoode.testing.bench.alternate``) so that drift on
    the machine hits them alike. The runs per mode at a batch size are sized from a short probe (which also warms
    the size up: allocations, kernel choice) to take the slowest mode about ``seconds``, within ``rounds`` and
    ``max_runs``. Each mode's answers are compared with the first mode's (``Cell.agrees``). Cells by mode label."""
    runtimes = [open_runtime(model_file, mode.provider, threads=mode.threads) for mode in modes]
    rng = np.random.default_rng(seed)
    cells: dict[str, list[Cell]] = {mode.label: [] for mode in modes}
    for batch in batches:
        feeds = random_feeds(runtimes[0], batch, rng)
        made = [mode_call(runtime, mode, feeds) for runtime, mode in zip(runtimes, modes, strict=True)]
        calls, outputs = [call for call, _ in made], [answer for _, answer in made]
        slowest = max(float(np.median(sample(call, 3, warmup=2))) for call in calls)
        runs = int(np.clip(seconds * 1e6 / max(slowest, 1e-3), rounds, max_runs))
        rows = [Row(mode.label, call) for mode, call in zip(modes, calls, strict=True)]
        measured = alternate([rows], requests=runs, rounds=rounds, warmup=0, rewarm=1)
        for mode, answer in zip(modes, outputs, strict=True):
            timing = measured.timing(mode.label)
            timed = sum(len(chunk) for chunk in measured.chunks[mode.label])
            agrees = agree(runtimes[0], answer, outputs[0])
            cells[mode.label].append(Cell(batch, timed, timing.p50_us, timing.p99_us, agrees))
    return cells


def tolerance(runtime: ModelRuntime) -> tuple[float, float]:
    """(rtol, atol) within which two runs of the file's float outputs agree: its golden tolerance, or the exporter's
    defaults for a file without one or whose golden output is exact (a discrete policy's action index)."""
    golden = runtime.description.golden if runtime.description is not None else None
    if golden is None or not (golden.rtol or golden.atol):
        golden = Golden((), ())  # the defaults
    return golden.rtol, golden.atol


def agree(runtime: ModelRuntime, outputs: Sequence[Any], expected: Sequence[np.ndarray]) -> bool:
    """Whether ``outputs`` (arrays or nested lists, e.g. from JSON) are ``expected`` (``runtime``'s outputs in order):
    integer outputs exactly, float ones within ``tolerance``; each read as its expected dtype and shape first."""
    rtol, atol = tolerance(runtime)
    for got, want in zip(outputs, expected, strict=True):
        got = np.asarray(got, dtype=want.dtype).reshape(want.shape)
        if np.issubdtype(want.dtype, np.floating):
            if not np.allclose(got, want, rtol=rtol, atol=atol):
                return False
        elif not np.array_equal(got, want):
            return False
    return True


def powers_of_two(largest: int) -> list[int]:
    """1, 2, 4, ... up to ``largest`` (a power of two)."""
    if largest < 1 or largest & (largest - 1):
        raise ValueError(f"largest must be a power of two, got {largest}")
    return [1 << k for k in range(largest.bit_length())]


def crossover(batches: Sequence[int], base: Sequence[float], rival: Sequence[float]) -> int | None:
    """The smallest of ``batches`` (ascending) from which ``rival`` computes more rows per second than ``base`` at
    that size and every larger one measured; ``None`` when it does not win at the largest. ``base`` and ``rival``
    are rows per second at each batch size."""
    if not len(batches) == len(base) == len(rival) or not batches:
        raise ValueError("one figure per batch size for each row, at least one batch size")
    first = len(batches)
    while first > 0 and rival[first - 1] > base[first - 1]:
        first -= 1
    return batches[first] if first < len(batches) else None


# -- the real server and the project's benchmarks ------------------------------------------------------------------


def add_provider_option(parser: argparse.ArgumentParser) -> None:
    """``--providers``: the execution providers of a benchmark's server under test (``python -m service
    --providers``), in order; its floor stays on CPU."""
    parser.add_argument(
        "--providers", nargs="+", choices=get_args(Provider), default=["cpu"],
        help="execution providers of the server under test, in order (the floor runs on CPU)",
    )  # fmt: skip


def matches_floor(model_file: Path, providers: Sequence[str]) -> Callable[[np.ndarray, np.ndarray], bool]:
    """How a server's answer is compared with the CPU floor's (``cpu_session``): bit for bit when the server runs on
    CPU as the floor does; on a GPU provider, whose kernels sum in another order, within the file's golden
    tolerance."""
    if providers[0] == "cpu":
        return np.array_equal
    runtime = open_runtime(model_file, "cpu")
    return lambda ours, floor: agree(runtime, [ours], [floor])


def serve_check(repository: Path, provider: Provider, *, rows: int = 4, seed: int = 0) -> dict[str, Any]:
    """``python -m service`` on ``repository`` with ``--providers <provider>`` (and the default, no CPU fallback):
    per model, the providers ``GET /v2/models/{m}/config`` reports and whether a REST ``infer`` of ``rows`` random
    rows answers as a CPU session of the same file does (every output, as ``agree`` compares them); and the
    server's load lines from its log."""
    import httpx

    from odetoode.testing.servers import server_process

    rng = np.random.default_rng(seed)
    models: dict[str, Any] = {}
    with server_process(repository, "--model-control-mode", "none", "--providers", provider) as server:
        for name, path in bundled_models(repository).items():
            reply = httpx.get(f"{server.http}/v2/models/{name}/config", timeout=30)
            if reply.status_code != 200:
                models[name] = {"providers": [], "agrees_with_cpu": False, "error": reply.text[:300]}
                continue
            reference = open_runtime(path, "cpu")
            feeds = random_feeds(reference, rows, rng)
            inputs = [{"name": n, "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}
                      for n, x in feeds.items()]  # fmt: skip
            answer = httpx.post(f"{server.http}/v2/models/{name}/infer", json={"inputs": inputs}, timeout=60)
            answer.raise_for_status()
            served = {o["name"]: o["data"] for o in answer.json()["outputs"]}
            agrees = agree(reference, [served[name] for name in reference.output_names], reference.run(feeds))
            models[name] = {"providers": reply.json()["execution_providers"], "agrees_with_cpu": agrees}
        log = [line.strip() for line in server.log_lines if " loaded " in line or "failed to load" in line]
    return {"provider": provider, "models": models, "log": log}


def run_benchmark(script: Path, *args: str, timeout_s: float) -> dict[str, Any]:
    """``python <script> <args>`` in its own process group (a benchmark that overruns is killed with the servers it
    started): the command (script by name), exit status (``None``: killed at ``timeout_s``), wall time, output."""
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, str(script), *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)  # fmt: skip
    code: int | None
    try:
        output, _ = proc.communicate(timeout=timeout_s)
        code = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        code = None
    command = ["python", f"benchmarks/{script.name}", *args]
    return {"command": command, "returncode": code, "seconds": time.perf_counter() - started,
            "output": output.splitlines()}  # fmt: skip
