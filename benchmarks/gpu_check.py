"""The GPU path on a real GPU, in one command: is CUDA really serving, does every bundled model compute on the device
what it was exported to compute, and from which batch size does the GPU beat the CPU -- all measured in one run.

    python benchmarks/gpu_check.py RESULTS_DIR [--repository models] [--seconds 0.15] [--no-server] [--keep-profiles]
    make gpu-check VENV=.venv-gpu EXTRAS=gpu,dev        # the same, into docs/results/gpu/

For a host with an NVIDIA GPU and its driver, Python 3.11 or 3.12, and an environment with the project's ``gpu`` and
``dev`` extras (``onnxruntime-gpu``, never beside ``onnxruntime``: both are the module ``onnxruntime``). It takes a
few minutes and stops each step within its share of 8 minutes. It writes ``gpu_check.json`` and ``gpu_check.md``
(``odetoode.testing.gpu_report``) into RESULTS_DIR (and ONNX Runtime's profiles, ``profiles/``, with
``--keep-profiles``):

1. prints the GPU, its driver and the CUDA version the driver supports (``nvidia-smi``), the CUDA version ONNX Runtime
   was built for and ONNX Runtime's own; exits at once with status 1, writing nothing, when this ONNX Runtime has no
   ``CUDAExecutionProvider``;
2. opens every model of the repository as the server does with ``providers: [cuda]`` and no CPU fallback (a CUDA
   provider that cannot start fails the load instead of serving on CPU): the session's providers, where each node
   ran (ONNX Runtime's profile; a node on CPU whose operator has a CUDA kernel is a failure), and the server's
   load-time golden self-check on the device (the server keeps float32 on the GPU: TF32 off,
   ``service.runtime.PROVIDER_OPTIONS``);
3. times, in this run, CPU (one intra-op thread as the server runs a session, and all of this host's CPUs) and CUDA
   (through the server's own run path, IO binding with host buffers; and with inputs and outputs on the device):
   the batch-1 compute time and rows per second at batch sizes 1 to 65,536 for policies and 1 to 4,096 for ``digits``
   (powers of 2, up to the most rows a request may carry), and the crossover: the batch size from which CUDA computes
   more rows per second than the CPU at that size and every larger one;
4. starts the real server (``python -m service --providers cuda``), checks that every model is served on CUDA and
   answers as the CPU does, then runs the project's benchmarks, short, against a server on CUDA:
   ``policy_api_latency.py`` (Act, ActStream, ModelInfer, REST infer against the CPU floor), ``oip_latency.py``, and
   ``policy_throughput.py`` (dynamic batching with 1, 64 and 256 concurrent ActStream streams; also on CPU);
5. tries the TensorRT provider where this build has it (golden self-check, batch-1 compute), else reports it absent.

Exit status 0 when every check passed; 1 when one failed (results written all the same, headed FAILED).

ONNX Runtime's CUDA provider needs CUDA 13 and cuDNN 9 libraries the loader can find (``onnxruntime-gpu`` 1.31 is a
CUDA 13 build): the system's (an ``nvidia/cuda`` image), or NVIDIA's pip packages (``onnxruntime-gpu[cuda,cudnn]``)
with their ``lib`` directories on the loader path before Python starts (the server is a process of its own)::

    export LD_LIBRARY_PATH="$(python -c 'import nvidia, pathlib; print(":".join(str(p) for d in nvidia.__path__
        for p in sorted(pathlib.Path(d).glob("*/lib"))))')${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import odetoode.telemetry_off  # noqa: F401  (first: turns ONNX Runtime's telemetry off before onnxruntime is imported)

# isort: split
import numpy as np
import onnxruntime as ort

from odetoode.testing.gpu import (
    Mode,
    bundled_models,
    golden_on,
    measure,
    misplaced,
    node_placement,
    open_runtime,
    powers_of_two,
    provider_kernels,
    random_feeds,
    run_benchmark,
    serve_check,
    time_cell,
)
from odetoode.testing.gpu_report import compute_entry, figure, write_results
from service.errors import ServingError
from service.runtime import ORT_PROVIDERS, available_cpus

CUDA, TENSORRT = ORT_PROVIDERS["cuda"], ORT_PROVIDERS["tensorrt"]
BUDGET_S = 8 * 60
"""The whole run; each step stops starting new work once its share is spent."""
BENCHMARKS = Path(__file__).resolve().parent
SERVER_RUNS = [
    ("policy_api_latency.py", "--requests", "2000", "--rounds", "4", "--warmup", "200", "--loop-seconds", "0"),
    ("oip_latency.py", "--requests", "2000", "--rounds", "4", "--warmup", "200"),
    ("policy_throughput.py", "--seconds", "3", "--warmup", "1", "--streams", "1", "64", "256"),
]
"""The project's benchmarks, short, each against a server on CUDA (``--providers cuda``); the throughput run also
on CPU, for comparison in the same run."""


def nvidia_smi(*args: str) -> str | None:
    """``nvidia-smi``'s output, ``None`` where it is missing or fails (no driver)."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        return subprocess.run([exe, *args], capture_output=True, text=True, timeout=60, check=True).stdout.strip()
    return None


def installed(distribution: str) -> str | None:
    with contextlib.suppress(PackageNotFoundError):
        return version(distribution)
    return None


def environment() -> dict[str, str]:
    """What the figures were measured on: GPU, driver, CUDA, ONNX Runtime, Python, CPUs."""
    from onnxruntime.capi import build_and_package_info as build

    gpus = nvidia_smi("--query-gpu=name,driver_version,memory.total", "--format=csv,noheader")
    banner = re.search(r"CUDA Version:\s*([\d.]+)", nvidia_smi() or "")
    distributions = {d: installed(d) for d in ("onnxruntime-gpu", "onnxruntime")}
    cpu_names = re.findall(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), flags=re.M)
    return {
        "GPU (name, driver, memory)": "; ".join(gpus.splitlines())
        if gpus
        else "none found (nvidia-smi missing or failed)",
        "CUDA the driver supports": banner[1] if banner else "unknown",
        "CUDA ONNX Runtime was built for": str(getattr(build, "cuda_version", None) or "none (not a CUDA build)"),
        "cuDNN ONNX Runtime was built for": str(getattr(build, "cudnn_version", None) or "unknown"),
        "ONNX Runtime": f"{ort.__version__} (" + ", ".join(f"{d} {v}" for d, v in distributions.items() if v) + ")",
        "ONNX Runtime providers": ", ".join(ort.get_available_providers()),
        "Python": f"{platform.python_version()} on {platform.platform()}",
        "CPUs": f"{available_cpus()} usable ({cpu_names[0] if cpu_names else platform.processor() or 'unknown'})",
    }


def check_model(path: Path, profiles: Path, kernels: frozenset[str], failures: list[str]) -> dict[str, Any]:
    """Step 2 for one model: its entry in ``results["models"]``; what fails goes to ``failures``."""
    name = path.parents[1].name
    try:
        runtime = open_runtime(path, "cuda")
    except ServingError as exc:
        failures.append(f"{name}: does not open on CUDA: {exc}")
        return {"providers": [], "error": str(exc)}
    nodes = node_placement(runtime, profiles)
    # without a list of CUDA's kernels, every node off CUDA counts: a check that cannot tell must not pass
    off = [f"{node.name} ({node.op})" for node in misplaced(nodes, CUDA, kernels or frozenset(n.op for n in nodes))]
    counts: dict[str, int] = {}
    for node in nodes:
        counts[node.provider] = counts.get(node.provider, 0) + 1
    entry: dict[str, Any] = {
        "file": str(path.relative_to(path.parents[2])),
        "kind": runtime.description.kind if runtime.description else "any ONNX",
        "providers": runtime.providers, "nodes": counts, "misplaced": off,
    }  # fmt: skip
    if runtime.providers[0] != CUDA:
        failures.append(f"{name}: the session runs on {runtime.providers[0]}, not {CUDA}")
    if off:
        failures.append(f"{name}: {len(off)} node(s) on CPU that have a CUDA kernel: {off}")
    try:
        check = golden_on(runtime)
        entry["golden"] = check and {"pairs": check.pairs, "max_abs_error": check.max_abs_error, "passed": True}
    except ServingError as exc:
        check = runtime.self_check()
        assert check is not None  # a file without golden pairs cannot fail the check
        entry["golden"] = {"pairs": check.pairs, "max_abs_error": check.max_abs_error, "passed": False}
        failures.append(f"{name}: {exc}")
    return entry


def check_models(models: dict[str, Path], profiles: Path, results: dict[str, Any]) -> list[str]:
    """Step 2; returns the models whose sessions run on CUDA."""
    try:
        kernels = provider_kernels(CUDA)
    except Exception as exc:  # the list needs a CUDA provider made in this process; without it, be strict
        print(f"  no list of CUDA kernels ({type(exc).__name__}: {exc}): every node off CUDA counts as misplaced")
        kernels = frozenset()
    results["models"] = {}
    for name, path in models.items():
        try:
            entry = check_model(path, profiles, kernels, results["failures"])
        except Exception as exc:  # one model's surprise must not cost the rest of a GPU run
            traceback.print_exc()
            results["failures"].append(f"{name}: check stopped by {type(exc).__name__}: {exc}")
            continue
        results["models"][name] = entry
        print(f"  {name}: {' > '.join(entry['providers'])}; nodes {entry.get('nodes')}; golden {entry.get('golden')}")
    return [name for name, entry in results["models"].items() if entry["providers"][:1] == [CUDA]]


def measure_compute(
    models: dict[str, Path], args: argparse.Namespace, results: dict[str, Any], deadline: float
) -> None:
    """Step 3: every mode at every batch size, model by model."""
    cpus = available_cpus()
    modes = [Mode("cpu"), *([Mode("cpu", threads=cpus)] if cpus > 1 else []), Mode("cuda"), Mode("cuda", resident=True)]
    rivals = [(r.label, b.label) for r in modes if r.provider != "cpu" for b in modes if b.provider == "cpu"]
    results["compute"] = {}
    for name, path in models.items():
        if time.monotonic() > deadline:
            results["failures"].append(f"compute: out of time before {name}")
            break
        most_rows = open_runtime(path, "cpu").config.max_request_rows  # the largest batch one request may carry
        batches = powers_of_two(1 << (min(most_rows, args.largest_batch).bit_length() - 1))
        try:
            cells = measure(path, modes, batches, seconds=args.seconds)
        except Exception as exc:
            traceback.print_exc()
            results["failures"].append(f"compute: {name} stopped by {type(exc).__name__}: {exc}")
            continue
        entry = results["compute"][name] = compute_entry(cells, rivals)
        if entry["disagree"]:
            results["failures"].append(f"compute: {name}: answers differ from cpu's: {entry['disagree']}")
        found = ", ".join(f"{c['rival']} vs {c['base']}: {c['batch']}" for c in entry["crossovers"])
        print(f"  {name}: batch-1 us {entry['batch1_us']}; crossover {found}")


def drive_server(repository: Path, results: dict[str, Any], deadline: float) -> None:
    """Step 4: the real server on CUDA, then the project's benchmarks against servers on CUDA."""
    server = serve_check(repository, "cuda")
    for name, model in server["models"].items():
        if not model["providers"] or model["providers"][0] != CUDA or not model["agrees_with_cpu"]:
            results["failures"].append(f"server: {name} served on {model['providers']}, agrees: "
                                       f"{model['agrees_with_cpu']} {model.get('error', '')}")  # fmt: skip
    runs = [(*run, "--providers", "cuda") for run in SERVER_RUNS] + [(*SERVER_RUNS[-1], "--providers", "cpu")]
    server["benchmarks"] = []
    results["server"] = server
    for script, *args in runs:
        left = deadline - time.monotonic()
        if left < 30:
            results["failures"].append(f"server: out of time before {script} {' '.join(args)}")
            break
        run = run_benchmark(BENCHMARKS / script, *args, timeout_s=min(180, left))
        server["benchmarks"].append(run)
        print(f"  {' '.join(run['command'])}: exit {run['returncode']} in {run['seconds']:.0f} s")
        if run["returncode"] != 0:
            results["failures"].append(f"server: {' '.join(run['command'])} exited {run['returncode']}")


def try_tensorrt(models: dict[str, Path], args: argparse.Namespace, results: dict[str, Any], deadline: float) -> None:
    """Step 5. TensorRT builds an engine per input shape, so each model runs batch 1 only (``max_batch_size: 1``
    keeps the warm-up at one shape). Its findings are reported, not counted as failures: serving uses CUDA."""
    if TENSORRT not in ort.get_available_providers():
        results["tensorrt"] = {"status": "absent", "detail": f"this ONNX Runtime build has no {TENSORRT}"}
        return
    entries: dict[str, Any] = {}
    for name, path in models.items():
        if time.monotonic() > deadline:
            entries[name] = {"golden": "not run: out of time"}
            continue
        try:
            runtime = open_runtime(path, "tensorrt", max_batch_size=1)
            check = golden_on(runtime)
            feeds = random_feeds(runtime, 1, np.random.default_rng(0))
            cell = time_cell(partial(runtime.run, feeds), 1, args.seconds, 5000)
            golden = f"passed (max abs error {check.max_abs_error:.2e})" if check else "no golden pairs"
            entries[name] = {"providers": runtime.providers, "golden": golden, "batch1_us": figure(cell.p50_us)}
        except Exception as exc:  # TensorRT's own errors come as several types; each is a finding, not a crash
            entries[name] = {"golden": f"FAILED: {type(exc).__name__}: {exc}"}
    ran = sum("batch1_us" in e for e in entries.values())
    results["tensorrt"] = {"status": "present", "detail": f"ran on {ran} of {len(entries)} models", "models": entries}


def run_steps(args: argparse.Namespace, results: dict[str, Any], started: float) -> None:
    """Steps 2 to 5, each within its share of the budget; failures go to ``results["failures"]``."""
    models = bundled_models(args.repository)
    print(f"2. models on CUDA: {', '.join(models)}")
    with tempfile.TemporaryDirectory() as scratch:  # the profiles are large; what they say goes to the results
        profiles = args.results_dir / "profiles" if args.keep_profiles else Path(scratch)
        profiles.mkdir(parents=True, exist_ok=True)
        on_cuda = {name: models[name] for name in check_models(models, profiles, results)}
    if not on_cuda:
        results["failures"].append("no model runs on CUDA: nothing to measure")
        return
    print("3. compute, CPU and CUDA")
    measure_compute(on_cuda, args, results, started + 0.45 * BUDGET_S)
    if not args.no_server:
        print("4. the server on CUDA and the benchmarks")
        guarded(results, "server", drive_server, args.repository, results, started + 0.9 * BUDGET_S)
    print("5. TensorRT")
    guarded(results, "TensorRT", try_tensorrt, on_cuda, args, results, started + 0.97 * BUDGET_S)


def guarded(results: dict[str, Any], step: str, run: Callable[..., None], *args: Any) -> None:
    """``run(*args)``; an exception becomes a failure of ``step`` and the run goes on: GPU time is scarce, and the
    steps after it do not depend on it."""
    try:
        run(*args)
    except Exception as exc:
        traceback.print_exc()
        results["failures"].append(f"{step}: stopped by {type(exc).__name__}: {exc}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results_dir", type=Path, help="where gpu_check.json and gpu_check.md go")
    parser.add_argument("--repository", type=Path, default=Path("models"), help="the models to check")
    parser.add_argument("--seconds", type=float, default=0.15, help="timed seconds per batch size, slowest mode")
    parser.add_argument("--largest-batch", type=int, default=65_536, help="cap on the batch sizes measured")
    parser.add_argument("--no-server", action="store_true", help="skip step 4 (the server and the benchmarks)")
    parser.add_argument("--keep-profiles", action="store_true", help="keep ONNX Runtime's profiles in RESULTS_DIR")
    args = parser.parse_args()
    started, wall = time.monotonic(), datetime.now(UTC).isoformat(timespec="seconds")

    print("1. host")
    env = environment()
    for key, value in env.items():
        print(f"  {key}: {value}")
    if CUDA not in ort.get_available_providers():
        sys.exit(
            f"gpu_check FAILED: this ONNX Runtime has no {CUDA} (providers: {ort.get_available_providers()}). "
            "Install onnxruntime-gpu (the project's `gpu` extra) in place of onnxruntime, on a host with an NVIDIA "
            "GPU and driver. Nothing was measured and no results were written."
        )
    results: dict[str, Any] = {"passed": False, "failures": [], "started": wall, "environment": env}
    try:
        run_steps(args, results, started)
    except BaseException as exc:  # the results written say why they stop short, never PASSED
        results["failures"].append(f"stopped by {type(exc).__name__}: {exc}")
        raise
    finally:
        results["passed"] = not results["failures"]
        results["seconds"] = time.monotonic() - started
        json_path, md_path = write_results(results, args.results_dir)
        print(f"results: {json_path}, {md_path}")
    if results["failures"]:
        sys.exit("gpu_check FAILED:\n  " + "\n  ".join(results["failures"]))
    print(f"gpu_check passed in {results['seconds']:.0f} s")


if __name__ == "__main__":
    main()
