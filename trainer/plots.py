"""Learning curves: mean +- std over seeds, one line per (environment, architecture), drawn to PNG."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display
import matplotlib.pyplot as plt
import numpy as np


def read_run(run: Path) -> tuple[dict[str, object], list[dict[str, float]]]:
    """A run directory's ``config.json`` and the records of its ``log.jsonl``."""
    config = json.loads((run / "config.json").read_text())
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if line.strip()]
    return config, records


def curve(records: Sequence[dict[str, float]], x: str, y: str) -> tuple[np.ndarray, np.ndarray]:
    points = [(r[x], r[y]) for r in records if y in r and x in r]
    if not points:
        return np.empty(0), np.empty(0)
    xs, ys = zip(*points, strict=True)
    return np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)


def plot_learning_curves(runs: Sequence[Path], out: Path, *, x: str = "env_steps", y: str = "eval_return",
                         title: str | None = None) -> Path:  # fmt: skip
    """Groups runs by (env, arch), interpolates each seed onto a shared grid, and draws mean +- std."""
    groups: Curves = defaultdict(list)
    for run in runs:
        config, records = read_run(run)
        xs, ys = curve(records, x, y)
        if xs.size:
            groups[(str(config["env"]), str(config["arch"]))].append((xs, ys))
    if not groups:
        raise ValueError(f"no {y!r} records in {[str(r) for r in runs]}")
    return plot_curves(groups, out, x=x, y=y, title=title)


Curves = dict[tuple[str, str], list[tuple[np.ndarray, np.ndarray]]]
"""``{(env, arch): [(x, y) per seed]}``."""


def plot_curves(groups: Curves, out: Path, *, x: str = "env_steps", y: str = "eval_return",
                title: str | None = None) -> Path:  # fmt: skip
    """One panel per environment, one mean +- std band per architecture over its seeds' curves, each interpolated
    onto a grid shared by the seeds (where they all have data)."""
    envs = sorted({env for env, _ in groups})
    fig, axes = plt.subplots(1, len(envs), figsize=(5.5 * len(envs), 4), squeeze=False)
    for ax, env in zip(axes[0], envs, strict=True):
        for (e, arch), seeds in sorted(groups.items()):
            if e != env:
                continue
            end = min(xs[-1] for xs, _ in seeds)
            grid = np.linspace(max(xs[0] for xs, _ in seeds), end, 200)
            values = np.stack([np.interp(grid, xs, ys) for xs, ys in seeds])
            mean, std = values.mean(axis=0), values.std(axis=0)
            label = f"{arch} ({len(seeds)} seed{'s' if len(seeds) > 1 else ''})"
            ax.plot(grid, mean, label=label)
            ax.fill_between(grid, mean - std, mean + std, alpha=0.25)
        ax.set_title(env if title is None else f"{title}: {env}")
        ax.set_xlabel(x.replace("_", " "))
        ax.set_ylabel(y.replace("_", " "))
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
