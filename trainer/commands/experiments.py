"""``plot``, ``table``, ``reproduce``, ``gradients`` and ``grid``: the commands that draw the paper's figures and
tables."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import tyro

from odetoode.modelfile import Arch
from trainer.commands import Flattened, UsageError
from trainer.experiments.reproduce import Claim, ReproductionBudget


@dataclass
class PlotCommand:
    """Draw learning curves (mean +- std over seeds) of ES runs to a PNG."""

    runs: tyro.conf.Positional[tuple[Path, ...]]
    """Run directories (each with log.jsonl and config.json)."""
    out: Path
    """PNG file to write."""
    x: Literal["env_steps", "wall_s", "iteration"] = "env_steps"
    """The x axis."""
    y: Literal["eval_return", "reward_mean"] = "eval_return"
    """The y axis."""

    def run(self, command: str) -> int:
        from trainer.plots import plot_learning_curves

        if not self.runs:
            raise UsageError("give at least one run directory")
        print(f"wrote {plot_learning_curves(self.runs, self.out, x=self.x, y=self.y)}")
        return 0


@dataclass
class TableCommand:
    """Reproduce Table 1 or 2 of the paper on digits-C (markdown + heat map), training the missing cells."""

    table: Literal[1, 2] = 1
    """Table 1 (width 128) or Table 2 (width 256, dropout 0.1)."""
    seeds: tuple[int, ...] = (0, 1, 2)
    """Seeds per cell."""
    epochs: int = 20
    """Epochs per cell."""
    models: tuple[str, ...] | None = None
    """A subset of the table's columns, named as supervised --model names them (default: all of them)."""
    runs: Path = Path("runs/supervised")
    """Cache of trained cells."""
    docs: Path = Path("docs")
    """Where tableN.md and figures/ go."""
    train: bool = True
    """Train the missing or out-of-date cells; with --no-train, list them and stop (exit status 1) instead."""
    redraw: bool = False
    """Only redraw tableN.md and its heat map from the raw results file, docs/results/tableN.json: no cell is
    read or trained."""

    def run(self, command: str) -> int:
        from trainer.experiments.tables import StaleCellsError, regenerate, reproduce

        if self.redraw:
            print(f"wrote {regenerate(self.table, self.docs)}")
            return 0
        try:
            path = reproduce(self.table, self.seeds, self.epochs, self.runs, self.docs, self.models,
                             allow_training=self.train)  # fmt: skip
        except StaleCellsError as exc:
            print(exc, file=sys.stderr)
            return 1
        print(f"wrote {path}")
        return 0


@dataclass
class ReproduceCommand:
    """Regenerate the figures and tables of docs/REPRODUCTION.md (trained runs are cached)."""

    claims: tyro.conf.Positional[tuple[Claim, ...]]
    """What to regenerate."""
    seeds: tuple[int, ...] = (0, 1, 2)
    """Seeds of the trained claims."""
    runs: Path = Path("runs/reproduce")
    """Cache of trained runs."""
    docs: Path = Path("docs")
    """Where results/ and figures/ go."""
    budget: Annotated[ReproductionBudget, Flattened] = field(default_factory=ReproductionBudget)

    def run(self, command: str) -> int:
        from trainer.experiments.reproduce import run

        if not self.claims:
            raise UsageError("name at least one claim (or all)")
        for path in run(self.claims, docs=self.docs, runs=self.runs, seeds=self.seeds, budget=self.budget):
            print(f"wrote {path}")
        return 0


@dataclass
class GradientsCommand:
    """Print the band of gradient-norm ratios (Lemma 4.1) each architecture reaches on random instances."""

    arch: tuple[Arch, ...] = ("iso-odetoode", "gated-odetoode", "baseode", "nanode", "hypernet")
    """Architectures to measure."""
    steps: tuple[int, ...] = (10, 100, 1000)
    """Depths N."""
    hidden: int = 16
    """Hidden size h."""
    instances: int = 5
    """Random instances per (architecture, depth)."""

    def run(self, command: str) -> int:
        from trainer.experiments.gradient_stability import band_report

        for line in band_report(self.arch, self.steps, hidden=self.hidden, instances=self.instances):
            print(line, flush=True)
        return 0


@dataclass
class GridCommand:
    """Draw every digits-C corruption (rows) on the same few test digits (columns) to a PNG."""

    out: Path = Path("docs/figures/digits_c.png")
    """PNG to write."""
    examples: int = 8
    """Test digits per row."""
    seed: int = 0
    """Corruption seed."""

    def run(self, command: str) -> int:
        from trainer.data.grid import render_grid

        print(render_grid(self.out, examples=self.examples, seed=self.seed))
        return 0
