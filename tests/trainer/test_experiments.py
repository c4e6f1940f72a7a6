"""The reproduction machinery on tiny budgets: gradient bands, parameter matching, RL comparison runs, figures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from odetoode.modelfile import Arch
from trainer.experiments.gradient_stability import LOWER, UPPER, band_table, plot_bands
from trainer.experiments.rl_comparison import (
    Budget,
    CachedRunMismatchError,
    matched_hidden,
    parameters,
    run_dir,
    train_all,
)
from trainer.experiments.rl_results import budget_table, collect, figure, final_returns, merge, results_table, welch


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
    raw = collect(tmp_path, tasks, archs, [0], "tuned")  # the raw results file's records of these runs
    assert sorted(r["arch"] for r in raw["runs"]) == sorted(archs)
    assert all(r["iterations"] == 1 and r["env_steps"] > 0 and r["protocol"] == "tuned" for r in raw["runs"])
    png = figure(raw, tmp_path / "rl.png")  # drawn from the raw results, not the run directories
    assert png.read_bytes()[:4] == b"\x89PNG" and png.stat().st_size > 1000
    # a cached run of other settings is refused, not continued under the new ones
    other = Budget(iterations=1, eval_every=1, eval_episodes=1, workers=1,
                   settings={"directions": 2, "top_b": 1, "max_episode_steps": 10})  # fmt: skip
    with pytest.raises(CachedRunMismatchError, match="holds a run with other top_b than asked for"):
        train_all(tmp_path, [0], other, tasks=tasks, archs=archs)


def test_final_return_is_the_last_evaluation_not_the_best_so_far(tmp_path: Path) -> None:
    run = run_dir(tmp_path, "Pendulum-v1", "deepnet", 0)
    run.mkdir(parents=True)
    config = {"env": "Pendulum-v1", "arch": "deepnet", "seed": 0, "hidden": 6, "workers": 2, "protocol": "tuned"}
    (run / "config.json").write_text(json.dumps(config))
    records = [{"iteration": 1, "env_steps": 10, "wall_s": 1.0, "eval_return": -5.0, "best_eval_return": -5.0},
               {"iteration": 2, "env_steps": 20, "wall_s": 2.0, "eval_return": -9.0, "best_eval_return": -5.0},
               {"iteration": 3, "env_steps": 30, "wall_s": 3.5, "best_eval_return": -5.0}]  # fmt: skip
    (run / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    raw = collect(tmp_path, ["Pendulum-v1"], ["deepnet"], [0, 1], "tuned")
    assert final_returns(raw, "Pendulum-v1", "deepnet") == [-9.0]  # seed 1 has no run: absent, not zero
    (record,) = raw["runs"]
    assert (record["iterations"], record["env_steps"], record["wall_s"]) == (3, 30, 3.5)
    assert record["curve"] == {"env_steps": [10, 20], "eval_return": [-5.0, -9.0]}
    assert record["parameters"] == parameters("deepnet", 3, 1, 6, steps=25)


def _raw(finals: dict[str, list[float]]) -> dict[str, object]:
    runs = [{"task": "T", "arch": arch, "seed": seed, "iterations": 10, "env_steps": 1000 * (seed + 1),
             "wall_s": 60.0, "workers": 2, "curve": {"env_steps": [1], "eval_return": [value]}}
            for arch, values in finals.items() for seed, value in enumerate(values)]  # fmt: skip
    return {"tasks": ["T"], "archs": list(finals), "seeds": [0, 1, 2], "runs": runs}


def test_the_rl_table_states_sample_std_ranks_and_welchs_test_against_a_closed_form() -> None:
    from scipy.stats import t as student

    iso, base, other = [10.0, 12.0, 14.0], [1.0, 2.0, 3.0], [0.0, 0.5, 1.0]
    table = results_table(_raw({"iso-odetoode": iso, "deepnet": base, "nanode": other}))
    assert "| iso-odetoode | 12.0 +- 2.0 (1) | 1.00 |" in table  # ddof = 1: sqrt(((-2)^2 + 0 + 2^2) / 2) = 2
    assert "| deepnet | 2.0 +- 1.0 (2) | 2.00 |" in table
    # Welch by hand: t = (12 - 2) / sqrt(4/3 + 1/3), Welch-Satterthwaite df, two-sided
    va, vb = 4.0 / 3, 1.0 / 3
    t_stat = 10.0 / (va + vb) ** 0.5
    df = (va + vb) ** 2 / (va**2 / 2 + vb**2 / 2)
    p = 2 * student.sf(t_stat, df)
    assert welch(iso, base) == pytest.approx(p, rel=1e-9)
    assert f"| T | deepnet | +10.0 | {p:.3g} | win |" in table
    close = results_table(_raw({"iso-odetoode": [1.0, 2.0, 3.0], "deepnet": [1.5, 2.5, 3.5]}))
    assert "| T | deepnet | -0.5 |" in close and close.endswith("| tie |")
    assert "| T | 6 | 1,000..3,000 | 10..10 | 6.0 min | 2 |" in budget_table(
        _raw({"iso-odetoode": iso, "deepnet": base})
    )


@pytest.mark.parametrize("label", ["odetoode-1", "dense-3", "node", "dense-2-relu", "hypernet-2-wide"])
def test_table_columns_build(label: str) -> None:
    from trainer.supervised import SupervisedConfig, build_classifier

    classifier = build_classifier(SupervisedConfig(model=label, width=8, step=0.25))
    assert sum(p.numel() for p in classifier.parameters()) > 0


def test_the_rl_comparison_grows_over_sittings_from_its_committed_raw_results(tmp_path: Path) -> None:
    """A sitting's runs are gone by the next one; its raw results are committed. The next sitting trains only what
    they do not hold, and its table still shows every recorded run."""
    from trainer.experiments.reproduce import rl

    docs = tmp_path / "docs"
    rl(docs, tmp_path / "runs-1", [0], 2, "tuned", sweep_iterations=0, tasks=("Swimmer-v5",))
    raw_file = docs / "results" / "rl_tuned.json"
    first = json.loads(raw_file.read_text())
    assert {(r["task"], r["seed"]) for r in first["runs"]} == {("Swimmer-v5", 0)} and len(first["runs"]) == 6
    assert all(r["iterations"] == 2 and len(r["curve"]["eval_return"]) == 1 for r in first["runs"])
    table = (docs / "results" / "rl_comparison_tuned.md").read_text()
    iso = final_returns(first, "Swimmer-v5", "iso-odetoode")[0]
    assert f"| iso-odetoode | {iso:.1f} (" in table and "| Swimmer-v5 | 6 | " in table
    rl(docs, tmp_path / "runs-2", [0], 2, "tuned", sweep_iterations=0, tasks=("Swimmer-v5",))
    assert not (tmp_path / "runs-2").exists()  # every run was recorded: nothing trained
    assert json.loads(raw_file.read_text()) == first
    with pytest.raises(ValueError, match="protocol 'tuned' cannot take runs of 'paper'"):
        merge(first, {**first, "protocol": "paper"})
