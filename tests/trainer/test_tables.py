"""Tables 1 and 2 from cached cells: sample std, paired verdicts, the raw results file, stale cells named."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.trainer.cells import write_cell
from trainer.experiments.tables import (
    StaleCellsError,
    check_raw,
    raw_path,
    regenerate,
    reproduce,
    stale_cells,
)


def test_table_from_cached_cells_states_sample_std_and_paired_verdicts(tmp_path: Path) -> None:
    runs, docs = tmp_path / "runs", tmp_path / "docs"
    # identity: ODEtoODE right on 18 / 22 more images than Dense (a win); stripe: two more images (a tie)
    correct = {
        ("dense-1", 0): {"identity": 324, "stripe": 178},
        ("dense-1", 1): {"identity": 328, "stripe": 178},
        ("odetoode-1", 0): {"identity": 342, "stripe": 180},
        ("odetoode-1", 1): {"identity": 346, "stripe": 180},
    }
    for (model, seed), rows in correct.items():
        write_cell(runs, 1, model, seed, 3, rows)
    md = reproduce(1, [0, 1], 3, runs, docs, models=["dense-1", "odetoode-1"], progress=False, allow_training=False)
    text = md.read_text()
    dense = [100 * correct[("dense-1", s)]["identity"] / 360 for s in (0, 1)]
    ode = [100 * correct[("odetoode-1", s)]["identity"] / 360 for s in (0, 1)]
    expected = (f"| identity | {np.mean(dense):.2f} +- {np.std(dense, ddof=1):.2f} | "
                f"**{np.mean(ode):.2f}** +- {np.std(ode, ddof=1):.2f} |")  # fmt: skip
    assert expected in text and "sample standard deviation (ddof = 1)" in text
    assert "| *parameters* | 1,007 | 1,010 |" in text
    assert "| identity | ODEtoODE-1 | Dense-1 | +5.00 | 22 / 0 | 4.77e-07 | win |" in text  # p = 2 / 2^22
    assert "| stripe | ODEtoODE-1 | Dense-1 | +0.56 | 2 / 0 | 0.5 | tie | inf |" in text
    assert "1 wins, 1 ties, 0 losses of 2 rows" in text and "3 epochs" in text
    assert (docs / "figures" / "table1.png").read_bytes()[:4] == b"\x89PNG"
    # the raw file alone regenerates the same table, with per-image predictions for every cell
    raw = json.loads(raw_path(docs, 1).read_text())
    assert [r["config"]["seed"] for r in raw["cells"]["odetoode-1"]] == [0, 1]
    assert len(raw["labels"]) == 360 == len(raw["cells"]["dense-1"][0]["predictions"]["identity"])
    md.unlink()
    assert regenerate(1, docs).read_text() == text


def test_stale_cells_are_named_with_their_reason_and_not_trained_when_training_is_off(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    rows = {"identity": 300}
    write_cell(runs, 1, "hypernet-1", 0, 3, rows)
    # a cell as written before this change: no per-image predictions, no model options
    write_cell(runs, 1, "hypernet-1", 1, 3, rows, predictions=None)
    cell = runs / "table1" / "hypernet-1" / "seed1" / "result.json"
    old = json.loads(cell.read_text())
    del old["model_options"]
    cell.write_text(json.dumps(old))
    write_cell(runs, 1, "dense-1", 0, 3, rows, model_options={"depth": 1, "activation": "relu"})
    write_cell(runs, 1, "dense-1", 1, 5, rows)
    stale = {(c.model, c.seed): c.reason for c in stale_cells(1, [0, 1], 3, runs, ["hypernet-1", "dense-1", "node"])}
    assert set(stale) == {("hypernet-1", 1), ("dense-1", 0), ("dense-1", 1), ("node", 0), ("node", 1)}
    assert "no per-image predictions" in stale[("hypernet-1", 1)]
    assert "before model options were recorded" in stale[("hypernet-1", 1)]
    assert "'activation': 'relu'" in stale[("dense-1", 0)] and "5 epochs, not 3" in stale[("dense-1", 1)]
    assert stale[("node", 0)] == "not trained"
    with pytest.raises(StaleCellsError, match=r"table1/hypernet-1/seed1: .*no per-image predictions") as error:
        reproduce(1, [0, 1], 3, runs, tmp_path / "docs", models=["hypernet-1", "dense-1"], allow_training=False)
    assert "python -m trainer table --table 1 --epochs 3 --seeds 0 1 --models hypernet-1 dense-1" in str(error.value)
    assert not (tmp_path / "docs").exists()  # nothing trained, nothing written


def test_a_raw_file_without_predictions_names_the_cells_to_rerun() -> None:
    record = {"config": {"seed": 2}, "accuracies": {"identity": 0.9}, "predictions": None}
    raw = {"table": 2, "labels": "0" * 360, "cells": {"hypernet-4": [record]}}
    with pytest.raises(ValueError, match=r"Table 2: no per-image predictions for 1 cell\(s\).*hypernet-4/seed2"):
        check_raw(raw)


def test_the_table_command_trains_nothing_with_no_train_and_redraws_from_the_raw_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from trainer.cli import main

    runs, docs = tmp_path / "runs", tmp_path / "docs"
    write_cell(runs, 1, "dense-1", 0, 3, {"identity": 300})
    table = ["table", "--table", "1", "--seeds", "0", "--epochs", "3", "--runs", str(runs), "--docs", str(docs)]
    with pytest.raises(SystemExit) as status:
        main([*table, "--models", "dense-1", "node", "--no-train"])
    assert status.value.code == 1
    assert "table1/node/seed0: not trained" in capsys.readouterr().err
    assert not docs.exists()
    with pytest.raises(SystemExit) as status:
        main([*table, "--models", "dense-1", "--no-train"])
    assert status.value.code == 0
    written = (docs / "table1.md").read_text()
    (docs / "table1.md").unlink()
    # --redraw reads docs/results/table1.json alone: the cached cells may be gone
    (runs / "table1" / "dense-1" / "seed0" / "result.json").unlink()
    with pytest.raises(SystemExit) as status:
        main(["table", "--table", "1", "--docs", str(docs), "--redraw"])
    assert status.value.code == 0 and (docs / "table1.md").read_text() == written
