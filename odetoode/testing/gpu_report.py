"""The results of ``benchmarks/gpu_check.py`` as files: ``gpu_check.json`` (everything measured, for tools) and
``gpu_check.md`` (the same as tables, for people), both written from one dict, so they cannot disagree.

The dict (``results``) has ``passed`` and ``failures``, ``started`` and ``seconds``, and one entry per step:
``environment`` (versions), ``models`` (per model: session providers, golden self-check, node placement),
``compute`` (per model: ``compute_entry``), ``server`` (``serve_check`` and the benchmarks' runs) and ``tensorrt``.
A step that did not run is absent. Missing figures are ``null``, never NaN (JSON has none).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from odetoode.testing.gpu import Cell, crossover

RESULTS_JSON = "gpu_check.json"
RESULTS_MD = "gpu_check.md"


def figure(x: float | None) -> float | None:
    """``x`` as JSON can hold it: ``None`` for a missing (NaN or infinite) figure."""
    return None if x is None or not math.isfinite(x) else float(x)


def compute_entry(cells: Mapping[str, Sequence[Cell]], rivals: Sequence[tuple[str, str]]) -> dict[str, Any]:
    """One model's compute figures: ``cells`` by mode label (every mode at the same batch sizes, ascending; the
    first mode is the one the others' answers were compared with), the cells whose answers differ from it, and the
    crossover of each ``(rival, base)`` pair of labels (``gpu.crossover`` on rows per second)."""
    batches = [c.batch for c in next(iter(cells.values()))]
    if any([c.batch for c in row] != batches for row in cells.values()):
        raise ValueError("every mode must be measured at the same batch sizes")
    rates = {label: [c.rows_per_s for c in row] for label, row in cells.items()}
    return {
        "batches": batches,
        "cells": {
            label: [
                {
                    "batch": c.batch,
                    "runs": c.runs,
                    "p50_us": figure(c.p50_us),
                    "p99_us": figure(c.p99_us),
                    "rows_per_s": figure(c.rows_per_s),
                    "agrees": c.agrees,
                }
                for c in row
            ]
            for label, row in cells.items()
        },
        "disagree": [f"{label} at batch {c.batch}" for label, row in cells.items() for c in row if not c.agrees],
        "batch1_us": {label: figure(row[0].p50_us) for label, row in cells.items() if row[0].batch == 1},
        "crossovers": [
            {"rival": rival, "base": base, "batch": crossover(batches, rates[base], rates[rival])}
            for rival, base in rivals
        ],
    }


def write_results(results: Mapping[str, Any], directory: Path) -> tuple[Path, Path]:
    """Writes ``results`` as ``gpu_check.json`` and ``gpu_check.md`` in ``directory`` (made if missing); returns
    both paths. Raises ``ValueError`` on a NaN or infinite figure (use ``figure``)."""
    directory.mkdir(parents=True, exist_ok=True)
    json_path, md_path = directory / RESULTS_JSON, directory / RESULTS_MD
    json_path.write_text(json.dumps(results, indent=2, allow_nan=False) + "\n")
    md_path.write_text(markdown(results))
    return json_path, md_path


def _us(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"


def _rate(x: float | None) -> str:
    return "-" if x is None else f"{x:,.0f}"


def _crossover(found: Mapping[str, Any], largest: int) -> str:
    if found["batch"] is None:
        return f"- {found['rival']} never beats {found['base']} (up to batch {largest:,})."
    return f"- {found['rival']} beats {found['base']} from batch {found['batch']:,} on."


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows] + [""]


def markdown(results: Mapping[str, Any]) -> str:
    """``results`` for people: a verdict, the failures, then one section per step that ran."""
    lines = [f"# GPU check: {'PASSED' if results['passed'] else 'FAILED'}", ""]
    lines += [f"Run started {results.get('started', '?')}, took {results.get('seconds', 0):.0f} s.", ""]
    if results["failures"]:
        lines += ["## Failures", "", *(f"- {failure}" for failure in results["failures"]), ""]
    if "environment" in results:
        lines += ["## Host", "", *_table(["", ""], [[k, v] for k, v in results["environment"].items()])]
    if "models" in results:
        lines += ["## Models on the GPU (providers [cuda], no CPU fallback)", ""]
        rows = []
        for name, m in results["models"].items():
            golden = m.get("golden") or {}
            nodes = ", ".join(f"{p} {n}" for p, n in m.get("nodes", {}).items())
            rows.append([name, m.get("kind", "-"), " > ".join(m.get("providers", [])), golden.get("pairs", "-"),
                         f"{golden['max_abs_error']:.2e}" if golden else "-",
                         "-" if not golden else "passed" if golden["passed"] else "FAILED", nodes,
                         ", ".join(m.get("misplaced", [])) or "none"])  # fmt: skip
        header = ["model", "kind", "session providers", "golden pairs", "max abs error", "golden", "nodes by provider",
                  "on CPU with a CUDA kernel"]  # fmt: skip
        lines += _table(header, rows)
    if "compute" in results:
        lines += ["## Compute: rows per second by batch size (from the median wall time of a run)", ""]
        for name, entry in results["compute"].items():
            labels = list(entry["cells"])
            batch1 = ", ".join(f"{label} {_us(us)} us" for label, us in entry["batch1_us"].items())
            lines += [f"### {name}", "", f"Batch-1 compute (median): {batch1}.", ""]
            if entry["disagree"]:
                lines += [f"**Answers that differ from {labels[0]}'s**: {', '.join(entry['disagree'])}.", ""]
            lines += ["Crossovers (more rows per second from this batch size on):", ""]
            lines += [_crossover(found, entry["batches"][-1]) for found in entry["crossovers"]]
            rows = [[f"{b:,}", *(_rate(entry["cells"][label][i]["rows_per_s"]) for label in labels)]
                    for i, b in enumerate(entry["batches"])]  # fmt: skip
            lines += ["", *_table(["batch", *(f"{label} rows/s" for label in labels)], rows)]
    if "server" in results:
        server = results["server"]
        lines += [f"## The server on {server['provider']}", ""]
        rows = [[name, " > ".join(m["providers"]), "yes" if m["agrees_with_cpu"] else "NO"]
                for name, m in server["models"].items()]  # fmt: skip
        lines += _table(["model", "served on", "answers agree with CPU"], rows)
        lines += ["```", *server["log"], "```", ""]
        for run in server.get("benchmarks", []):
            status = "killed at its time limit" if run["returncode"] is None else f"exit {run['returncode']}"
            lines += [f"### `{' '.join(run['command'])}` ({status}, {run['seconds']:.0f} s)", ""]
            lines += ["```", *run["output"], "```", ""]
    if "tensorrt" in results:
        trt = results["tensorrt"]
        lines += ["## TensorRT", "", f"{trt['status']}: {trt['detail']}", ""]
        if trt.get("models"):
            rows = [[name, m.get("golden", "-"), _us(m.get("batch1_us"))] for name, m in trt["models"].items()]
            lines += _table(["model", "golden self-check", "batch-1 compute us"], rows)
    return "\n".join(lines).rstrip() + "\n"
