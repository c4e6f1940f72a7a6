"""Tables 1 and 2 of the paper on digits-C: every model, several seeds, clean training, corrupted tests.

``python -m trainer table --table 1 --seeds 3 --epochs 20`` trains what is missing (each (model, seed) cell is cached
under ``--runs``; ``stale_cells`` says which are missing or out of date, and why), writes the raw results -- every
cell's accuracies, parameter count and per-image predictions -- to ``docs/results/table<t>.json``, and generates the
markdown table and heat map from that file alone (``render``; ``regenerate`` redraws them without training).

Each row states the mean +- sample standard deviation over seeds and, instead of "within one standard deviation",
a paired test (``trainer.experiments.stats.mcnemar``) of the best ODEtoODE column against the best other column on
the same test images, with the smallest difference that test could have detected.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from trainer.data.digits import digits_c
from trainer.experiments.stats import PairedTest, Verdict, mcnemar, mean_and_std, minimum_detectable_difference
from trainer.supervised import (
    TABLE_1,
    TABLE_2,
    ClassifierSpec,
    SupervisedConfig,
    decode_predictions,
    encode_predictions,
    train,
)

SETTINGS = {1: {"width": 128, "dropout": 0.0}, 2: {"width": 256, "dropout": 0.1}}
MODELS = {1: TABLE_1, 2: TABLE_2}
ABLATIONS = {
    1: ("dense-1-relu", "dense-10-relu", "hypernet-1-wide", "hypernet-10-wide"),
    2: ("dense-1-relu", "dense-2-relu", "dense-4-relu", "hypernet-1-wide", "hypernet-2-wide", "hypernet-4-wide"),
}
"""The named variants behind the tables' two controlled choices (ReLU for Dense-k, width-16 gates for HyperNet-k):
``reproduce(..., models=(*MODELS[t], *ABLATIONS[t]))`` reports both."""
# The paper's row order, then the corruptions its tables leave out.
ROWS = ("dotted_line", "spatter", "stripe", "translate", "rotate", "scale", "shear", "motion_blur", "glass_blur",
        "shot_noise", "identity")  # fmt: skip
FOCUS_ARCH = "gated-odetoode"
"""The columns the paired test is about (every ODEtoODE-k)."""
ALPHA = 0.05
"""Level of the paired test's verdicts."""
POWER = 0.8
"""Power at which each row's smallest detectable difference is stated."""
RAW_FIELDS = ("config", "accuracies", "predictions", "model_options", "parameters", "wall_s", "final_loss")
"""What the raw results file keeps of each cell's ``result.json`` (not its loss history)."""


def raw_path(docs: Path, table: int) -> Path:
    """Where ``reproduce`` writes table ``table``'s raw results: ``docs/results/table<t>.json``."""
    return docs / "results" / f"table{table}.json"


def cell_dir(runs: Path, table: int, model: str, seed: int) -> Path:
    return runs / f"table{table}" / model / f"seed{seed}"


def cell_config(table: int, model: str, seed: int, epochs: int) -> SupervisedConfig:
    """The configuration a (model, seed) cell of ``table`` is trained with."""
    s = SETTINGS[table]
    return SupervisedConfig(model=model, seed=seed, epochs=epochs, width=int(s["width"]), dropout=float(s["dropout"]))


def stale_reason(cached: dict[str, Any], config: SupervisedConfig) -> str | None:
    """Why a cached ``result.json`` cannot stand for ``config``'s cell (``None``: it can).

    A cell is stale when it was trained for other epochs or with another configuration, with architecture options
    other than the column's current ones (``ClassifierSpec.options``: cells trained before they were recorded had
    HyperNet-k gates of width 16 and Dense-k with ReLU), or without the per-image predictions the paired test needs.
    """
    reasons = []
    if cached.get("epochs") != config.epochs:
        reasons.append(f"trained for {cached.get('epochs')} epochs, not {config.epochs}")
    elif cached.get("config") != dataclasses.asdict(config):
        reasons.append("trained with another configuration")
    options = ClassifierSpec.parse(config.model).options
    if "model_options" not in cached:
        reasons.append("built before model options were recorded (HyperNet-k then had width-16 gates, Dense-k ReLU)")
    elif cached["model_options"] != options:
        reasons.append(f"built with {cached['model_options']}, the column is now {options}")
    predictions = cached.get("predictions") or {}
    if not predictions or set(predictions) != set(cached.get("accuracies", {})):
        reasons.append("no per-image predictions (needed by the paired test)")
    return "; ".join(reasons) or None


@dataclass(frozen=True)
class StaleCell:
    """A (model, seed) cell that must be (re)trained before its table can be generated."""

    table: int
    model: str
    seed: int
    reason: str

    def __str__(self) -> str:
        return f"table{self.table}/{self.model}/seed{self.seed}: {self.reason}"


class StaleCellsError(RuntimeError):
    """Cells of a table are missing or out of date, and ``reproduce(..., allow_training=False)`` may not train them."""

    def __init__(self, table: int, cells: Sequence[StaleCell], epochs: int, seeds: Sequence[int]) -> None:
        self.cells = list(cells)
        listing = "\n".join(f"  {cell}" for cell in cells)
        models = " ".join(dict.fromkeys(cell.model for cell in cells))
        super().__init__(
            f"{len(cells)} cell(s) of Table {table} need (re)training:\n{listing}\n"
            f"train them with: python -m trainer table --table {table} --epochs {epochs} "
            f"--seeds {' '.join(map(str, seeds))} --models {models}"
        )


def stale_cells(table: int, seeds: Sequence[int], epochs: int, runs: Path,
                models: Sequence[str] | None = None) -> list[StaleCell]:  # fmt: skip
    """Every cell of ``table`` (``models`` x ``seeds``) whose cached result under ``runs`` is missing or stale."""
    out = []
    for model in models or MODELS[table]:
        for seed in seeds:
            cached = cell_dir(runs, table, model, seed) / "result.json"
            if not cached.is_file():
                out.append(StaleCell(table, model, seed, "not trained"))
                continue
            reason = stale_reason(json.loads(cached.read_text()), cell_config(table, model, seed, epochs))
            if reason is not None:
                out.append(StaleCell(table, model, seed, reason))
    return out


def run_cell(table: int, model: str, seed: int, epochs: int, runs: Path, progress: bool = True) -> dict[str, Any]:
    """One (model, seed) of a table: cached in ``runs/table<t>/<model>/seed<s>/result.json``, retrained when stale."""
    out = cell_dir(runs, table, model, seed)
    config = cell_config(table, model, seed, epochs)
    cached = out / "result.json"
    if cached.is_file():
        result: dict[str, Any] = json.loads(cached.read_text())
        if stale_reason(result, config) is None:
            return result
    _, res = train(config, progress=progress, out=out, overwrite=True)  # a stale or partial cell is retrained
    return res.to_json()


def raw_results(table: int, seeds: Sequence[int], epochs: int, cells: dict[str, list[dict[str, Any]]]
                ) -> dict[str, Any]:  # fmt: skip
    """The raw results file of a table: its settings, the test labels and, per model, one record per seed (in
    ``seeds``' order) with ``RAW_FIELDS`` of the cell's result."""
    labels = digits_c("identity", split="test")[1]  # every corruption keeps the test split's labels and order
    return {
        "table": table,
        "settings": SETTINGS[table],
        "epochs": epochs,
        "seeds": list(seeds),
        "labels": encode_predictions(labels),
        "cells": {model: [{k: r.get(k) for k in RAW_FIELDS} for r in results] for model, results in cells.items()},
    }


def check_raw(raw: dict[str, Any]) -> None:
    """Raises ``ValueError`` naming every cell of ``raw`` that lacks per-image predictions (to be re-run), or whose
    predictions do not cover the test labels."""
    n = len(raw["labels"])
    missing = []
    for model, records in raw["cells"].items():
        for record in records:
            predictions = record.get("predictions") or {}
            if set(predictions) != set(record["accuracies"]) or any(len(p) != n for p in predictions.values()):
                missing.append(f"{model}/seed{record['config']['seed']}")
    if missing:
        raise ValueError(
            f"Table {raw['table']}: no per-image predictions for {len(missing)} cell(s), which must be re-run: "
            + ", ".join(missing)
        )


def aggregate(raw: dict[str, Any]) -> tuple[list[str], list[str], np.ndarray, np.ndarray]:
    """Rows (corruptions), columns (model names), mean and sample std (``ddof = 1``) of the accuracy in percent."""
    columns = list(raw["cells"])
    records = [r for rs in raw["cells"].values() for r in rs]
    every = set.intersection(*(set(r["accuracies"]) for r in records))
    rows = [r for r in ROWS if r in every] + sorted(every - set(ROWS))
    stats = [[mean_and_std([100 * r["accuracies"][row] for r in raw["cells"][c]]) for c in columns] for row in rows]
    return rows, columns, np.array([[m for m, _ in s] for s in stats]), np.array([[d for _, d in s] for s in stats])


@dataclass(frozen=True)
class RowTest:
    """A row's paired test: the best ODEtoODE column (``focus``) against the best other column, by mean."""

    row: str
    focus: str
    other: str
    difference: float
    """Mean accuracy of ``focus`` minus that of ``other``, in points."""
    test: PairedTest
    detectable: float
    """Smallest difference (points) the test detects with ``POWER`` at this row's discordance (``inf``: none)."""
    verdict: Verdict


def correctness(raw: dict[str, Any], model: str, row: str) -> np.ndarray:
    """``[seeds, images]`` booleans: which test images of corruption ``row`` each seed of ``model`` got right."""
    labels = decode_predictions(raw["labels"])
    return np.stack([decode_predictions(r["predictions"][row]) == labels for r in raw["cells"][model]])


def paired_tests(raw: dict[str, Any], alpha: float = ALPHA) -> list[RowTest]:
    """One ``RowTest`` per row; none when the table has no ODEtoODE column or nothing else."""
    rows, columns, mean, _ = aggregate(raw)
    focus = [j for j, c in enumerate(columns) if ClassifierSpec.parse(c).arch == FOCUS_ARCH]
    others = [j for j in range(len(columns)) if j not in focus]
    if not focus or not others:
        return []
    out = []
    for i, row in enumerate(rows):
        a = max(focus, key=lambda j: mean[i, j])
        b = max(others, key=lambda j: mean[i, j])
        test = mcnemar(correctness(raw, columns[a], row), correctness(raw, columns[b], row))
        detectable = 100 * minimum_detectable_difference(test.images, test.discordance, alpha, POWER)
        out.append(RowTest(row, columns[a], columns[b], float(mean[i, a] - mean[i, b]), test, detectable,
                           test.verdict(alpha)))  # fmt: skip
    return out


def budget(raw: dict[str, Any]) -> str:
    """The budget sentence of a table, from its raw results."""
    config = next(iter(raw["cells"].values()))[0]["config"]
    steps = max(1, round(1 / config["step"]))
    wall = sum(r["wall_s"] for rs in raw["cells"].values() for r in rs)
    s = raw["settings"]
    return (
        f"Budget: width {s['width']}, dropout {s['dropout']}, eta = {config['step']} (N = {steps}), Adam "
        f"{config['learning_rate']:g}, batch {config['batch_size']}, {raw['epochs']} epochs (the paper: 100), seeds "
        f"{raw['seeds']}; training wall time {wall / 60:.1f} min in total on 2 CPU cores. Dataset: digits-C "
        f"(scikit-learn's 1797 handwritten digits at 28x28 with the MNIST-C corruptions, {len(raw['labels'])} test "
        "images; see docs/REPRODUCTION.md), not MNIST-C."
    )


def markdown(raw: dict[str, Any], alpha: float = ALPHA) -> str:
    """The table's markdown, from its raw results alone."""
    rows, columns, mean, std = aggregate(raw)
    labels = [ClassifierSpec.parse(c).label for c in columns]
    seeds = len(raw["seeds"])
    lines = [
        f"# Table {raw['table']} on digits-C",
        "",
        budget(raw),
        "",
        "Every column uses the flows' f(x) = |x| (Dense-k too, with weights scaled for it), unless labelled ReLU; "
        "HyperNet-k and ODEtoODE-k share one gate-network shape (width 8, networks of t) unless labelled "
        "`gates w16`, so their parameter counts are equal and they differ only in the orthogonality constraint.",
        "",
        f"Test accuracy (%), mean +- sample standard deviation (ddof = 1) over {seeds} seed(s); the best mean of each "
        "row in bold. A best mean is not a win: see the paired tests below.",
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
    parameters = [raw["cells"][c][0]["parameters"] for c in columns]
    lines.append("| *parameters* | " + " | ".join(f"{p:,}" for p in parameters) + " |")
    best_means = {labels[j]: int((mean.argmax(axis=1) == j).sum()) for j in range(len(labels))}
    lines += ["", "Best mean per row (not a test): " + ", ".join(f"{k} {v}" for k, v in best_means.items() if v)]
    tests = paired_tests(raw, alpha)
    if tests:
        n = tests[0].test.images
        test_name = "McNemar's exact test" + ("" if seeds == 1 else f" in its sign-test form over {seeds} seeds")
        lines += [
            "",
            "## Paired test: the best ODEtoODE column against the best other column",
            "",
            f"{test_name} on the {n} test images of each row (`trainer/experiments/stats.py`): 'A / B' counts the "
            f"images on which ODEtoODE / the other model is right more often; win or loss at p <= {alpha}, else tie. "
            f"'detectable' is the smallest net share of images favouring one model, (A - B) / {n} in points, that the "
            f"test finds with {POWER:.0%} power at that row's rate of disagreement (with one seed: the accuracy "
            f"difference itself; 'inf': too few disagreements to ever decide). With {len(rows)} rows, about "
            f"{alpha * len(rows):.1f} false wins or losses are expected "
            "by chance even if no model differed (no multiplicity correction).",
            "",
            "| corruption | ODEtoODE | best other | difference (points) | A / B | p | verdict | detectable (points) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for t in tests:
            focus, other = ClassifierSpec.parse(t.focus).label, ClassifierSpec.parse(t.other).label
            lines.append(
                f"| {t.row.replace('_', ' ')} | {focus} | {other} | {t.difference:+.2f} | {t.test.a_better} / "
                f"{t.test.b_better} | {t.test.p_value:.3g} | {t.verdict} | {t.detectable:.1f} |"
            )
        counts = {v: sum(t.verdict == v for t in tests) for v in ("win", "tie", "loss")}
        lines += ["", f"ODEtoODE against the best other model: {counts['win']} wins, {counts['tie']} ties, "
                      f"{counts['loss']} losses of {len(tests)} rows."]  # fmt: skip
    lines.append("")
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


def render(raw: dict[str, Any], docs: Path) -> Path:
    """Writes ``docs/table<t>.md`` and its heat map from raw results alone; returns the markdown's path. Raises
    ``ValueError`` (naming the cells to re-run) when cells lack per-image predictions."""
    check_raw(raw)
    table = raw["table"]
    rows, columns, mean, _ = aggregate(raw)
    md = docs / f"table{table}.md"
    md.parent.mkdir(parents=True, exist_ok=True)
    md.write_text(markdown(raw) + f"\n![heat map](figures/table{table}.png)\n")
    heatmap(table, rows, columns, mean, docs / "figures" / f"table{table}.png")
    return md


def regenerate(table: int, docs: Path) -> Path:
    """Redraws table ``table``'s markdown and heat map from ``docs/results/table<t>.json``, training nothing."""
    return render(json.loads(raw_path(docs, table).read_text()), docs)


def reproduce(table: int, seeds: Sequence[int], epochs: int, runs: Path, docs: Path,
              models: Sequence[str] | None = None, progress: bool = True, *, allow_training: bool = True,
              ) -> Path:  # fmt: skip
    """Trains the missing or stale cells of ``table`` (``stale_cells``; with ``allow_training=False`` raises
    ``StaleCellsError`` listing them instead), writes the raw results (``raw_path``) and renders the table from them.
    Returns the markdown's path."""
    models = tuple(models or MODELS[table])
    stale = stale_cells(table, seeds, epochs, runs, models)
    if stale and not allow_training:
        raise StaleCellsError(table, stale, epochs, seeds)
    if stale and progress:
        print(f"training {len(stale)} cell(s) of Table {table}:\n" + "\n".join(f"  {cell}" for cell in stale))
    started = time.perf_counter()
    cells = {model: [run_cell(table, model, s, epochs, runs, progress) for s in seeds] for model in models}
    raw = raw_results(table, seeds, epochs, cells)
    path = raw_path(docs, table)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(raw, indent=1) + "\n")
    if progress:
        print(f"Table {table}: {(time.perf_counter() - started) / 60:.1f} min; raw results in {path}")
    return render(raw, docs)
