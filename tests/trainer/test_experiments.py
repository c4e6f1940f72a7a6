"""The reproduction machinery on tiny budgets: gradient bands, parameter matching, RL comparison runs, figures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from odetoode.modelfile import Arch
from trainer.experiments.gradient_stability import LOWER, UPPER, band_table, plot_bands
from trainer.experiments.reproduce import final_returns
from trainer.experiments.rl_comparison import (
    Budget,
    CachedRunMismatchError,
    figure,
    matched_hidden,
    parameters,
    run_dir,
    train_all,
)


def test_gradient_bands_separate_odetoode_from_unconstrained_flows(tmp_path: Path) -> None:
    rows = band_table(("iso-odetoode", "baseode", "deepnet"), (10, 100), instances=1, scales=("unit", "init"))
    inside = {(r["scale"], r["arch"], r["steps"]): r["inside"] for r in rows}
    assert all(inside[(s, "iso-odetoode", n)] for s in ("unit", "init") for n in (10, 100))
    assert not inside[("unit", "baseode", 100)]
    assert not inside[("init", "deepnet", 100)]  # a 100-layer plain net's gradients vanish at init scale
    assert all(r["low"] >= LOWER and r["high"] <= UPPER for r in rows if r["arch"] == "iso-odetoode")  # type: ignore[operator]
    out = plot_bands(rows, tmp_path / "bands.png")
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_baselines_are_matched_to_not_fewer_parameters() -> None:
    target = parameters("iso-odetoode", 17, 6, 16, steps=25)
    for arch in ("deepnet", "deepresnet", "baseode", "nanode"):
        h = matched_hidden(arch, 17, 6, target, steps=25)
        assert parameters(arch, 17, 6, h, steps=25) >= target > parameters(arch, 17, 6, h - 1, steps=25)
    assert matched_hidden("hypernet", 17, 6, target) == 16  # the paper's fixed width for HyperNet


def test_rl_comparison_runs_are_cached_and_drawn(tmp_path: Path) -> None:
    budget = Budget(iterations=1, eval_every=1, eval_episodes=1, workers=1,
                    settings={"directions": 2, "top_b": 2, "max_episode_steps": 10})  # fmt: skip
    tasks = ("Pendulum-v1",)
    archs: tuple[Arch, ...] = ("iso-odetoode", "deepnet")
    train_all(tmp_path, [0], budget, tasks=tasks, archs=archs)
    log = run_dir(tmp_path, "Pendulum-v1", "deepnet", 0, "tuned") / "log.jsonl"
    first = log.read_text()
    train_all(tmp_path, [0], budget, tasks=tasks, archs=archs)  # cached: nothing retrained
    assert log.read_text() == first
    config = json.loads((log.parent / "config.json").read_text())
    assert config["protocol"] == "tuned" and config["sigma"] == 0.05
    assert config["protocol_deviations"]["directions"] == {"protocol": 20, "run": 2}
    png = figure(tmp_path, [0], tmp_path / "rl.png", tasks=tasks)
    assert png.stat().st_size > 1000
    # a cached run of other settings is refused, not continued under the new ones
    other = Budget(iterations=1, eval_every=1, eval_episodes=1, workers=1,
                   settings={"directions": 2, "top_b": 1, "max_episode_steps": 10})  # fmt: skip
    with pytest.raises(CachedRunMismatchError, match="holds a run with other top_b than asked for"):
        train_all(tmp_path, [0], other, tasks=tasks, archs=archs)


def test_final_return_is_the_last_evaluation_not_the_best_so_far(tmp_path: Path) -> None:
    run = run_dir(tmp_path, "Pendulum-v1", "deepnet", 0)
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"env": "Pendulum-v1", "arch": "deepnet"}))
    records = [{"env_steps": 10, "eval_return": -5.0, "best_eval_return": -5.0},
               {"env_steps": 20, "eval_return": -9.0, "best_eval_return": -5.0},
               {"env_steps": 30, "best_eval_return": -5.0}]  # fmt: skip
    (run / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert final_returns(tmp_path, "Pendulum-v1", "deepnet", [0, 1]) == [-9.0]


@pytest.mark.parametrize("label", ["odetoode-1", "dense-3", "node", "dense-2-relu", "hypernet-2-wide"])
def test_table_columns_build(label: str) -> None:
    from trainer.supervised import SupervisedConfig, build_classifier

    classifier = build_classifier(SupervisedConfig(model=label, width=8, step=0.25))
    assert sum(p.numel() for p in classifier.parameters()) > 0
