"""ES maths against closed forms: ranks, shaping, gradient estimates, Riemannian ascent, running statistics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trainer.es import (
    RunningStats,
    ascend,
    centered_ranks,
    estimate_gradient,
    on_manifolds,
    population,
    sample_directions,
    shape_fitness,
    step_size,
)
from trainer.manifolds import Euclidean, Orthogonal, Stiefel, Symmetric


def test_centered_ranks_span_minus_half_to_half() -> None:
    r = centered_ranks(np.array([[3.0, -1.0], [10.0, 0.0]]))
    assert np.allclose(r, [[1 / 6, -0.5], [0.5, -1 / 6]])


def test_population_is_antithetic_pairs_then_copies() -> None:
    params = {"w": torch.zeros(2, 2, dtype=torch.float64)}
    directions = {"w": torch.arange(8.0, dtype=torch.float64).reshape(2, 2, 2)}
    members = population(params, directions, sigma=0.5, copies=3)["w"]
    assert members.shape == (7, 2, 2)
    assert torch.equal(members[0], 0.5 * directions["w"][0]) and torch.equal(members[1], -0.5 * directions["w"][0])
    assert torch.equal(members[2], 0.5 * directions["w"][1]) and torch.equal(members[6], params["w"])


@pytest.mark.parametrize("shaping", ["centered-ranks", "top-b", "none"])
def test_gradient_estimate_points_along_the_true_gradient_of_a_linear_objective(shaping: str) -> None:
    """F(theta) = <c, theta>: the estimate's direction must match c (cosine > 0.95 with 4000 directions)."""
    rng = np.random.default_rng(0)
    c = rng.normal(size=30)
    params = {"x": torch.zeros(30, dtype=torch.float64)}
    directions = sample_directions(params, 4000, rng)
    eps = directions["x"].numpy()
    sigma = 0.1
    plus, minus = eps @ c * sigma, -(eps @ c) * sigma
    g = estimate_gradient(directions, shape_fitness(plus, minus, sigma, shaping, top_b=2000))["x"].numpy()  # type: ignore[arg-type]
    assert g @ c / (np.linalg.norm(g) * np.linalg.norm(c)) > 0.95


def test_antithetic_estimator_is_the_smoothed_gradient_for_raw_fitness() -> None:
    """With ranks replaced by raw returns (top-b keeping all), the estimate is unbiased for a quadratic."""
    rng = np.random.default_rng(1)
    target = rng.normal(size=5)
    params = {"x": torch.zeros(5, dtype=torch.float64)}
    directions = sample_directions(params, 20000, rng)
    eps = directions["x"].numpy()
    sigma = 0.05

    def f(x: np.ndarray) -> np.ndarray:
        return -((x - target) ** 2).sum(axis=-1)  # type: ignore[no-any-return]

    plus, minus = f(sigma * eps), f(-sigma * eps)
    shaped = shape_fitness(plus, minus, sigma, "top-b")
    # undo ARS's reward-std scaling to compare with (F+ - F-)/(2 sigma) eps, whose mean is the gradient 2 * target
    std = np.concatenate([plus, minus]).std()
    g = estimate_gradient(directions, shaped)["x"].numpy() * std / (2 * sigma)
    assert np.allclose(g, 2 * target, atol=0.15)


def test_top_b_keeps_the_best_directions() -> None:
    plus, minus = np.array([1.0, 5.0, 0.0, 2.0]), np.array([0.0, 0.0, 9.0, 2.5])
    shaped = shape_fitness(plus, minus, 0.1, "top-b", top_b=2)
    assert np.flatnonzero(shaped.weights).tolist() == [1, 2]
    assert shaped.weights[1] == 5.0 and shaped.weights[2] == -9.0
    assert shaped.scale == pytest.approx(1 / (2 * np.std([5.0, 0.0, 0.0, 9.0])))
    with pytest.raises(ValueError, match="top_b must be in"):
        shape_fitness(plus, minus, 0.1, "top-b", top_b=5)


def test_riemannian_ascent_climbs_while_staying_on_the_manifolds() -> None:
    """Maximize <C, W> + <D, Omega> - ||S - T||^2 with exact ES gradients: W orthogonal, Omega Stiefel (wide)."""
    rng = np.random.default_rng(2)
    manifolds = {"w": Orthogonal(6), "omega": Stiefel(3, 7), "s": Symmetric(4), "b": Euclidean((4,))}
    g = torch.Generator().manual_seed(0)
    params = {name: m.sample(generator=g) for name, m in manifolds.items()}
    c, d = torch.from_numpy(rng.normal(size=(6, 6))), torch.from_numpy(rng.normal(size=(3, 7)))
    t = torch.from_numpy(rng.normal(size=(4, 4)))
    t = (t + t.T) / 2

    def objective(p: dict[str, torch.Tensor]) -> float:
        return float((c * p["w"]).sum() + (d * p["omega"]).sum() - ((p["s"] - t) ** 2).sum() - (p["b"] ** 2).sum())

    start = objective(params)
    for _ in range(300):
        grads = {"w": c, "omega": d, "s": -2 * (params["s"] - t), "b": -2 * params["b"]}
        params = ascend(params, grads, manifolds, 0.02)
    assert objective(params) > start + 1.0
    assert on_manifolds(params, manifolds, atol=1e-10)
    assert torch.allclose(params["s"], params["s"].T)
    # the maximum of <C, W> over O(6) is the nuclear norm of C (polar decomposition): ascent gets close
    assert float((c * params["w"]).sum()) > 0.95 * float(torch.linalg.matrix_norm(c, ord="nuc"))


def test_step_size_schedules() -> None:
    assert step_size(0.1, 0, "constant") == step_size(0.1, 99, "constant") == 0.1
    assert step_size(0.1, 3, "sqrt") == pytest.approx(0.05)


def test_running_stats_match_numpy_on_the_concatenated_data() -> None:
    rng = np.random.default_rng(3)
    batches = [rng.normal(loc=3, scale=s, size=(n, 4)) for n, s in ((5, 1.0), (200, 2.0), (37, 0.5))]
    stats = RunningStats(4)
    for b in batches:
        stats.merge(len(b), b.sum(axis=0), (b**2).sum(axis=0))
    data = np.concatenate(batches)
    assert np.allclose(stats.mean, data.mean(axis=0))
    assert np.allclose(stats.std(), data.std(axis=0, ddof=1))
    again = RunningStats.from_state(stats.state())
    assert np.array_equal(again.mean, stats.mean) and again.count == stats.count
    constant = RunningStats(2)
    constant.merge(10, np.array([5.0, 10.0]), np.array([2.5, 10.0]))
    assert constant.std()[1] == 1.0  # a feature that never varies is left unscaled
