"""docs/REPRODUCTION.md's generated blocks: the report's tables are written from the raw results files (and the
code's own settings) between markers, never typed, and ``tests/trainer/test_report.py`` fails when a block differs
from what its source gives.

    python -m trainer reproduce report        # rewrites every block of docs/REPRODUCTION.md in place

A block reads::

    <!-- generated: NAME (python -m trainer reproduce report) -->
    ...
    <!-- /generated: NAME -->

and ``BLOCKS[NAME]`` makes its text from the docs folder. Prose around a block may quote its numbers; a table that
has no raw results file yet is not a block (the report says so where it stands).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from pathlib import Path

REPORT = "REPRODUCTION.md"
BEGIN = "<!-- generated: {name} (python -m trainer reproduce report) -->"
END = "<!-- /generated: {name} -->"

GRADIENT_LABELS = {
    "iso-odetoode": "ISO-ODEtoODE",
    "gated-odetoode": "gated-ODEtoODE",
    "baseode": "BaseODE",
    "nanode": "NANODE (degree 5)",
    "hypernet": "HyperNet",
    "deepnet": "DeepNet (N layers)",
}
BUNDLED = ("swimmer", "halfcheetah", "hopper")
"""The bundled policies whose 50-seed evaluations the report quotes (``models/<name>/1/evaluation.json``)."""


def _number(x: float) -> str:
    """Three significant digits; float64 overflow as a word (a ratio past ~1.8e308 is not a number anyone reads)."""
    if math.isinf(x):
        return "overflow"
    return f"{x:.3g}".replace("e+", "e").replace("e-0", "e-").replace("e0", "e")


def gradient_summary(docs: Path) -> str:
    """Per architecture, the lowest and highest ratio over every depth, for each weight scale
    (``results/gradient_bands.json``, written by ``reproduce gradients``)."""
    rows = json.loads((docs / "results" / "gradient_bands.json").read_text())
    lines = ["| architecture | min..max ratio, N(0, 1) weights | min..max ratio, N(0, 1/h) weights |", "|---|---|---|"]
    for arch, label in GRADIENT_LABELS.items():
        cells = []
        for scale in ("unit", "init"):
            mine = [r for r in rows if r["arch"] == arch and r["scale"] == scale]
            if not mine:
                raise ValueError(f"results/gradient_bands.json has no rows for {arch} at scale {scale}")
            cells.append(f"{_number(min(r['low'] for r in mine))} .. {_number(max(r['high'] for r in mine))}")
        lines.append(f"| {label} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


def bundled_policies(root: Path) -> str:
    """The bundled policies' evaluations on their 50 unseen seeds, from each ``evaluation.json``."""
    lines = ["| policy | environment | episodes (seeds) | mean | sample std | min | 5th percentile | max |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for name in BUNDLED:
        e = json.loads((root / "models" / name / "1" / "evaluation.json").read_text())
        s, seeds = e["summary"], e["seeds"]
        lines.append(f"| `{name}` | {e['env_id']} | {e['episodes']} ({seeds[0]}..{seeds[-1]}) | {s['mean']:.1f} | "
                     f"{s['std']:.1f} | {s['min']:.1f} | {s['p5']:.1f} | {s['max']:.1f} |")  # fmt: skip
    return "\n".join(lines)


def supervised_verdicts(docs: Path) -> str:
    """Tables 1 and 2 in one line each, from their raw results (``results/table<t>.json``): the paired tests'
    verdicts for the best ODEtoODE column against the best other one, and how many rows an ODEtoODE column has the
    best mean of. A table not re-run since its raw results file existed says so."""
    from trainer.experiments.tables import ALPHA, FOCUS_ARCH, aggregate, paired_tests, raw_path
    from trainer.supervised import ClassifierSpec

    lines = [f"| table | budget | ODEtoODE vs the best other column, paired test (alpha = {ALPHA}) | rows where an "
             "ODEtoODE column has the best mean |", "|---|---|---|---|"]  # fmt: skip
    for table in (1, 2):
        path = raw_path(docs, table)
        if not path.is_file():
            lines.append(f"| [Table {table}](table{table}.md) | no raw results yet: the committed table predates the "
                         "fixes above and must be re-run | - | - |")  # fmt: skip
            continue
        raw = json.loads(path.read_text())
        rows, columns, mean, _ = aggregate(raw)
        tests = paired_tests(raw)
        counts = {v: sum(t.verdict == v for t in tests) for v in ("win", "tie", "loss")}
        focus = {j for j, c in enumerate(columns) if ClassifierSpec.parse(c).arch == FOCUS_ARCH}
        best = sum(int(mean[i].argmax()) in focus for i in range(len(rows)))
        lines.append(f"| [Table {table}](table{table}.md) | {len(columns)} columns, {raw['epochs']} epochs x "
                     f"{len(raw['seeds'])} seeds | {counts['win']} wins, {counts['tie']} ties, {counts['loss']} "
                     f"losses of {len(tests)} rows | {best} of {len(rows)} |")  # fmt: skip
    return "\n".join(lines)


def _protocols(docs: Path) -> str:
    from trainer.protocols import protocol_table

    return protocol_table()


BLOCKS: dict[str, Callable[[Path], str]] = {
    "protocols": _protocols,
    "gradient-bands": gradient_summary,
    "bundled-policies": lambda docs: bundled_policies(docs.parent),
    "supervised-verdicts": supervised_verdicts,
}


def blocks_in(text: str) -> list[str]:
    """The names of the generated blocks in ``text``, in order."""
    return re.findall(r"<!-- generated: ([\w-]+) ", text)


def render(text: str, docs: Path) -> str:
    """``text`` with every generated block rewritten from its source; an unknown or unclosed block is an error."""
    for name in blocks_in(text):
        if name not in BLOCKS:
            raise ValueError(f"{REPORT}: unknown generated block {name!r}; known: {sorted(BLOCKS)}")
        begin, end = BEGIN.format(name=name), END.format(name=name)
        start = text.index(begin) + len(begin)
        try:
            stop = text.index(end, start)
        except ValueError:
            raise ValueError(f"{REPORT}: block {name!r} has no {end!r}") from None
        text = text[:start] + "\n" + BLOCKS[name](docs) + "\n" + text[stop:]
    return text


def regenerate(docs: Path) -> Path:
    """Rewrites docs/REPRODUCTION.md's generated blocks in place; returns its path."""
    path = docs / REPORT
    path.write_text(render(path.read_text(), docs))
    return path
