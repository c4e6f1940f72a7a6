"""Evolution strategies as pure functions, plus the one small piece of state they need (observation statistics).

One iteration (Sec. 4.2 of the paper, with the tricks of ARS (Mania et al. 2018) and OpenAI-ES (Salimans et al. 2017)):

1. ``sample_directions``: ``n`` Gaussian directions ``eps_j``, one tensor per parameter;
2. ``population``: antithetic pairs ``theta + sigma eps_j``, ``theta - sigma eps_j`` (plus unperturbed copies to
   evaluate the current policy in the same batch);
3. rollouts score each member (``trainer.rollouts``);
4. ``shape_fitness``: centered ranks (OpenAI ES), ARS's top-b directions scaled by the reward std, the vanilla Monte
   Carlo estimator of the paper's Sec. 4.2 on returns standardized within the iteration (``standardized``), or on
   raw returns (``none``, ``antithetic_differences``);
5. ``estimate_gradient``: the ES estimate of ``grad F_sigma`` from the shaped scores;
6. ``ascend``: a step along it -- exact exponential-map steps on Stiefel/orthogonal parameters with the Riemannian
   gradient of Eq. 8-9 (Theorem 1), the symmetric part for ``Q``, ``N`` and a plain step elsewhere.

Perturbed members are evaluated in the ambient space, ``F(theta + sigma eps)``, as the paper's Gaussian smoothing is
defined; only the updates are Riemannian, so ``theta`` itself never leaves its manifold.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from trainer.manifolds import Manifold, Stiefel, orthogonality_error

Params = dict[str, torch.Tensor]
Shaping = Literal["centered-ranks", "top-b", "standardized", "none"]


def sample_directions(params: Mapping[str, torch.Tensor], n: int, rng: np.random.Generator) -> Params:
    """``n`` standard Gaussian directions per parameter: ``{name: [n, *shape]}`` in float64."""
    return {name: torch.from_numpy(rng.standard_normal((n, *p.shape))) for name, p in params.items()}


def population(params: Mapping[str, torch.Tensor], directions: Mapping[str, torch.Tensor], sigma: float,
               copies: int = 0) -> Params:  # fmt: skip
    """Members ``[theta + s eps_0, theta - s eps_0, theta + s eps_1, ..., theta x copies]`` stacked on dim 0."""
    out: Params = {}
    for name, p in params.items():
        eps = directions[name]
        pairs = torch.stack([p + sigma * eps, p - sigma * eps], dim=1).reshape(-1, *p.shape)
        out[name] = torch.cat([pairs, p.expand(copies, *p.shape)]) if copies else pairs
    return out


def centered_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks of ``x`` mapped linearly onto ``[-0.5, 0.5]`` (ties broken by order), same shape as ``x``."""
    flat = x.ravel()
    ranks = np.empty(flat.size)
    ranks[flat.argsort(kind="stable")] = np.arange(flat.size)
    return (ranks / max(flat.size - 1, 1) - 0.5).reshape(x.shape)


@dataclass(frozen=True)
class Shaped:
    """Per-direction weights for the gradient estimate and how to scale their sum."""

    weights: np.ndarray  # [n]
    scale: float  # the estimate is scale * sum_j weights_j eps_j


def _check_antithetic(plus: np.ndarray, minus: np.ndarray) -> None:
    if plus.shape != minus.shape or plus.ndim != 1 or plus.size == 0:
        raise ValueError(f"plus and minus must be equal non-empty 1-d arrays, got {plus.shape} and {minus.shape}")


def antithetic_differences(plus: np.ndarray, minus: np.ndarray, sigma: float) -> Shaped:
    """The vanilla Monte Carlo estimator of ``grad F_sigma`` (the paper's Sec. 4.2), on raw returns.

    ``plus[j] = F(theta + sigma eps_j)``, ``minus[j] = F(theta - sigma eps_j)`` (shape ``[n]``, ``n`` pairs). The
    paper's estimator over ``v`` independent perturbations is ``1/(sigma v) sum_w F(theta + sigma eps_w) eps_w``;
    averaging it over each pair ``(eps_j, -eps_j)`` gives, with ``v = 2n`` perturbations,

        ``g = 1/(2 n sigma) sum_j (F+_j - F-_j) eps_j``,

    i.e. ``w_j = F+_j - F-_j`` and ``scale = 1 / (2 n sigma)``. It is unbiased for ``grad F_sigma`` like the one-sided
    form; the pair cancels ``F(theta)`` and every even-order term of ``F`` around ``theta`` (for ``F`` linear plus a
    constant plus a quadratic form, ``g = (1/n) sum_j eps_j eps_j^T grad F`` exactly). No ranks, no top-b, no reward
    scaling: the step ``alpha g`` scales with the task's returns.
    """
    _check_antithetic(plus, minus)
    if not sigma > 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    return Shaped(plus - minus, 1.0 / (2 * plus.size * sigma))


def shape_fitness(
    plus: np.ndarray, minus: np.ndarray, sigma: float, shaping: Shaping = "centered-ranks", top_b: int | None = None
) -> Shaped:
    """Turns antithetic returns into weights.

    * ``centered-ranks``: ``w_j = rank(F+_j) - rank(F-_j)`` over all ``2n`` returns, estimate
      ``sum_j w_j eps_j / (2 n sigma)`` -- the antithetic estimator of ``grad F_sigma`` with rank-shaped fitness;
    * ``top-b`` (ARS v2-t): the ``b`` directions with the largest ``max(F+, F-)``, ``w_j = F+_j - F-_j``, estimate
      ``sum_j w_j eps_j / (b std_R)`` with ``std_R`` the std of those ``2b`` returns (ARS's update, no ``1/sigma``);
    * ``standardized``: the same Monte Carlo estimator on the ``2n`` returns standardized within the iteration,
      ``(F - mean) / std`` (population std), i.e. ``sum_j (F+_j - F-_j) eps_j / (2 n sigma std)`` -- the mean
      cancels within each pair. The estimate no longer grows with the task's reward scale, so one step size means the
      same on every task; it is what the ES library of the paper's authors' group does with its
      ``normalize_fvalues`` option (Google Research's ``es_optimization``, ``MCBlackboxOptimizer``);
    * ``none``: raw returns, ``sum_j (F+_j - F-_j) eps_j / (2 n sigma)`` (``antithetic_differences``), the paper's
      Monte Carlo estimator taken literally.
    """
    _check_antithetic(plus, minus)
    n = plus.size
    if shaping == "none":
        return antithetic_differences(plus, minus, sigma)
    if shaping == "standardized":
        raw = antithetic_differences(plus, minus, sigma)
        std = float(np.concatenate([plus, minus]).std())
        return Shaped(raw.weights, raw.scale / (std if std > 1e-8 else 1.0))
    if shaping == "centered-ranks":
        ranks = centered_ranks(np.stack([plus, minus]))
        return Shaped(ranks[0] - ranks[1], 1.0 / (2 * n * sigma))
    if shaping == "top-b":
        b = n if top_b is None else top_b
        if not 1 <= b <= n:
            raise ValueError(f"top_b must be in [1, {n}], got {b}")
        keep = np.argsort(-np.maximum(plus, minus), kind="stable")[:b]
        weights = np.zeros(n)
        weights[keep] = plus[keep] - minus[keep]
        std = float(np.concatenate([plus[keep], minus[keep]]).std())
        return Shaped(weights, 1.0 / (b * (std if std > 1e-8 else 1.0)))
    raise ValueError(f"unknown fitness shaping {shaping!r}")


def estimate_gradient(directions: Mapping[str, torch.Tensor], shaped: Shaped) -> Params:
    """``scale * sum_j w_j eps_j`` for every parameter."""
    w = torch.from_numpy(shaped.weights).to(torch.float64)
    return {name: shaped.scale * torch.tensordot(w, eps, dims=1) for name, eps in directions.items()}


def ascend(params: Mapping[str, torch.Tensor], gradient: Mapping[str, torch.Tensor],
           manifolds: Mapping[str, Manifold], alpha: float) -> Params:  # fmt: skip
    """One step of size ``alpha`` up the estimated gradient, each parameter on its manifold (Theorem 1)."""
    out: Params = {}
    for name, p in params.items():
        manifold = manifolds[name]
        direction = manifold.riemannian_gradient(p, gradient[name])
        out[name] = manifold.step(p, direction, alpha)
    return out


def off_manifolds(params: Mapping[str, torch.Tensor], manifolds: Mapping[str, Manifold], atol: float = 1e-5
                  ) -> dict[str, float]:  # fmt: skip
    """The Stiefel/orthogonal parameters farther than ``atol`` from their manifolds, with their orthogonality
    errors (empty when every one is on its manifold)."""
    return {
        name: float(orthogonality_error(p).max())
        for name, p in params.items()
        if isinstance(m := manifolds[name], Stiefel) and not m.in_manifold(p, atol)
    }


def on_manifolds(params: Mapping[str, torch.Tensor], manifolds: Mapping[str, Manifold], atol: float = 1e-5) -> bool:
    return not off_manifolds(params, manifolds, atol)


def step_size(base: float, iteration: int, decay: Literal["constant", "sqrt"]) -> float:
    """``alpha`` or ``alpha / sqrt(t)`` (the schedule of Theorem 1), ``t`` counted from 1."""
    return base if decay == "constant" else base / math.sqrt(iteration + 1)


class RunningStats:
    """Mean and variance of every observation seen so far (Chan et al.'s parallel merge), for normalization.

    The policy of an iteration uses the statistics from before it (frozen), then ``merge`` adds what its rollouts
    saw -- the ARS/OpenAI-ES scheme, so all members of one iteration see the same normalization.
    """

    def __init__(self, dim: int) -> None:
        self.count = 0.0
        self.mean = np.zeros(dim)
        self.m2 = np.zeros(dim)

    def merge(self, count: float, total: np.ndarray, total_sq: np.ndarray) -> None:
        if count <= 0:
            return
        batch_mean = total / count
        batch_m2 = np.maximum(total_sq - count * batch_mean**2, 0.0)
        delta = batch_mean - self.mean
        new_count = self.count + count
        self.mean = self.mean + delta * count / new_count
        self.m2 = self.m2 + batch_m2 + delta**2 * self.count * count / new_count
        self.count = new_count

    def std(self) -> np.ndarray:
        """Standard deviation, with 1 where (almost) nothing varied -- a constant feature is left unscaled."""
        if self.count < 2:
            return np.ones_like(self.mean)
        var = self.m2 / (self.count - 1)
        return np.where(var > 1e-8, np.sqrt(var), 1.0)

    def state(self) -> dict[str, list[float] | float]:
        return {"count": self.count, "mean": self.mean.tolist(), "m2": self.m2.tolist()}

    @classmethod
    def from_state(cls, state: Mapping[str, object]) -> RunningStats:
        mean = np.asarray(state["mean"], dtype=np.float64)
        stats = cls(mean.size)
        stats.count, stats.mean, stats.m2 = float(state["count"]), mean, np.asarray(state["m2"], dtype=np.float64)  # type: ignore[arg-type]
        return stats
