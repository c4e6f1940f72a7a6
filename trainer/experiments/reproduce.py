"""``python -m trainer reproduce <claim>``: regenerate every figure and table of docs/REPRODUCTION.md.

Claims: ``gradients`` (Lemma 4.1 over depth), ``deep`` (training very deep classifiers), ``rl`` (Fig. 2 analog),
``table1`` / ``table2`` (supervised robustness), ``report`` (docs/REPRODUCTION.md's generated tables, from the raw
results: ``trainer.experiments.report``; trains nothing), ``all``. Trained results are cached under ``--runs`` (every
cell is resumable), so re-running only redraws; delete a cell to retrain it. Outputs go to ``docs/results``
(markdown and JSON) and ``docs/figures`` (PNG).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

from trainer.protocols import ProtocolName

Claim = Literal["gradients", "deep", "rl", "table1", "table2", "report", "all"]
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
    rl_protocol: ProtocolName = "tuned"
    """The named ES protocol of every run of the RL comparison (``rl``; trainer/protocols.py)."""
    rl_sweep_iterations: int = 10
    """ES iterations of each width-sweep run that sizes the baselines (``rl``; 0: no sweep, each baseline at the
    smallest width reaching ISO-ODEtoODE's parameter count)."""
    rl_tasks: tuple[str, ...] = ()
    """The tasks of the RL comparison to sweep and train in this sitting (``rl``; default: all); runs recorded in
    the committed raw results are not trained again, so a comparison can grow over several sittings."""
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


def rl(docs: Path, runs: Path, seeds: Sequence[int], iterations: int, protocol: ProtocolName = "tuned",
       sweep_iterations: int = 10, tasks: Sequence[str] = ()) -> list[Path]:  # fmt: skip
    """The RL comparison under ``protocol``: the width sweep (unless ``sweep_iterations`` is 0), every run not in the
    committed raw results yet, the raw results ``results/rl_<protocol>.json`` (merged with the committed ones), the
    figure ``figures/rl_comparison_<protocol>.png`` and the table ``results/rl_comparison_<protocol>.md``, both from
    the raw results. ``tasks`` (default: all) limits what is swept and trained in this sitting; the table covers
    every task the raw results hold."""
    from trainer.experiments.rl_comparison import ARCHS, TASKS, Budget, parameter_table, task_configs, train_all
    from trainer.experiments.rl_results import budget_table, collect, figure, merge, recorded, results_table
    from trainer.experiments.rl_results import raw_path as rl_raw_path
    from trainer.experiments.rl_sweep import (
        FINAL_FRACTION,
        SELECTION_RULE,
        SWEEP_FACTORS,
        SWEEP_SEED,
        committed_record,
        selected_widths,
        sweep,
        sweep_budget,
    )
    from trainer.protocols import PROTOCOLS, protocol_table

    budget = Budget(protocol=protocol, iterations=iterations)
    results = docs / "results"
    now = tuple(tasks) or TASKS
    unknown = set(now) - set(TASKS)
    if unknown:
        raise ValueError(f"unknown task(s) {sorted(unknown)}; the comparison's tasks are {list(TASKS)}")
    written: list[Path] = []
    widths: dict[str, Mapping[str, int]] | None = None
    if sweep_iterations > 0:
        short = sweep_budget(budget, sweep_iterations)
        swept, written = sweep(now, runs, results, short)
        widths = dict(swept)
        for task in set(TASKS) - set(now):  # swept in another sitting, if at all
            if (record := committed_record(task, results, short)) is not None:
                widths[task] = selected_widths(record)
        sizing = (f"each baseline at the width its sweep selected (candidates reaching {list(SWEEP_FACTORS)} x "
                  f"ISO-ODEtoODE's parameter count, one {sweep_iterations}-iteration run each on seed {SWEEP_SEED}, "
                  f"rule {SELECTION_RULE!r}: mean evaluation return over the final {FINAL_FRACTION:.0%} of the "
                  f"curve; records in results/rl_sweep/{protocol}/)")  # fmt: skip
    else:
        sizing = "each baseline at the smallest width reaching ISO-ODEtoODE's parameter count (no sweep)"
    raw_file = rl_raw_path(results, protocol)
    committed = json.loads(raw_file.read_text()) if raw_file.is_file() else None
    hidden = {(t, a): c["hidden"] for t in now for a, c in task_configs(t, (widths or {}).get(t)).items()}
    train_all(runs, seeds, budget, tasks=now, widths=widths, skip=recorded(committed, iterations, hidden))
    raw = merge(committed, collect(runs, TASKS, ARCHS, seeds, protocol, widths))
    results.mkdir(parents=True, exist_ok=True)
    raw_file.write_text(json.dumps(raw, indent=1) + "\n")
    fig = figure(raw, docs / "figures" / f"rl_comparison_{protocol}.png")
    lines = [
        f"Protocol `{protocol}` ({PROTOCOLS[protocol].summary}), the same for every architecture and task:",
        "",
        protocol_table((PROTOCOLS[protocol],)),
        "",
        f"Budget per run: {budget.iterations} iterations, {budget.eval_episodes} evaluation episodes every "
        f"{budget.eval_every} iterations; seeds {raw['seeds']}.",
        "",
        f"Parameter counts (width h / ambient parameters / intrinsic dimension): ISO-ODEtoODE at the paper's width, "
        f"{sizing}:",
        "",
        parameter_table(TASKS, widths),
        "",
        "Final evaluation return (mean +- sample std over seeds; the last evaluation of each run) and, in brackets, "
        "the architecture's rank on that task by mean (1 = best); the last column is the mean rank over tasks, the "
        "paper's notion of consistency. Below it, per task, ISO-ODEtoODE against the best baseline by Welch's t-test "
        f"on the seeds' final returns. Raw results (every run's curve and budget): {raw_file.name}.",
        "",
        results_table(raw),
        "",
        "Budget (environment steps include the evaluation episodes):",
        "",
        budget_table(raw),
    ]
    table = results / f"rl_comparison_{protocol}.md"
    table.write_text("\n".join(lines) + "\n")
    return [*written, raw_file, fig, table]


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
            out += rl(docs, runs, seeds, budget.rl_iterations, budget.rl_protocol, budget.rl_sweep_iterations,
                      budget.rl_tasks)  # fmt: skip
        elif claim == "table1":
            out += table(docs, runs, 1, seeds, budget.table1_epochs)
        elif claim == "table2":
            out += table(docs, runs, 2, seeds, budget.table2_epochs)
        elif claim == "report":
            from trainer.experiments.report import regenerate

            out.append(regenerate(docs))
        else:
            raise ValueError(f"unknown claim {claim!r}; expected one of {CLAIMS} or all")
    return out
