"""What ``benchmarks/gpu_check.py`` measures, on the parts that run without a GPU: the CPU rows on real ONNX Runtime
sessions of the bundled models, where their nodes ran (from a real profile), the crossover against the closed form of
linear run costs, the real server checked on a provider, a benchmark run as a child process, and the results files
(JSON and Markdown written from one dict, read back and compared)."""

from __future__ import annotations

import json
import math
import re
import textwrap
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from odetoode.testing.gpu import (
    Cell,
    Mode,
    agree,
    bundled_models,
    crossover,
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
)
from odetoode.testing.gpu_report import RESULTS_JSON, RESULTS_MD, compute_entry, figure, write_results
from service.errors import ProviderUnavailable

ROOT = Path(__file__).resolve().parents[2]
MODELS = bundled_models(ROOT / "models")
CPU, CUDA = "CPUExecutionProvider", "CUDAExecutionProvider"
BATCHES = powers_of_two(64)


def test_the_bundled_repository_is_found() -> None:
    assert {"digits", "halfcheetah"} <= set(MODELS)
    assert all(path.name == "model.onnx" and path.parent.name.isdigit() for path in MODELS.values())


# -- the crossover -------------------------------------------------------------------------------------------------


def rates(fixed_us: float, per_row_us: float, batches: list[int]) -> list[float]:
    """Rows per second when a run of b rows costs ``fixed_us + per_row_us * b``."""
    return [b * 1e6 / (fixed_us + per_row_us * b) for b in batches]


@pytest.mark.parametrize(
    ("cpu", "gpu"),
    [((20.0, 0.5), (90.0, 0.01)), ((26.0, 0.18), (60.0, 0.002)), ((5.0, 2.0), (400.0, 0.05)), ((30, 1.0), (31, 0.1))],
)
def test_the_crossover_is_where_the_linear_costs_cross(cpu: tuple[float, float], gpu: tuple[float, float]) -> None:
    """A GPU with a larger fixed cost per run and a smaller cost per row wins from b* = (a_g - a_c) / (r_c - r_g):
    the crossover reported is the first batch size measured above b*."""
    batches = powers_of_two(65_536)
    b_star = (gpu[0] - cpu[0]) / (cpu[1] - gpu[1])
    expected = 2 ** math.ceil(math.log2(b_star)) if b_star > 1 else 1
    assert crossover(batches, rates(*cpu, batches), rates(*gpu, batches)) == expected


def test_the_crossover_by_hand() -> None:
    batches = [1, 2, 4, 8, 16]
    cpu = [10.0, 20, 40, 80, 160]
    assert crossover(batches, cpu, [1, 2, 3, 100, 200]) == 8  # wins from 8 on
    assert crossover(batches, cpu, [11, 21, 30, 90, 170]) == 8  # an early win does not count once it loses again
    assert crossover(batches, cpu, [11, 21, 41, 81, 161]) == 1  # wins everywhere
    assert crossover(batches, cpu, [1, 2, 3, 100, 160]) is None  # a tie at the largest is not a win
    assert crossover(batches, cpu, [1000, 1000, 1000, 1000, 1]) is None
    with pytest.raises(ValueError, match="one figure per batch size"):
        crossover(batches, cpu, [1.0])


def test_powers_of_two() -> None:
    assert powers_of_two(1) == [1]
    assert powers_of_two(16) == [1, 2, 4, 8, 16]
    assert len(powers_of_two(65_536)) == 17
    with pytest.raises(ValueError, match="power of two"):
        powers_of_two(100)


# -- the CPU rows --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cpu_rows() -> dict[str, dict[str, list[Cell]]]:
    """Every bundled model, CPU through the server's run path and CPU with IO binding, batch 1 to 64."""
    modes = [Mode("cpu"), Mode("cpu", resident=True)]
    return {name: measure(path, modes, BATCHES, seconds=0.02) for name, path in MODELS.items()}


def test_cpu_rows_are_sane_figures(cpu_rows: dict[str, dict[str, list[Cell]]]) -> None:
    for name, by_mode in cpu_rows.items():
        for label, cells in by_mode.items():
            assert [c.batch for c in cells] == BATCHES, (name, label)
            assert all(c.runs >= 3 and 0 < c.p50_us <= c.p99_us and c.agrees for c in cells), (name, label)
            assert 1 < cells[0].p50_us < 20_000, (name, label, cells[0])  # batch 1: microseconds, not seconds
            # the fixed cost of a run is shared by its rows (what batching buys on any device): 64 rows take far
            # less than 64 runs of one, and (a timing is a median, not a lower bound) not much less than one run
            assert cells[0].p50_us / 2 < cells[-1].p50_us < 16 * cells[0].p50_us, (name, label)
            assert cells[-1].rows_per_s > 4 * cells[0].rows_per_s
            assert cells[-1].rows_per_s == pytest.approx(64e6 / cells[-1].p50_us)


def test_cpu_batch_one_agrees_with_the_servers_own_warm_up_timing(cpu_rows: dict[str, dict[str, list[Cell]]]) -> None:
    """The server times batch 1 at load (``ModelRuntime.warm_up``, its own loop): the same order of magnitude."""
    for name, path in MODELS.items():
        runtime = open_runtime(path, "cpu")
        runtime.warm_up()
        ours = cpu_rows[name]["cpu"][0].p50_us
        assert runtime.compute_us_batch1 / 5 < ours < runtime.compute_us_batch1 * 5, (name, ours)


def test_answers_agree_as_their_dtypes_say() -> None:
    """A discrete policy: its action index (its golden output, checked exactly) and its float logits."""
    runtime = open_runtime(MODELS["cartpole"], "cpu")
    action, logits = runtime.run(random_feeds(runtime, 8, np.random.default_rng(0)))
    assert action.dtype == np.int64 and logits.dtype == np.float32
    assert agree(runtime, [action.tolist(), logits.tolist()], [action, logits])  # as JSON brings them back
    assert agree(runtime, [action, logits + 1e-6], [action, logits])
    assert not agree(runtime, [action, logits + 1e-2], [action, logits])
    assert not agree(runtime, [1 - action, logits], [action, logits])


def test_a_gpu_provider_this_build_lacks_fails_to_open_instead_of_running_on_cpu() -> None:
    if CUDA in ort.get_available_providers():
        pytest.skip("this ONNX Runtime has CUDA")
    with pytest.raises(ProviderUnavailable, match="cuda"):
        open_runtime(MODELS["halfcheetah"], "cuda")
    assert not provider_kernels(CUDA)


def test_the_golden_self_check_runs_on_the_chosen_provider() -> None:
    for path in MODELS.values():
        runtime = open_runtime(path, "cpu")
        check = golden_on(runtime)
        assert runtime.providers == [CPU]
        assert check is not None and check.passed and check.pairs >= 1 and check.max_abs_error < 1e-4


# -- where the nodes ran -------------------------------------------------------------------------------------------


def test_node_placement_comes_from_a_real_profile(tmp_path: Path) -> None:
    path = MODELS["halfcheetah"]
    nodes = node_placement(open_runtime(path, "cpu"), tmp_path)
    assert list(tmp_path.glob("halfcheetah*.json")), "the profile is kept"
    graph_ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    cpu_kernels = provider_kernels(CPU)
    assert len(nodes) >= 25 and all(node.provider == CPU for node in nodes)
    assert {node.op for node in nodes} <= cpu_kernels
    assert {node.op for node in nodes} & graph_ops >= {"Abs"}  # the flow's activation, not fused away
    assert misplaced(nodes, CPU, cpu_kernels) == []
    # read as if CUDA had been asked for: a node off the device is a failure only where the device has its kernel
    assert misplaced(nodes, CUDA, cpu_kernels) == nodes
    assert misplaced(nodes, CUDA, frozenset({"Abs"})) == [node for node in nodes if node.op == "Abs"]
    assert misplaced(nodes, CUDA, frozenset()) == []


# -- the server and the benchmarks ---------------------------------------------------------------------------------


def test_serve_check_sees_every_model_on_its_provider_answering_as_the_cpu_does() -> None:
    report = serve_check(ROOT / "models", "cpu")
    assert set(report["models"]) == set(MODELS)
    for name, model in report["models"].items():
        assert model["providers"][0] == CPU and model["agrees_with_cpu"], (name, model)
        assert any(f"loaded {name} v" in line and CPU in line for line in report["log"]), name


def test_a_latency_benchmark_runs_against_a_server_on_the_provider_asked_for() -> None:
    args = ("--requests", "40", "--rounds", "2", "--warmup", "5", "--no-rest", "--providers", "cpu")
    run = run_benchmark(ROOT / "benchmarks" / "oip_latency.py", *args, timeout_s=120)
    assert run["returncode"] == 0, "\n".join(run["output"])
    assert run["command"] == ["python", "benchmarks/oip_latency.py", *args]
    assert any(line.startswith("ModelInfer p50 = ") for line in run["output"])


def test_a_benchmark_past_its_time_is_killed_with_its_children(tmp_path: Path) -> None:
    script = tmp_path / "stuck.py"
    script.write_text(
        textwrap.dedent("""
        import subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        print(child.pid, flush=True)
        time.sleep(60)
    """)
    )
    started = time.monotonic()
    run = run_benchmark(script, timeout_s=2)
    assert run["returncode"] is None and time.monotonic() - started < 30
    child = int(run["output"][0])
    deadline = time.monotonic() + 10
    while Path(f"/proc/{child}").exists() and time.monotonic() < deadline:  # reaped by init once killed
        time.sleep(0.05)
    assert not Path(f"/proc/{child}").exists() or "Z" in Path(f"/proc/{child}/stat").read_text().split()[2]


# -- the results files ---------------------------------------------------------------------------------------------


def markdown_tables(text: str) -> dict[str, list[list[str]]]:
    """Each ``### <model>`` section's table rows (cells as text), header first."""
    tables: dict[str, list[list[str]]] = {}
    section = None
    for line in text.splitlines():
        if line.startswith("### "):
            section = line[4:]
        elif line.startswith("| ") and section is not None:
            tables.setdefault(section, []).append([cell.strip() for cell in line.strip("|").split("|")])
    return tables


def test_results_are_written_as_json_and_markdown_that_agree(
    tmp_path: Path, cpu_rows: dict[str, dict[str, list[Cell]]]
) -> None:
    rivals = [("cpu on device", "cpu")]
    compute = {name: compute_entry(cells, rivals) for name, cells in cpu_rows.items()}
    results = {
        "passed": False, "failures": ["digits: an example failure"], "started": "2026-01-01T00:00:00+00:00",
        "seconds": 12.5, "environment": {"ONNX Runtime": ort.__version__}, "compute": compute,
    }  # fmt: skip
    json_path, md_path = write_results(results, tmp_path / "out")
    assert (json_path.name, md_path.name) == (RESULTS_JSON, RESULTS_MD)
    assert json.loads(json_path.read_text()) == results
    text = md_path.read_text()
    assert text.startswith("# GPU check: FAILED") and "- digits: an example failure" in text
    tables = markdown_tables(text)
    assert set(tables) == set(cpu_rows)
    for name, rows in tables.items():
        entry = compute[name]
        header, *body = rows
        assert header == ["batch", "cpu rows/s", "cpu on device rows/s"]
        assert [int(row[0].replace(",", "")) for row in body] == BATCHES == entry["batches"]
        for column, label in enumerate(entry["cells"], start=1):
            shown = [float(row[column].replace(",", "")) for row in body]
            written = [cell["rows_per_s"] for cell in entry["cells"][label]]
            assert shown == pytest.approx(written, abs=0.5), (name, label)  # rounded to whole rows per second
        batch1 = re.search(r"Batch-1 compute \(median\): cpu ([\d.]+) us", text.split(f"### {name}")[1])
        assert batch1 is not None and float(batch1[1]) == pytest.approx(entry["batch1_us"]["cpu"], abs=0.05)
        (found,) = entry["crossovers"]
        assert found["batch"] == crossover(BATCHES, *([c["rows_per_s"] for c in entry["cells"][label]]
                                                      for label in ("cpu", "cpu on device")))  # fmt: skip
        said = f"cpu on device beats cpu from batch {found['batch']} on" if found["batch"] else "never beats cpu"
        assert said in text.split(f"### {name}")[1].split("###")[0]
    passed = {**results, "passed": True, "failures": []}
    assert write_results(passed, tmp_path / "ok")[1].read_text().startswith("# GPU check: PASSED")


def test_a_missing_figure_is_null_in_json_never_nan(tmp_path: Path) -> None:
    assert figure(float("nan")) is None and figure(math.inf) is None and figure(2.5) == 2.5
    with pytest.raises(ValueError, match="Out of range float values"):
        write_results({"passed": True, "failures": [], "seconds": float("nan")}, tmp_path)


def test_answers_that_differ_are_named_in_both_files(tmp_path: Path) -> None:
    cells = {
        "cpu": [Cell(1, 5, 10.0, 12.0), Cell(2, 5, 15.0, 16.0)],
        "cuda": [Cell(1, 5, 100.0, 120.0, agrees=False), Cell(2, 5, 10.0, 11.0)],
    }
    entry = compute_entry(cells, [("cuda", "cpu")])
    assert entry["disagree"] == ["cuda at batch 1"]
    assert entry["batch1_us"] == {"cpu": 10.0, "cuda": 100.0}
    assert entry["crossovers"] == [{"rival": "cuda", "base": "cpu", "batch": 2}]  # 200,000 rows/s against 133,333
    results = {"passed": False, "failures": ["compute: differs"], "compute": {"m": entry}}
    _, md_path = write_results(results, tmp_path)
    assert "**Answers that differ from cpu's**: cuda at batch 1." in md_path.read_text()
    assert "- cuda beats cpu from batch 2 on." in md_path.read_text()
    with pytest.raises(ValueError, match="same batch sizes"):
        compute_entry({"cpu": cells["cpu"], "cuda": cells["cuda"][:1]}, [])
