"""Named ES protocols reach the optimizer as recorded; the paper's Monte Carlo estimator against hand computations;
the baselines' width sweep picks by its stated rule; intrinsic parameter counts against closed forms and the
numerically computed tangent-space dimension."""

from __future__ import annotations

import dataclasses
import json
import math
import shlex
import signal
import statistics
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import trainer.es_training as es_training
from tests.trainer.recording import RecordingBackend
from trainer.cli import main, parse
from trainer.commands.training import ESCommand
from trainer.es import (
    Shaped,
    antithetic_differences,
    ascend,
    estimate_gradient,
    sample_directions,
    shape_fitness,
)
from trainer.es_training import ESConfig, ESRun
from trainer.evaluate import EVALUATION_SEED_BASE
from trainer.experiments.rl_comparison import Budget, parameter_table, parameters
from trainer.experiments.rl_sweep import (
    Candidate,
    candidate_widths,
    committed_record,
    curve_score,
    select_width,
    selected_widths,
    sweep,
    sweep_task,
    write_record,
)
from trainer.manifolds import Euclidean, Stiefel, Symmetric
from trainer.models import build_model
from trainer.models.counting import intrinsic_parameters, manifold_dimension
from trainer.protocols import (
    PAPER,
    PROTOCOLS,
    ROWS,
    TUNED,
    UnknownProtocolError,
    apply,
    deviations,
    get_protocol,
    protocol_table,
)

# -- the protocols -----------------------------------------------------------------------------------------------------


def test_paper_protocol_is_sec_5_1() -> None:
    """sigma 0.1, step 0.01, k = 200 perturbations (100 antithetic pairs), the Monte Carlo estimator (on standardized
    returns: the paper does not say how F is scaled), the task's episode limit."""
    assert (PAPER.sigma, PAPER.step_size, 2 * PAPER.directions) == (0.1, 0.01, 200)
    assert (PAPER.shaping, PAPER.top_b, PAPER.step_decay, PAPER.max_episode_steps) == (
        "standardized",
        None,
        "constant",
        None,
    )
    # the choices where the paper is silent (protocols.PAPER's docstring says why)
    assert (PAPER.normalize, PAPER.survival_bonus, PAPER.common_random_numbers) == (True, 0.0, False)


def test_tuned_protocol_is_the_earlier_comparison() -> None:
    assert (TUNED.directions, TUNED.top_b, TUNED.sigma, TUNED.step_size) == (20, 10, 0.05, 0.02)
    assert (TUNED.shaping, TUNED.max_episode_steps, TUNED.survival_bonus) == ("top-b", 500, None)
    assert TUNED.normalize and TUNED.common_random_numbers


def test_apply_sets_every_setting_and_records_deviations() -> None:
    config = apply("paper", ESConfig(env="Pendulum-v1", seed=4))
    assert config.protocol == "paper" and (config.env, config.seed) == ("Pendulum-v1", 4)
    assert {name: getattr(config, name) for name in PAPER.settings()} == PAPER.settings()
    assert deviations(config) == {}
    changed = ESConfig(**{**config.__dict__, "sigma": 0.2})
    assert deviations(changed) == {"sigma": {"protocol": 0.1, "run": 0.2}}
    assert deviations(ESConfig()) == {}  # no protocol, nothing to deviate from
    with pytest.raises(UnknownProtocolError, match="unknown protocol 'fast'"):
        get_protocol("fast")


def test_every_protocol_setting_is_an_es_config_field_and_a_table_row() -> None:
    fields = set(ESConfig.__dataclass_fields__)
    for protocol in PROTOCOLS.values():
        assert set(protocol.settings()) <= fields
        assert {name for name, _ in ROWS} == set(protocol.settings())
    table = protocol_table().splitlines()
    assert table[0] == "| setting | flag | `paper` | `tuned` |"
    assert len(table) == 2 + len(ROWS)
    assert "| perturbation std sigma | `--sigma` | 0.1 | 0.05 |" in table
    assert "| episode cap (steps) | `--max-episode-steps` | task limit | 500 |" in table


# -- the protocol through the command line into the optimizer ----------------------------------------------------------


@pytest.fixture
def sigterm_kept() -> Iterator[None]:
    handler = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, handler)


TINY = ["--env", "Pendulum-v1", "--iterations", "1", "--eval-episodes", "1", "--backend", "inline"]


def es_command(out: Path, *flags: str) -> ESCommand:
    command = parse(["es", *TINY, "--out", str(out), *flags])
    assert isinstance(command, ESCommand)
    return command


def test_paper_protocol_reaches_the_es_step_and_config_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    command = es_command(tmp_path, "--protocol", "paper")
    assert {name: getattr(command.config, name) for name in PAPER.settings()} == PAPER.settings()
    calls: dict[str, Any] = {}

    def shape(plus: np.ndarray, minus: np.ndarray, sigma: float, shaping: str, top_b: int | None) -> Shaped:
        calls["shape"] = (plus.copy(), minus.copy(), sigma, shaping, top_b)
        return shape_fitness(plus, minus, sigma, shaping, top_b)  # type: ignore[arg-type]

    def step(params: Any, gradient: Any, manifolds: Any, alpha: float) -> Any:
        calls["alpha"] = alpha
        return ascend(params, gradient, manifolds, alpha)

    monkeypatch.setattr(es_training, "shape_fitness", shape)
    monkeypatch.setattr(es_training, "ascend", step)
    run = ESRun(command.config, command.out)
    backend = RecordingBackend(run.spec.obs_dim)
    run.train(backend, progress=False)
    (request,) = backend.requests
    assert len(request.seeds) == 2 * 100 + 1  # k = 200 perturbed policies and one evaluation episode
    assert request.max_steps is None and request.survival_bonus == 0.0  # full episodes, the task's own reward
    assert len(set(request.seeds[:200])) == 200  # no common random numbers: every perturbation its own episode
    plus, minus, sigma, shaping, top_b = calls["shape"]
    assert (sigma, shaping, top_b, calls["alpha"]) == (0.1, "standardized", None, 0.01)
    returns = np.arange(200) % 7
    assert np.array_equal(plus, returns[0::2]) and np.array_equal(minus, returns[1::2])  # raw returns
    recorded = json.loads((tmp_path / "config.json").read_text())
    assert recorded["protocol"] == "paper" and recorded["protocol_deviations"] == {}
    assert {name: recorded[name] for name in PAPER.settings()} == PAPER.settings()
    assert "gradient_norm" in json.loads((tmp_path / "log.jsonl").read_text())


def test_explicit_flags_override_the_protocol_and_are_recorded(tmp_path: Path) -> None:
    command = es_command(tmp_path, "--protocol", "tuned", "--sigma", "0.1", "--directions", "12", "--no-normalize")
    config = command.config
    assert (config.sigma, config.directions, config.normalize) == (0.1, 12, False)  # given: override
    assert (config.step_size, config.top_b, config.max_episode_steps) == (0.02, 10, 500)  # not given: the protocol's
    # 0.1 is ESConfig's own default: a flag given explicitly wins even when it spells a default
    run = ESRun(config, command.out)
    run.train(RecordingBackend(run.spec.obs_dim), progress=False)
    recorded = json.loads((tmp_path / "config.json").read_text())
    assert recorded["protocol_deviations"] == {
        "directions": {"protocol": 20, "run": 12},
        "sigma": {"protocol": 0.05, "run": 0.1},
        "normalize": {"protocol": True, "run": False},
    }
    assert es_command(tmp_path).config == ESConfig(env="Pendulum-v1", iterations=1, eval_episodes=1, backend="inline")


@pytest.mark.usefixtures("sigterm_kept")
def test_resume_keeps_the_runs_settings_unless_a_flag_changes_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = es_command(tmp_path, "--protocol", "tuned", "--directions", "12").config
    run = ESRun(config, tmp_path)
    run.train(RecordingBackend(run.spec.obs_dim), progress=False)
    resumed = parse(["es", "--out", str(tmp_path), "--resume", "--iterations", "3"])
    assert isinstance(resumed, ESCommand)
    assert resumed.config == ESConfig(**{**config.__dict__, "iterations": 3})  # sigma 0.05 stays, not ESConfig's 0.1
    finer = parse(["es", "--out", str(tmp_path), "--resume", "--step-size", "0.01"])
    assert isinstance(finer, ESCommand) and (finer.config.step_size, finer.config.sigma) == (0.01, 0.05)
    with pytest.raises(SystemExit) as done:
        main(["es", "--out", str(tmp_path), "--resume", "--protocol", "paper"])
    assert done.value.code == 2
    assert "trained under protocol tuned; --protocol cannot change when resuming" in capsys.readouterr().err


def test_a_protocol_run_started_from_code_records_a_command_that_reproduces_it(tmp_path: Path) -> None:
    # sigma 0.1 is ESConfig's default but not the tuned protocol's: the command must spell it
    config = dataclasses.replace(apply("tuned", ESConfig(env="Pendulum-v1")), directions=12, sigma=0.1)
    words = shlex.split(ESRun(config, tmp_path).command)
    assert words[3:] == ["es", "--env", "Pendulum-v1", "--protocol", "tuned", "--directions", "12", "--sigma", "0.1",
                         "--out", str(tmp_path)]  # fmt: skip
    command = parse(words[3:])
    assert isinstance(command, ESCommand) and command.config == config


@pytest.mark.parametrize("common", [True, False])
def test_common_random_numbers_share_a_seed_within_each_pair(tmp_path: Path, common: bool) -> None:
    run = ESRun(ESConfig(env="Pendulum-v1", directions=50, common_random_numbers=common), tmp_path)
    seeds = run.member_seeds()
    assert seeds.shape == (100,) and (seeds >= 0).all() and (seeds < EVALUATION_SEED_BASE).all()
    assert np.array_equal(seeds[0::2] == seeds[1::2], np.full(50, common))


# -- the vanilla Monte Carlo estimator ---------------------------------------------------------------------------------


def test_vanilla_estimator_is_the_hand_computation() -> None:
    """n = 2 pairs, sigma 0.5: g = 1/(2 n sigma) sum_j (F+_j - F-_j) eps_j = (2 eps_0 - 1 eps_1) / 2."""
    directions = {"x": torch.tensor([[1.0, 0.0, 2.0], [0.0, 4.0, 2.0]], dtype=torch.float64)}
    plus, minus = np.array([3.0, 1.0]), np.array([1.0, 2.0])
    shaped = shape_fitness(plus, minus, 0.5, "none")
    assert np.array_equal(shaped.weights, [2.0, -1.0]) and shaped.scale == 1 / (2 * 2 * 0.5)
    g = estimate_gradient(directions, shaped)["x"]
    assert torch.equal(g, torch.tensor([1.0, -2.0, 1.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="sigma must be positive"):
        antithetic_differences(plus, minus, 0.0)
    with pytest.raises(ValueError, match="equal non-empty 1-d arrays"):
        antithetic_differences(plus, minus[:1], 0.5)


def test_standardized_estimator_is_the_raw_one_over_the_returns_std_and_ignores_the_reward_scale() -> None:
    """Standardized returns: g = sum_j (F+_j - F-_j) eps_j / (2 n sigma std(F)), std over all 2n returns (population
    std, as numpy's default and the authors' ES library compute it); a F + b for any a > 0 gives the same g."""
    rng = np.random.default_rng(3)
    n, sigma = 9, 0.1
    directions = sample_directions({"x": torch.zeros(5)}, n, rng)
    plus, minus = rng.normal(size=n) * 40 + 900, rng.normal(size=n) * 40 + 900
    raw = estimate_gradient(directions, shape_fitness(plus, minus, sigma, "none"))["x"].numpy()
    std = statistics.pstdev([*plus.tolist(), *minus.tolist()])
    g = estimate_gradient(directions, shape_fitness(plus, minus, sigma, "standardized"))["x"].numpy()
    assert np.allclose(g, raw / std, rtol=1e-12)
    for a, b in ((1e-3, 5.0), (250.0, -1e4)):
        scaled = estimate_gradient(directions, shape_fitness(a * plus + b, a * minus + b, sigma, "standardized"))
        assert np.allclose(scaled["x"].numpy(), g, rtol=1e-9)
    flat = shape_fitness(np.ones(n), np.ones(n), sigma, "standardized")  # all returns equal: no step, no nan
    assert np.all(flat.weights == 0) and np.isfinite(flat.scale)


def test_antithetic_pairs_cancel_every_even_term_exactly() -> None:
    """F(x) = a + <c, x> + x^T A x around theta: F+ - F- = 2 sigma <c + 2 A theta, eps>, so the estimate is exactly
    (1/n) sum_j eps_j eps_j^T grad F(theta) -- whatever the constant and the quadratic."""
    rng = np.random.default_rng(0)
    dim, n, sigma = 6, 7, 0.3
    a, c, quad = 11.0, rng.normal(size=dim), rng.normal(size=(dim, dim))
    theta = rng.normal(size=dim)

    def f(x: np.ndarray) -> np.ndarray:
        return a + x @ c + np.einsum("...i,ij,...j->...", x, quad, x)

    directions = sample_directions({"x": torch.zeros(dim)}, n, rng)
    eps = directions["x"].numpy()
    g = estimate_gradient(directions, shape_fitness(f(theta + sigma * eps), f(theta - sigma * eps), sigma, "none"))
    grad = c + (quad + quad.T) @ theta
    assert np.allclose(g["x"].numpy(), eps.T @ eps @ grad / n, rtol=1e-10, atol=1e-10)


def test_vanilla_estimator_is_unbiased_for_a_linear_function() -> None:
    """E[(1/n) sum eps eps^T c] = c: the mean of 200 estimates of 100 pairs each lies within 4 standard errors."""
    rng = np.random.default_rng(1)
    dim, pairs, repeats, sigma = 5, 100, 200, 0.1
    c = rng.normal(size=dim)
    estimates = []
    for _ in range(repeats):
        directions = sample_directions({"x": torch.zeros(dim)}, pairs, rng)
        eps = directions["x"].numpy()
        shaped = shape_fitness(sigma * eps @ c, -sigma * eps @ c, sigma, "none")
        estimates.append(estimate_gradient(directions, shaped)["x"].numpy())
    estimates_ = np.stack(estimates)
    standard_error = estimates_.std(axis=0, ddof=1) / math.sqrt(repeats)
    assert (np.abs(estimates_.mean(axis=0) - c) < 4 * standard_error).all()


# -- the width sweep ---------------------------------------------------------------------------------------------------


def test_curve_scores() -> None:
    curve = [0.0, 10.0, 2.0, 4.0, 6.0, 8.0, 1.0, 3.0]
    assert curve_score(curve, "final") == 2.0  # the last ceil(0.25 * 8) = 2 evaluations
    assert curve_score(curve, "mean") == 34.0 / 8
    assert curve_score([5.0], "final") == 5.0 and curve_score([1.0, 2.0, 3.0], "final", 0.5) == 2.5
    with pytest.raises(ValueError, match="at least one"):
        curve_score([], "final")


def test_the_sweep_picks_by_its_rule_and_breaks_ties_towards_fewer_parameters() -> None:
    early = Candidate(8, 1200, (50.0, 60.0, 60.0, 10.0))  # fast start, falls back: best mean, worst final
    late = Candidate(10, 1800, (0.0, 0.0, 20.0, 40.0))  # best final
    twin = Candidate(12, 2400, (0.0, 0.0, 20.0, 40.0))  # ties with `late`, more parameters
    assert select_width([early, twin, late], "final") == late
    assert select_width([early, twin, late], "mean") == early
    assert select_width([twin, late]) == late  # the default rule is the paper's final reward
    diverged = Candidate(6, 1000, (1.0, float("nan")))
    assert select_width([diverged, early], "final") == early  # NaN ranks last
    with pytest.raises(ValueError, match="no candidates"):
        select_width([])


def test_candidate_widths_are_not_smaller_than_the_reference() -> None:
    target = parameters("iso-odetoode", 17, 6, 16, steps=25)
    widths = candidate_widths("nanode", 17, 6, target, (1.0, 1.5, 2.0, 3.0), steps=25)
    assert widths == sorted(set(widths)) and len(widths) == 4
    counts = [parameters("nanode", 17, 6, h, steps=25) for h in widths]
    for factor, count, h in zip((1.0, 1.5, 2.0, 3.0), counts, widths, strict=True):
        assert count >= factor * target > parameters("nanode", 17, 6, h - 1, steps=25)
    assert candidate_widths("hypernet", 17, 6, target, steps=25) == [16]  # the paper's h = 16 is already ~9x
    with pytest.raises(ValueError, match="smaller than the reference"):
        candidate_widths("nanode", 17, 6, target, (0.5,), steps=25)


def test_a_sweep_records_every_candidates_curve_and_its_choice(tmp_path: Path) -> None:
    budget = Budget(iterations=2, eval_every=1, eval_episodes=1, workers=1,
                    settings={"directions": 2, "top_b": 2, "max_episode_steps": 10, "backend": "inline"})  # fmt: skip
    record = sweep_task("Pendulum-v1", tmp_path / "runs", budget, archs=("deepnet",), factors=(1.0, 2.0))
    path = write_record(record, tmp_path / "results")
    assert path == tmp_path / "results" / "rl_sweep" / "tuned" / "Pendulum-v1.json"
    saved = json.loads(path.read_text())
    assert saved["protocol"] == "tuned" and saved["protocol_settings"]["sigma"] == 0.05
    assert saved["rule"] == "final" and saved["seed"] == 1000 and saved["reference"]["arch"] == "iso-odetoode"
    candidates = saved["baselines"]["deepnet"]["candidates"]
    assert len(candidates) == 2 and all(c["parameters"] >= saved["reference"]["parameters"] for c in candidates)
    assert all(c["iteration"] == [1, 2] and len(c["eval_return"]) == 2 for c in candidates)
    chosen = select_width([Candidate(c["hidden"], c["parameters"], tuple(c["eval_return"])) for c in candidates])
    assert selected_widths(saved) == {"deepnet": chosen.hidden}
    table = parameter_table(("Pendulum-v1",), {"Pendulum-v1": selected_widths(saved)})
    assert f"| deepnet | {chosen.hidden} / " in table


def test_a_committed_sweep_record_is_reused_across_sittings_and_a_changed_sweep_trains_again(tmp_path: Path) -> None:
    """Run directories do not outlive a sitting; the committed record does: the next sitting's sweep takes its
    choice without training, unless the sweep asked for is not the one recorded."""
    budget = Budget(iterations=2, eval_every=1, eval_episodes=1, workers=1,
                    settings={"directions": 2, "top_b": 2, "max_episode_steps": 10, "backend": "inline"})  # fmt: skip
    results, options = tmp_path / "results", {"archs": ("deepnet",), "factors": (1.0, 2.0)}
    widths, written = sweep(["Pendulum-v1"], tmp_path / "runs-1", results, budget, **options)
    assert len(written) == 1 and (tmp_path / "runs-1").is_dir()
    again, written = sweep(["Pendulum-v1"], tmp_path / "runs-2", results, budget, **options)
    assert again == widths and written == [] and not (tmp_path / "runs-2").exists()  # nothing trained
    assert committed_record("Pendulum-v1", results, budget, archs=("deepnet", "baseode"), factors=(1.0, 2.0)) is None
    longer = dataclasses.replace(budget, iterations=3)
    _, written = sweep(["Pendulum-v1"], tmp_path / "runs-3", results, longer, **options)
    assert len(written) == 1 and json.loads(written[0].read_text())["budget"]["iterations"] == 3


# -- intrinsic parameter counts ----------------------------------------------------------------------------------------


def iso_intrinsic(d: int, m: int, h: int) -> int:
    """Closed form for ISO-ODEtoODE: Omega_1 in ST(h, d), Omega_2 in ST(m, h), W_0 in O(h), Q, N in S(h), b in R^h."""

    def stiefel(n: int, p: int) -> int:
        k = min(n, p)
        return n * p - k * (k + 1) // 2

    return stiefel(h, d) + stiefel(m, h) + h * (h - 1) // 2 + 2 * (h * (h + 1) // 2) + h


@pytest.mark.parametrize(("d", "m", "h"), [(3, 2, 4), (17, 6, 16), (5, 1, 3), (348, 17, 64)])
def test_intrinsic_count_of_iso_odetoode_is_the_closed_form(d: int, m: int, h: int) -> None:
    model = build_model("iso-odetoode", d, m, hidden=h, steps=2)
    assert intrinsic_parameters(model) == iso_intrinsic(d, m, h)
    assert model.num_parameters() == h * d + m * h + 3 * h * h + h


@pytest.mark.parametrize("arch", ["deepnet", "deepresnet", "baseode", "nanode", "hypernet"])
def test_unconstrained_models_have_as_many_intrinsic_as_ambient_parameters(arch: str) -> None:
    model = build_model(arch, 5, 2, hidden=4, steps=3)
    assert intrinsic_parameters(model) == model.num_parameters()


def tangent_dimension(point: torch.Tensor, manifold: object) -> int:
    """``numel - rank(dc)``: the kernel of the differential of the manifold's defining constraint ``c`` at
    ``point`` (``Omega^T Omega - I`` or ``Omega Omega^T - I``; ``X - X^T``; none), computed numerically."""
    if isinstance(manifold, Euclidean):
        return point.numel()
    if isinstance(manifold, Stiefel):

        def constraint(x: torch.Tensor) -> torch.Tensor:
            return x.mT @ x if x.shape[0] >= x.shape[1] else x @ x.mT

    elif isinstance(manifold, Symmetric):

        def constraint(x: torch.Tensor) -> torch.Tensor:
            return x - x.mT

    else:
        raise TypeError(manifold)
    jacobian = torch.autograd.functional.jacobian(constraint, point.detach().to(torch.float64))
    return point.numel() - int(torch.linalg.matrix_rank(jacobian.reshape(-1, point.numel())))


@pytest.mark.parametrize(("d", "m", "h"), [(3, 2, 4), (5, 1, 3)])
def test_intrinsic_count_is_the_numerical_tangent_space_dimension(d: int, m: int, h: int) -> None:
    model = build_model("iso-odetoode", d, m, hidden=h, steps=2, generator=torch.Generator().manual_seed(0))
    numerical = {name: tangent_dimension(p, model.manifolds[name]) for name, p in model.named_parameters()}
    assert numerical == {name: manifold_dimension(model.manifolds[name]) for name in numerical}
    assert sum(numerical.values()) == intrinsic_parameters(model)


def test_the_docs_show_the_protocols_as_they_are() -> None:
    root = Path(__file__).resolve().parents[2]
    for doc in ("docs/training.md", "docs/REPRODUCTION.md"):
        assert protocol_table() in (root / doc).read_text(), f"{doc}: paste protocol_table() again"
