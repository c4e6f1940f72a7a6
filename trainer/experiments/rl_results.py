"""The RL comparison's raw results: one record per run -- task, architecture, seed, width, parameter counts, the
budget it used (iterations, environment steps, wall time, worker processes) and its whole evaluation curve -- in
``docs/results/rl_<protocol>.json``. The comparison's tables are generated from that file alone (``results_table``,
``budget_table``), so every number in them can be re-derived without retraining, and a test checks the report
against it.

Per task, the verdict between ISO-ODEtoODE and the best baseline (by mean final return) is Welch's t-test on the
seeds' final returns (``scipy.stats.ttest_ind(equal_var=False)``): with 3 seeds a side it separates only differences
of several standard deviations, so most rows are ties at this budget, and the table says so rather than ranking
means that noise could swap.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from trainer.experiments.rl_comparison import REFERENCE_ARCH, run_dir, task_configs
from trainer.experiments.stats import mean_and_std
from trainer.plots import Curves, curve, plot_curves, read_run

ALPHA = 0.05


def raw_path(results: Path, protocol: str) -> Path:
    return results / f"rl_{protocol}.json"


def run_record(run: Path) -> dict[str, Any]:
    """The raw record of one run directory (its ``config.json`` and ``log.jsonl``)."""
    config, records = read_run(run)
    steps, returns = curve(records, "env_steps", "eval_return")
    last = records[-1] if records else {}
    return {
        "task": config["env"],
        "arch": config["arch"],
        "seed": config["seed"],
        "hidden": config["hidden"],
        "protocol": config.get("protocol"),
        "iterations": int(last.get("iteration", 0)),  # the log counts iterations from 1
        "env_steps": int(last.get("env_steps", 0)),
        "wall_s": float(last.get("wall_s", 0.0)),
        "workers": config["workers"],
        "curve": {"env_steps": [int(s) for s in steps], "eval_return": [float(r) for r in returns]},
    }


def collect(runs: Path, tasks: Sequence[str], archs: Sequence[str], seeds: Sequence[int], protocol: str,
            widths: Mapping[str, Mapping[str, int]] | None = None) -> dict[str, Any]:  # fmt: skip
    """The raw results of every run of the comparison that has a log (a missing run is simply absent)."""
    out = []
    for task in tasks:
        counts = task_configs(task, (widths or {}).get(task))
        for arch, seed in itertools.product(archs, seeds):
            run = run_dir(runs, task, arch, seed, protocol)
            if (run / "log.jsonl").is_file():
                record = run_record(run)
                c = counts[arch]
                record.update(parameters=c["parameters"], intrinsic=c["intrinsic"])
                out.append(record)
    return {"protocol": protocol, "tasks": list(tasks), "archs": list(archs), "seeds": list(seeds), "runs": out}


def _key(record: Mapping[str, Any]) -> tuple[str, str, int]:
    return str(record["task"]), str(record["arch"]), int(record["seed"])


def merge(committed: Mapping[str, Any] | None, fresh: Mapping[str, Any]) -> dict[str, Any]:
    """``fresh``'s records with the ``committed`` ones it has no run for: run directories do not outlive a sitting,
    the committed raw results do, so a comparison grows over several sittings. A committed record of another
    protocol is an error."""
    if committed is not None and committed["protocol"] != fresh["protocol"]:
        raise ValueError(f"raw results of protocol {committed['protocol']!r} cannot take runs of {fresh['protocol']!r}")
    runs = {_key(r): r for r in (committed or {}).get("runs", [])}
    runs.update({_key(r): r for r in fresh["runs"]})
    seeds = sorted({*fresh["seeds"], *(committed or {}).get("seeds", [])})
    return {**fresh, "seeds": seeds, "runs": [runs[k] for k in sorted(runs)]}


def recorded(raw: Mapping[str, Any] | None, iterations: int, hidden: Mapping[tuple[str, str], int]
             ) -> set[tuple[str, str, int]]:  # fmt: skip
    """The (task, arch, seed) runs ``raw`` holds complete: at least ``iterations`` iterations, at the width
    ``hidden[task, arch]`` asks for. The comparison trains only the others."""
    if raw is None:
        return set()
    return {_key(r) for r in raw["runs"]
            if r["iterations"] >= iterations and hidden.get((r["task"], r["arch"])) == r["hidden"]}  # fmt: skip


def figure(raw: Mapping[str, Any], out: Path) -> Path:
    """Learning curves (evaluation return against environment steps, mean +- std over seeds) from the raw results."""
    groups: Curves = {}
    for r in raw["runs"]:
        if r["curve"]["env_steps"]:
            xy = (np.asarray(r["curve"]["env_steps"], float), np.asarray(r["curve"]["eval_return"], float))
            groups.setdefault((r["task"], r["arch"]), []).append(xy)
    return plot_curves(groups, out)


def final_returns(raw: Mapping[str, Any], task: str, arch: str) -> list[float]:
    """The last evaluation return of each of ``arch``'s runs on ``task``, in seed order."""
    runs = sorted((r for r in raw["runs"] if r["task"] == task and r["arch"] == arch), key=lambda r: r["seed"])
    return [r["curve"]["eval_return"][-1] for r in runs if r["curve"]["eval_return"]]


def welch(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided p-value of Welch's t-test between two sets of final returns (NaN with fewer than 2 in either)."""
    if len(a) < 2 or len(b) < 2:
        return math.nan
    return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def _cell(values: Sequence[float], rank: int | None) -> str:
    if not values:
        return "-"
    mean, std = mean_and_std(values)
    spread = "" if math.isnan(std) else f" +- {std:.1f}"
    return f"{mean:.1f}{spread} ({rank})"


def results_table(raw: Mapping[str, Any]) -> str:
    """Final evaluation return per task and architecture -- mean +- sample std (ddof = 1) over seeds, the rank by
    mean in brackets, the mean rank over tasks -- and per task ISO-ODEtoODE against the best baseline (Welch)."""
    tasks, archs = raw["tasks"], raw["archs"]
    finals = {(t, a): final_returns(raw, t, a) for t in tasks for a in archs}
    ranks: dict[tuple[str, str], int] = {}
    for task in tasks:
        scored = sorted((a for a in archs if finals[task, a]), key=lambda a: -float(np.mean(finals[task, a])))
        ranks.update({(task, a): i + 1 for i, a in enumerate(scored)})
    lines = ["| architecture | " + " | ".join(tasks) + " | mean rank |", "|---|" + "---|" * (len(tasks) + 1)]
    for arch in archs:
        cells = [_cell(finals[t, arch], ranks.get((t, arch))) for t in tasks]
        mine = [ranks[t, arch] for t in tasks if (t, arch) in ranks]
        mean_rank = f"{np.mean(mine):.2f}" if mine else "-"
        lines.append(f"| {arch} | " + " | ".join(cells) + f" | {mean_rank} |")
    lines += ["", f"| task | best baseline | ISO-ODEtoODE minus it | Welch p | verdict (alpha = {ALPHA}) |",
              "|---|---|---|---|---|"]  # fmt: skip
    for task in tasks:
        iso = finals[task, REFERENCE_ARCH]
        baselines = [a for a in archs if a != REFERENCE_ARCH and finals[task, a]]
        if not iso or not baselines:
            lines.append(f"| {task} | - | - | - | not run |")
            continue
        best = max(baselines, key=lambda a: float(np.mean(finals[task, a])))
        p = welch(iso, finals[task, best])
        difference = float(np.mean(iso) - np.mean(finals[task, best]))
        verdict = "tie" if math.isnan(p) or p > ALPHA else ("win" if difference > 0 else "loss")
        lines.append(f"| {task} | {best} | {difference:+.1f} | {p:.3g} | {verdict} |")
    return "\n".join(lines)


def budget_table(raw: Mapping[str, Any]) -> str:
    """Per task: how many runs, the environment steps and iterations of each (min..max), their wall time in total
    and the worker processes they used."""
    lines = ["| task | runs | env steps per run | iterations per run | wall time, all runs | worker processes |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for task in raw["tasks"]:
        runs = [r for r in raw["runs"] if r["task"] == task]
        if not runs:
            lines.append(f"| {task} | 0 | - | - | - | - |")
            continue
        steps = [r["env_steps"] for r in runs]
        its = [r["iterations"] for r in runs]
        workers = sorted({r["workers"] for r in runs})
        lines.append(f"| {task} | {len(runs)} | {min(steps):,}..{max(steps):,} | {min(its)}..{max(its)} | "
                     f"{sum(r['wall_s'] for r in runs) / 60:.1f} min | {', '.join(map(str, workers))} |")  # fmt: skip
    return "\n".join(lines)
