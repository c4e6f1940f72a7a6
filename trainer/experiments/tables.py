"""Tables 1 and 2 of the paper on digits-C: every model, several seeds, clean training, corrupted tests.

``python -m trainer table --table 1 --seeds 3 --epochs 20`` trains what is missing (results are cached per model and
seed under ``--runs``), then writes a markdown table (mean +- std) and a heat map. The budget actually used (epochs,
wall time) is stated in the markdown.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from trainer.supervised import TABLE_1, TABLE_2, ClassifierSpec, SupervisedConfig, train

SETTINGS = {1: {"width": 128, "dropout": 0.0}, 2: {"width": 256, "dropout": 0.1}}
MODELS = {1: TABLE_1, 2: TABLE_2}
# The paper's row order, then the corruptions its tables leave out.
ROWS = ("dotted_line", "spatter", "stripe", "translate", "rotate", "scale", "shear", "motion_blur", "glass_blur",
        "shot_noise", "identity")  # fmt: skip


def run_cell(table: int, model: str, seed: int, epochs: int, runs: Path, progress: bool = True) -> dict[str, Any]:
    """One (model, seed) of a table: cached in ``runs/table<t>/<model>/seed<s>/result.json``."""
    out = runs / f"table{table}" / model / f"seed{seed}"
    cached = out / "result.json"
    if cached.is_file():
        result: dict[str, Any] = json.loads(cached.read_text())
        if result["epochs"] == epochs:
            return result
    config = SupervisedConfig(model=model, seed=seed, epochs=epochs, **SETTINGS[table])  # type: ignore[arg-type]
    _, res = train(config, progress=progress, out=out, overwrite=True)  # a stale or partial cell is retrained
    return res.to_json()


def aggregate(results: dict[str, list[dict[str, Any]]]) -> tuple[list[str], list[str], np.ndarray, np.ndarray]:
    """Rows (corruptions), columns (model labels), mean and std accuracy in percent."""
    columns = list(results)
    every = set.intersection(*(set(r["accuracies"]) for rs in results.values() for r in rs))
    rows = [r for r in ROWS if r in every] + sorted(every - set(ROWS))
    mean = np.array([[np.mean([r["accuracies"][row] for r in results[c]]) * 100 for c in columns] for row in rows])
    std = np.array([[np.std([r["accuracies"][row] for r in results[c]]) * 100 for c in columns] for row in rows])
    return rows, columns, mean, std


def markdown(table: int, rows: list[str], columns: list[str], mean: np.ndarray, std: np.ndarray,
             budget: str) -> str:  # fmt: skip
    labels = [ClassifierSpec.parse(c).label for c in columns]
    lines = [
        f"# Table {table} on digits-C",
        "",
        budget,
        "",
        "Test accuracy (%), mean +- std over seeds; the best mean of each row in bold.",
        "",
        "| corruption | " + " | ".join(labels) + " |",
        "|---|" + "---|" * len(labels),
    ]
    for i, row in enumerate(rows):
        best = mean[i].max()
        cells = [
            (f"**{m:.2f}**" if m == best else f"{m:.2f}") + f" +- {s:.2f}" for m, s in zip(mean[i], std[i], strict=True)
        ]
        lines.append(f"| {row.replace('_', ' ')} | " + " | ".join(cells) + " |")
    wins = {labels[j]: int((mean.argmax(axis=1) == j).sum()) for j in range(len(labels))}
    lines += ["", "Rows won: " + ", ".join(f"{k} {v}" for k, v in wins.items() if v), ""]
    return "\n".join(lines)


def heatmap(table: int, rows: list[str], columns: list[str], mean: np.ndarray, out: Path) -> Path:
    labels = [ClassifierSpec.parse(c).label for c in columns]
    fig, ax = plt.subplots(figsize=(1.0 * len(labels) + 3, 0.45 * len(rows) + 1.5))
    # Each row relative to its own best, so corruptions of very different difficulty are readable side by side.
    relative = mean - mean.max(axis=1, keepdims=True)
    image = ax.imshow(relative, cmap="RdYlGn", vmin=min(-5.0, float(relative.min())), vmax=0.0, aspect="auto")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(rows)), [r.replace("_", " ") for r in rows])
    for i in range(len(rows)):
        for j in range(len(labels)):
            ax.text(j, i, f"{mean[i, j]:.1f}", ha="center", va="center", fontsize=7)
    fig.colorbar(image, ax=ax, label="accuracy minus the row's best (points)")
    ax.set_title(f"Table {table} on digits-C: test accuracy (%)")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def reproduce(table: int, seeds: Sequence[int], epochs: int, runs: Path, docs: Path,
              models: Sequence[str] | None = None, progress: bool = True) -> Path:  # fmt: skip
    started = time.perf_counter()
    results: dict[str, list[dict[str, Any]]] = {}
    for model in models or MODELS[table]:
        results[model] = [run_cell(table, model, s, epochs, runs, progress) for s in seeds]
    rows, columns, mean, std = aggregate(results)
    wall = sum(r["wall_s"] for rs in results.values() for r in rs)
    s = SETTINGS[table]
    budget = (
        f"Budget: width {s['width']}, dropout {s['dropout']}, eta = 0.01 (N = 100), Adam 1e-3, batch 128, "
        f"{epochs} epochs (the paper: 100), seeds {list(seeds)}; training wall time {wall / 60:.1f} min in total "
        f"on 2 CPU cores (this run: {(time.perf_counter() - started) / 60:.1f} min, the rest cached). "
        "Dataset: digits-C (scikit-learn's 1797 handwritten digits at 28x28 with the MNIST-C corruptions; "
        "see docs/REPRODUCTION.md), not MNIST-C."
    )
    md = docs / f"table{table}.md"
    md.parent.mkdir(parents=True, exist_ok=True)
    md.write_text(markdown(table, rows, columns, mean, std, budget) + f"\n![heat map](figures/table{table}.png)\n")
    heatmap(table, rows, columns, mean, docs / "figures" / f"table{table}.png")
    return md
