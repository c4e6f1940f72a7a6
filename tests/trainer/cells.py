"""Cached supervised cells (``runs/.../table<t>/<model>/seed<s>/result.json``) written as ``train`` writes them."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from trainer.data.digits import digits_c
from trainer.experiments.tables import cell_config
from trainer.supervised import ClassifierSpec, encode_predictions


def write_cell(runs: Path, table: int, model: str, seed: int, epochs: int, correct: dict[str, int],
               **overrides: object) -> None:  # fmt: skip
    """A cached cell as ``train`` writes it, right on the first ``correct[row]`` test images of each row and wrong
    (the next class) on the rest."""
    labels = digits_c("identity", split="test")[1]
    predictions = {row: np.where(np.arange(labels.size) < k, labels, (labels + 1) % 10) for row, k in correct.items()}
    result = {
        "config": dataclasses.asdict(cell_config(table, model, seed, epochs)),
        "accuracies": {row: float((p == labels).mean()) for row, p in predictions.items()},
        "predictions": {row: encode_predictions(p) for row, p in predictions.items()},
        "model_options": ClassifierSpec.parse(model).options,
        "epochs": epochs,
        "wall_s": 1.0,
        "parameters": 1000 + len(model),
        "final_loss": 0.1,
        **overrides,
    }
    cell = runs / f"table{table}" / model / f"seed{seed}"
    cell.mkdir(parents=True, exist_ok=True)
    cell.joinpath("result.json").write_text(json.dumps(result))
