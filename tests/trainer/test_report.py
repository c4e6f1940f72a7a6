"""docs/REPRODUCTION.md's generated tables equal what their raw results give (trainer.experiments.report)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from trainer.experiments.report import BLOCKS, REPORT, blocks_in, gradient_summary, render

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"


def test_every_generated_table_of_the_report_is_what_its_source_gives() -> None:
    text = (DOCS / REPORT).read_text()
    assert set(blocks_in(text)) == set(BLOCKS), "every block is in the report, once"
    assert render(text, DOCS) == text, "run `python -m trainer reproduce report` and commit docs/REPRODUCTION.md"


def test_a_changed_raw_result_changes_the_report(tmp_path: Path) -> None:
    """The check above can fail: a raw number moved in the results file moves the table."""
    docs = tmp_path / "docs"
    (docs / "results").mkdir(parents=True)
    shutil.copy(DOCS / REPORT, docs / REPORT)
    shutil.copy(DOCS / "results" / "gradient_bands.json", docs / "results" / "gradient_bands.json")
    shutil.copytree(ROOT / "models", tmp_path / "models")
    text = (docs / REPORT).read_text()
    assert render(text, docs) == text
    rows = json.loads((docs / "results" / "gradient_bands.json").read_text())
    iso = next(r for r in rows if r["arch"] == "iso-odetoode" and r["scale"] == "unit")
    iso["high"] = 2.5
    (docs / "results" / "gradient_bands.json").write_text(json.dumps(rows))
    changed = render(text, docs)
    assert changed != text
    assert "| ISO-ODEtoODE | " in changed and " .. 2.5 |" in changed


def test_the_gradient_summary_takes_each_architectures_extremes_over_depth(tmp_path: Path) -> None:
    """A hand-checked example: min of the lows and max of the highs over N, per scale; overflow as a word."""
    rows = []
    for arch in ("iso-odetoode", "gated-odetoode", "baseode", "nanode", "hypernet", "deepnet"):
        for scale, (lows, highs) in {"unit": ((0.95, 0.9123), (1.2, 1.4)), "init": ((1.0, 0.5), (3.0, 2.0))}.items():
            for steps, low, high in zip((10, 100), lows, highs, strict=True):
                rows.append({"scale": scale, "arch": arch, "steps": steps, "low": low, "high": high})
    rows[-1]["high"] = float("inf")  # deepnet, init, N = 100
    rows[-2]["low"] = 1.234e-142  # deepnet, init, N = 10
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "gradient_bands.json").write_text(json.dumps(rows))
    table = gradient_summary(tmp_path).splitlines()
    assert table[2] == "| ISO-ODEtoODE | 0.912 .. 1.4 | 0.5 .. 3 |"
    assert table[-1] == "| DeepNet (N layers) | 0.912 .. 1.4 | 1.23e-142 .. overflow |"


def test_an_unknown_or_unclosed_block_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown generated block 'nonsense'"):
        render("<!-- generated: nonsense (python -m trainer reproduce report) -->\n", DOCS)
    with pytest.raises(ValueError, match="no '<!-- /generated: protocols -->'"):
        render("<!-- generated: protocols (python -m trainer reproduce report) -->\n| old |\n", DOCS)


def test_the_supervised_verdicts_are_the_paired_tests_of_the_raw_results(tmp_path: Path) -> None:
    from tests.trainer.cells import write_cell
    from trainer.experiments.report import supervised_verdicts
    from trainer.experiments.tables import reproduce

    runs, docs = tmp_path / "runs", tmp_path / "docs"
    # identity: ODEtoODE right on 18 / 22 more images than Dense (a win); stripe: two more (a tie)
    for (model, seed), rows in {
        ("dense-1", 0): {"identity": 324, "stripe": 178},
        ("dense-1", 1): {"identity": 328, "stripe": 178},
        ("odetoode-1", 0): {"identity": 342, "stripe": 180},
        ("odetoode-1", 1): {"identity": 346, "stripe": 180},
    }.items():
        write_cell(runs, 1, model, seed, 3, rows)
    reproduce(1, [0, 1], 3, runs, docs, models=["dense-1", "odetoode-1"], progress=False, allow_training=False)
    lines = supervised_verdicts(docs).splitlines()
    assert (
        lines[2]
        == "| [Table 1](table1.md) | 2 columns, 3 epochs x 2 seeds | 1 wins, 1 ties, 0 losses of 2 rows | 2 of 2 |"
    )
    assert "no raw results yet" in lines[3]


@pytest.mark.parametrize("table", [1, 2])
def test_a_committed_table_is_what_its_raw_results_give(table: int) -> None:
    from trainer.experiments.tables import markdown, raw_path

    path = raw_path(DOCS, table)
    if not path.is_file():
        pytest.skip(f"Table {table} has no raw results yet (docs/REPRODUCTION.md says so)")
    raw = json.loads(path.read_text())
    expected = markdown(raw) + f"\n![heat map](figures/table{table}.png)\n"
    assert (DOCS / f"table{table}.md").read_text() == expected, f"python -m trainer table --table {table} --redraw"
