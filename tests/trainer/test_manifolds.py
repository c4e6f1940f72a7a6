"""Manifold maths against closed forms, scipy's Haar sampler and float64 gradcheck."""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
import torch
from scipy import stats

from trainer.manifolds import (
    Euclidean,
    NotOnManifoldError,
    Orthogonal,
    ShapeError,
    Stiefel,
    Symmetric,
    haar_orthogonal,
    haar_stiefel,
    orthogonality_error,
    skew,
    sym,
)

SHAPES = [(16, 16), (17, 16), (16, 17), (6, 16), (16, 6)]


def test_skew_and_sym_split_a_matrix() -> None:
    a = torch.randn(3, 5, 5, dtype=torch.float64)
    assert torch.allclose(skew(a) + sym(a), a)
    assert torch.allclose(skew(a), -skew(a).mT)
    assert torch.allclose(sym(a), sym(a).mT)


def test_projections_reject_non_square_matrices() -> None:
    with pytest.raises(ShapeError, match=r"skew needs square trailing matrices, got shape \(3, 4\)"):
        skew(torch.zeros(3, 4))


def test_haar_orthogonal_matches_scipy_distribution() -> None:
    """Two-sample KS test on the (0, 0) entry and the trace against scipy.stats.ortho_group."""
    d, n = 5, 4000
    ours = haar_orthogonal(d, (n,), generator=torch.Generator().manual_seed(1)).numpy()
    ref = stats.ortho_group.rvs(d, size=n, random_state=np.random.default_rng(2))
    assert np.abs(ours @ np.swapaxes(ours, -1, -2) - np.eye(d)).max() < 1e-12
    for stat in (lambda m: m[:, 0, 0], lambda m: np.trace(m, axis1=1, axis2=2)):
        assert stats.ks_2samp(stat(ours), stat(ref)).pvalue > 1e-3
    # Haar on O(d) has both determinant signs with equal probability; a missing sign correction skews this.
    assert abs(np.mean(np.linalg.det(ours) > 0) - 0.5) < 0.05


@pytest.mark.parametrize(("d1", "d2"), SHAPES)
def test_stiefel_samples_satisfy_the_papers_orientation(d1: int, d2: int) -> None:
    omega = haar_stiefel(d1, d2, (4,), generator=torch.Generator().manual_seed(0))
    assert omega.shape == (4, d1, d2)
    gram = omega.mT @ omega if d1 >= d2 else omega @ omega.mT
    assert torch.allclose(gram, torch.eye(min(d1, d2), dtype=torch.float64).expand_as(gram), atol=1e-12)
    assert Stiefel(d1, d2).in_manifold(omega)


@pytest.mark.parametrize(("d1", "d2"), SHAPES)
def test_riemannian_gradient_is_a_skew_ascent_direction(d1: int, d2: int) -> None:
    """For F(Omega) = <G, Omega>: the generator is skew and dF/dalpha at 0 along it is ||A||^2 / 2 > 0."""
    m = Stiefel(d1, d2)
    g = torch.Generator().manual_seed(3)
    omega = m.sample(generator=g)
    grad = torch.randn(d1, d2, generator=g, dtype=torch.float64)
    a = m.riemannian_gradient(omega, grad)
    k = max(d1, d2)
    assert a.shape == (k, k)
    assert torch.allclose(a, -a.mT)
    eps = 1e-6
    derivative = ((grad * m.step(omega, a, eps)).sum() - (grad * m.step(omega, a, -eps)).sum()) / (2 * eps)
    assert derivative.item() == pytest.approx(0.5 * float((a * a).sum()), rel=1e-6)
    # The step's velocity at alpha = 0 is the generator acting on the point: A Omega (tall), Omega A^T (wide).
    velocity = a @ omega if d1 >= d2 else omega @ a.mT
    assert torch.allclose(velocity, (m.step(omega, a, eps) - m.step(omega, a, -eps)) / (2 * eps))


def test_equation_8_for_square_and_tall_matrices() -> None:
    """Eq. 8 verbatim: grad Omega^T - Omega grad^T."""
    m = Stiefel(17, 16)
    omega = m.sample(generator=torch.Generator().manual_seed(0))
    grad = torch.randn(17, 16, dtype=torch.float64)
    assert torch.equal(m.riemannian_gradient(omega, grad), grad @ omega.mT - omega @ grad.mT)


@pytest.mark.parametrize(("d1", "d2"), SHAPES)
def test_thousand_exp_map_updates_stay_on_the_manifold(d1: int, d2: int) -> None:
    m = Stiefel(d1, d2)
    g = torch.Generator().manual_seed(4)
    omega = m.sample((2,), generator=g)
    for _ in range(1000):
        direction = m.riemannian_gradient(omega, torch.randn(2, d1, d2, generator=g, dtype=torch.float64))
        omega = m.step(omega, direction, 0.05)
    assert orthogonality_error(omega).max() < 1e-5
    assert m.in_manifold(omega, atol=1e-5)


def test_population_steps_take_one_step_size_per_member() -> None:
    m = Orthogonal(4)
    omega = m.sample((3,), generator=torch.Generator().manual_seed(5))
    direction = m.riemannian_gradient(omega, torch.randn(3, 4, 4, dtype=torch.float64))
    alphas = torch.tensor([0.0, 0.1, 0.2], dtype=torch.float64)
    stepped = m.step(omega, direction, alphas)
    assert torch.equal(stepped[0], omega[0])
    for i in (1, 2):
        assert torch.allclose(stepped[i], torch.linalg.matrix_exp(alphas[i] * direction[i]) @ omega[i])


def test_symmetric_and_euclidean_steps() -> None:
    s = Symmetric(5)
    x = s.sample(generator=torch.Generator().manual_seed(6))
    grad = torch.randn(5, 5, dtype=torch.float64)
    r = s.riemannian_gradient(x, grad)
    assert torch.allclose(r, (grad + grad.mT) / 2)  # Eq. 8 for N and Q
    assert s.in_manifold(s.step(x, r, 0.3), atol=1e-14)
    e = Euclidean((3,))
    assert torch.equal(e.step(torch.zeros(3), torch.ones(3), 2.0), torch.full((3,), 2.0))


def test_projection_is_the_polar_factor_and_idempotent() -> None:
    m = Stiefel(16, 6)
    x = torch.randn(16, 6, dtype=torch.float64)
    assert not m.in_manifold(x)
    p = m.project(x)
    assert m.in_manifold(p, atol=1e-12)
    assert torch.allclose(m.project(p), p, atol=1e-12)
    u, _, vh = np.linalg.svd(x.numpy(), full_matrices=False)
    assert np.allclose(p.numpy(), u @ vh)


def test_shape_errors_name_the_manifold_and_shape() -> None:
    with pytest.raises(ShapeError, match=r"stiefel: expected trailing shape \(4, 3\), got \(3, 4\)"):
        Stiefel(4, 3).in_manifold(torch.zeros(3, 4))
    assert issubclass(NotOnManifoldError, ValueError)


def test_gradcheck_of_exp_map_update_and_riemannian_gradient() -> None:
    for d1, d2 in [(4, 4), (5, 3), (3, 5)]:
        m = Stiefel(d1, d2)
        omega = m.sample(generator=torch.Generator().manual_seed(7)).requires_grad_()
        k = max(d1, d2)
        a = skew(torch.randn(k, k, dtype=torch.float64)).requires_grad_()
        grad = torch.randn(d1, d2, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(partial(m.step, alpha=0.3), (omega, a))
        assert torch.autograd.gradcheck(m.riemannian_gradient, (omega, grad))
