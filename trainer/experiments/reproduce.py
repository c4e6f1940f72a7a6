"""``python -m trainer reproduce <claim>``: regenerate every figure and table of docs/REPRODUCTION.md.

Claims: ``gradients`` (Lemma 4.1 over depth), ``deep`` (training very deep classifiers), ``rl`` (Fig. 2 analog),
``table1`` / ``table2`` (supervised robustness), ``all``. Trained results are cached under ``--runs`` (every cell is
resumable), so re-running only redraws; delete a cell to retrain it. Outputs go to ``docs/results`` (markdown and
JSON) and ``docs/figures`` (PNG).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import numpy as np

Claim = Literal["gradients", "deep", "rl", "table1", "table2", "all"]
CLAIMS: tuple[str, ...] = get_args(Claim)[:-1]
"""Every claim; ``all`` stands for them all, in this order."""


@dataclass(frozen=True)
class ReproductionBudget:
    """How much each claim trains or samples; the defaults are the budgets behind the committed figures and tables
    (docs/REPRODUCTION.md states each one)."""

    instances: int = 3
    """Random instances per gradient-band cell (``gradients``)."""
    deep_epochs: int = 25
    """Epochs of each depth-200 classifier (``deep``)."""
    rl_iterations: int = 30
    """ES iterations of each run of the RL comparison (``rl``)."""
    table1_epochs: int = 20
    """Epochs of each cell of Table 1 (``table1``)."""
    table2_epochs: int = 10
    """Epochs of each cell of Table 2 (``table2``)."""


def gradients(docs: Path, instances: int = 3) -> list[Path]:
    from trainer.experiments.gradient_stability import LOWER, UPPER, band_table, plot_bands

    started = time.perf_counter()
    rows = band_table(instances=instances)
    results = docs / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / "gradient_bands.json").write_text(json.dumps(rows, indent=1, default=float) + "\n")
    figure = plot_bands(rows, docs / "figures" / "gradient_stability.png")
    lines = [
        f"Band [1/e, e] = [{LOWER:.4f}, {UPPER:.4f}]; {instances} random instances per cell, h = 16, float64; "
        f"computed in {time.perf_counter() - started:.0f} s.",
        "",
        "| weights | arch | N | min ratio | max ratio | in band |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        low, high = float(r["low"]), float(r["high"])  # type: ignore[arg-type]
        lines.append(f"| {r['scale']} | {r['arch']} | {r['steps']} | {low:.3g} | {high:.3g} | "
                     f"{'yes' if r['inside'] else '**no**'} |")  # fmt: skip
    table = results / "gradient_bands.md"
    table.write_text("\n".join(lines) + "\n")
    return [figure, table]


def deep(docs: Path, runs: Path, epochs: int) -> list[Path]:
    from trainer.experiments.deep_training import reproduce_deep_training

    return [reproduce_deep_training(runs, docs / "figures" / "deep_training.png", epochs=epochs)]


def rl(docs: Path, runs: Path, seeds: Sequence[int], iterations: int) -> list[Path]:
    import dataclasses

    from trainer.experiments.rl_comparison import ARCHS, TASKS, Budget, figure, parameter_table, train_all

    budget = dataclasses.replace(Budget(), iterations=iterations)
    train_all(runs, seeds, budget)
    results = docs / "results"
    results.mkdir(parents=True, exist_ok=True)
    fig = figure(runs, seeds, docs / "figures" / "rl_comparison.png")
    lines = [
        f"Budget per run (every architecture and task): {budget.directions} antithetic pairs, ARS top-{budget.top_b}, "
        f"sigma {budget.sigma}, step {budget.step_size}, {budget.iterations} iterations, episodes capped at "
        f"{budget.max_episode_steps} steps, {budget.eval_episodes} evaluation episodes every {budget.eval_every} "
        f"iterations; seeds {list(seeds)}.",
        "",
        "Parameter counts (width h / parameters), matched to ISO-ODEtoODE as in the paper:",
        "",
        parameter_table(),
        "",
        "Final evaluation return (mean +- std over seeds; the last evaluation of each run) and, in brackets, the "
        "architecture's rank on that task by mean (1 = best); the last column is the mean rank over tasks, the "
        "paper's notion of consistency:",
        "",
        "| architecture | " + " | ".join(TASKS) + " | mean rank |",
        "|---|" + "---|" * (len(TASKS) + 1),
    ]
    finals = {(task, arch): final_returns(runs, task, arch, seeds) for task in TASKS for arch in ARCHS}
    ranks: dict[tuple[str, str], int] = {}
    for task in TASKS:
        scored = sorted((a for a in ARCHS if finals[task, a]), key=lambda a: -float(np.mean(finals[task, a])))
        ranks.update({(task, a): i + 1 for i, a in enumerate(scored)})
    for arch in ARCHS:
        cells = [
            f"{np.mean(f):.1f} +- {np.std(f):.1f} ({ranks[task, arch]})" if (f := finals[task, arch]) else "-"
            for task in TASKS
        ]
        mine = [ranks[task, arch] for task in TASKS if (task, arch) in ranks]
        mean_rank = f"{np.mean(mine):.2f}" if mine else "-"
        lines.append(f"| {arch} | " + " | ".join(cells) + f" | {mean_rank} |")
    table = results / "rl_comparison.md"
    table.write_text("\n".join(lines) + "\n")
    return [fig, table]


def final_returns(runs: Path, task: str, arch: str, seeds: Sequence[int]) -> list[float]:
    """The last evaluation return of each seed's run that has one."""
    from trainer.experiments.rl_comparison import run_dir
    from trainer.plots import curve, read_run

    finals = []
    for seed in seeds:
        run = run_dir(runs, task, arch, seed)
        if (run / "log.jsonl").is_file():
            _, returns = curve(read_run(run)[1], "env_steps", "eval_return")
            if returns.size:
                finals.append(float(returns[-1]))
    return finals


def table(docs: Path, runs: Path, which: int, seeds: Sequence[int], epochs: int) -> list[Path]:
    from trainer.experiments.tables import reproduce

    return [reproduce(which, seeds, epochs, runs / "supervised", docs)]


def run(claims: Sequence[str], *, docs: Path, runs: Path, seeds: Sequence[int],
        budget: ReproductionBudget = ReproductionBudget()) -> list[Path]:  # fmt: skip
    """Regenerates each claim's figures and tables (``all``: every claim); returns the files written."""
    wanted = CLAIMS if "all" in claims else claims
    out: list[Path] = []
    for claim in wanted:
        if claim == "gradients":
            out += gradients(docs, budget.instances)
        elif claim == "deep":
            out += deep(docs, runs, budget.deep_epochs)
        elif claim == "rl":
            out += rl(docs, runs, seeds, budget.rl_iterations)
        elif claim == "table1":
            out += table(docs, runs, 1, seeds, budget.table1_epochs)
        elif claim == "table2":
            out += table(docs, runs, 2, seeds, budget.table2_epochs)
        else:
            raise ValueError(f"unknown claim {claim!r}; expected one of {CLAIMS} or all")
    return out
