"""A picture of digits-C: every corruption (rows) applied to the same test digits (columns), drawn to a PNG.

python -m trainer grid --out docs/figures/digits_c.png [--examples 8] [--seed 0]
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from trainer.data.corruptions import CORRUPTIONS, corrupt_batch
from trainer.data.digits import digits_split


def example_digits(examples: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``examples`` test digits taking the labels 0, 1, 2, ... in turn (cycling), and their labels."""
    if examples < 1:
        raise ValueError(f"examples must be >= 1, got {examples}")
    images, labels = digits_split("test")
    picks: list[int] = []
    used: set[int] = set()
    for k in range(examples):
        want = k % 10
        index = next(i for i in range(labels.size) if labels[i] == want and i not in used)
        picks.append(index)
        used.add(index)
    return images[picks], labels[picks]


def render_grid(
    out: str | Path, examples: int = 8, seed: int = 0, corruptions: Sequence[str] | None = None, dpi: int = 100
) -> Path:
    """Draws each of ``corruptions`` (default: all of ``CORRUPTIONS``) applied to ``examples`` test digits, one row
    per corruption with its name on the left, and writes the PNG to ``out`` (creating its folder)."""
    names = list(CORRUPTIONS) if corruptions is None else list(corruptions)
    images, labels = example_digits(examples)
    rows = [corrupt_batch(images, name, seed) for name in names]
    cell = 0.8
    fig = Figure(figsize=(1.6 + cell * examples, 0.3 + cell * len(names)), dpi=dpi)
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(names), examples, squeeze=False)
    for r, (name, row) in enumerate(zip(names, rows, strict=True)):
        for c in range(examples):
            ax = axes[r][c]
            ax.imshow(row[c], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(str(labels[c]), fontsize=9)
        axes[r][0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=9)
    fig.subplots_adjust(left=1.5 / (1.6 + cell * examples), right=0.99, top=1 - 0.3 / (0.3 + cell * len(names)),
                        bottom=0.01, wspace=0.05, hspace=0.05)  # fmt: skip
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path
