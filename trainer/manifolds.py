"""The matrix manifolds ODEtoODE parameters live on, and the exact steps that keep them there.

Every function works on a leading batch of matrices (``[..., d1, d2]``), because evolution strategies evaluate
and update many parameter sets at once.

Manifolds (Sec. 3 and 4.2 of the paper):

* ``O(d) = {W in R^{d x d} : W^T W = I}``, the orthogonal group;
* ``ST(d1, d2)``, the Stiefel manifold, in the paper's two orientations: for ``d1 >= d2`` ("tall") the columns are
  orthonormal, ``Omega^T Omega = I``; for ``d1 < d2`` ("wide") the rows are, ``Omega Omega^T = I``;
* ``S(d)``, symmetric matrices (a vector space: the Riemannian gradient is the symmetric part of the Euclidean one);
* ``R^n``, unconstrained parameters.

Riemannian gradients (Eq. 8-9) are skew-symmetric generators ``A``; a step of size ``alpha`` is the exact exponential
map ``Omega <- exp(alpha A) Omega``, which stays on the manifold up to floating-point rounding because ``exp`` maps
skew-symmetric matrices onto ``SO(d)``.

One deliberate reading of Eq. 8 for wide Stiefel matrices: left-multiplying a wide ``Omega`` (rows orthonormal) by
``exp(A)``, ``A`` in ``Skew(d1)``, only rotates the rows *inside their span* -- the row space, i.e. which directions
of the input the policy ignores, could never be learned. We therefore apply Eq. 8 to ``Omega^T`` (which is tall):
the generator is ``A = G^T Omega - Omega^T G`` in ``Skew(d2)`` and the step is ``Omega <- Omega exp(alpha A)^T``.
For tall and square matrices this is exactly Eq. 8; for wide ones it is Eq. 8 in the transposed coordinates, which
is the same manifold (the paper's definition of ``ST(d1, d2)`` with ``d1 < d2`` is the transpose of ``ST(d2, d1)``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import torch

__all__ = [
    "Euclidean",
    "Manifold",
    "ManifoldError",
    "NotOnManifoldError",
    "Orthogonal",
    "ShapeError",
    "Stiefel",
    "Symmetric",
    "haar_orthogonal",
    "haar_stiefel",
    "orthogonality_error",
    "skew",
    "sym",
]


class ManifoldError(ValueError):
    """Base class of every error this module raises."""


class ShapeError(ManifoldError):
    """A tensor's trailing dimensions do not match the manifold's."""


class NotOnManifoldError(ManifoldError):
    """A point is farther from the manifold than the tolerance allows."""


def skew(a: torch.Tensor) -> torch.Tensor:
    """Skew-symmetric part ``(A - A^T) / 2`` of each trailing square matrix."""
    _require_square(a, "skew")
    return (a - a.mT) / 2


def sym(a: torch.Tensor) -> torch.Tensor:
    """Symmetric part ``(A + A^T) / 2`` of each trailing square matrix."""
    _require_square(a, "sym")
    return (a + a.mT) / 2


def _require_square(a: torch.Tensor, what: str) -> None:
    if a.dim() < 2 or a.shape[-1] != a.shape[-2]:
        raise ShapeError(f"{what} needs square trailing matrices, got shape {tuple(a.shape)}")


def haar_orthogonal(
    d: int,
    batch: tuple[int, ...] = (),
    *,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """Samples ``[*batch, d, d]`` matrices uniformly from the Haar measure on ``O(d)``.

    QR of a Gaussian matrix with the signs of ``R``'s diagonal moved into ``Q`` (Mezzadri 2007); without that sign
    correction the result is orthogonal but not Haar-distributed.
    """
    if d < 1:
        raise ShapeError(f"dimension must be >= 1, got {d}")
    gaussian = torch.randn(*batch, d, d, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(gaussian)
    signs = torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))
    signs = torch.where(signs == 0, torch.ones_like(signs), signs)
    return (q * signs.unsqueeze(-2)).to(dtype)


def haar_stiefel(
    d1: int,
    d2: int,
    batch: tuple[int, ...] = (),
    *,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """Samples ``[*batch, d1, d2]`` matrices from the uniform (Haar-induced) measure on ``ST(d1, d2)``.

    Tall (``d1 >= d2``): the first ``d2`` columns of a Haar orthogonal matrix; wide: the first ``d1`` rows.
    """
    full = haar_orthogonal(max(d1, d2), batch, generator=generator, dtype=dtype)
    return full[..., :d1, :d2]


def orthogonality_error(omega: torch.Tensor) -> torch.Tensor:
    """``max |Omega^T Omega - I|`` (tall/square) or ``max |Omega Omega^T - I|`` (wide), per leading index."""
    d1, d2 = omega.shape[-2], omega.shape[-1]
    gram = omega.mT @ omega if d1 >= d2 else omega @ omega.mT
    eye = torch.eye(gram.shape[-1], dtype=omega.dtype, device=omega.device)
    return (gram - eye).abs().amax(dim=(-2, -1))


class Manifold(Protocol):
    """What an optimizer needs to know about the set a parameter lives on."""

    @property
    def name(self) -> str: ...

    @property
    def shape(self) -> tuple[int, ...]: ...

    def riemannian_gradient(self, point: torch.Tensor, euclidean_grad: torch.Tensor) -> torch.Tensor:
        """The Riemannian gradient of Eq. 8-9 (a skew generator for Stiefel/orthogonal points)."""
        ...

    def step(self, point: torch.Tensor, direction: torch.Tensor, alpha: float | torch.Tensor) -> torch.Tensor:
        """Moves ``point`` by ``alpha`` along ``direction`` (a Riemannian gradient), staying on the manifold."""
        ...

    def project(self, point: torch.Tensor) -> torch.Tensor:
        """The nearest point of the manifold (used once, to repair an initial value or a perturbed one)."""
        ...

    def in_manifold(self, point: torch.Tensor, atol: float = 1e-5) -> bool:
        """Whether every matrix of the batch lies on the manifold within ``atol`` (max-norm)."""
        ...

    def sample(
        self,
        batch: tuple[int, ...] = (),
        *,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float64,
    ) -> torch.Tensor:
        """A random point (Haar for the compact manifolds, standard Gaussian for vector spaces)."""
        ...


def _check_trailing(point: torch.Tensor, shape: tuple[int, ...], name: str) -> None:
    if tuple(point.shape[point.dim() - len(shape) :]) != shape or point.dim() < len(shape):
        raise ShapeError(f"{name}: expected trailing shape {shape}, got {tuple(point.shape)}")


@dataclass(frozen=True)
class Euclidean:
    """Unconstrained parameters: the Riemannian gradient is the Euclidean one, a step is ``x + alpha g``."""

    shape: tuple[int, ...]
    name: str = "euclidean"

    def riemannian_gradient(self, point: torch.Tensor, euclidean_grad: torch.Tensor) -> torch.Tensor:
        _check_trailing(euclidean_grad, self.shape, self.name)
        return euclidean_grad

    def step(self, point: torch.Tensor, direction: torch.Tensor, alpha: float | torch.Tensor) -> torch.Tensor:
        _check_trailing(point, self.shape, self.name)
        return point + _broadcast_alpha(alpha, point, len(self.shape)) * direction

    def project(self, point: torch.Tensor) -> torch.Tensor:
        _check_trailing(point, self.shape, self.name)
        return point

    def in_manifold(self, point: torch.Tensor, atol: float = 1e-5) -> bool:
        _check_trailing(point, self.shape, self.name)
        return bool(torch.isfinite(point).all())

    def sample(
        self,
        batch: tuple[int, ...] = (),
        *,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float64,
    ) -> torch.Tensor:
        return torch.randn(*batch, *self.shape, generator=generator, dtype=torch.float64).to(dtype)


@dataclass(frozen=True)
class Symmetric:
    """``S(d)``: the Riemannian gradient is ``(G + G^T) / 2`` (Eq. 8), a step is ``X + alpha sym(G)``."""

    d: int
    name: str = "symmetric"

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.d, self.d)

    def riemannian_gradient(self, point: torch.Tensor, euclidean_grad: torch.Tensor) -> torch.Tensor:
        _check_trailing(euclidean_grad, self.shape, self.name)
        return sym(euclidean_grad)

    def step(self, point: torch.Tensor, direction: torch.Tensor, alpha: float | torch.Tensor) -> torch.Tensor:
        _check_trailing(point, self.shape, self.name)
        return point + _broadcast_alpha(alpha, point, 2) * direction

    def project(self, point: torch.Tensor) -> torch.Tensor:
        _check_trailing(point, self.shape, self.name)
        return sym(point)

    def in_manifold(self, point: torch.Tensor, atol: float = 1e-5) -> bool:
        _check_trailing(point, self.shape, self.name)
        return bool(((point - point.mT).abs() <= atol).all())

    def sample(
        self,
        batch: tuple[int, ...] = (),
        *,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float64,
    ) -> torch.Tensor:
        g = torch.randn(*batch, self.d, self.d, generator=generator, dtype=torch.float64)
        return sym(g).to(dtype)


@dataclass(frozen=True)
class Stiefel:
    """``ST(d1, d2)`` in the paper's orientation convention; ``O(d)`` is ``Stiefel(d, d)``.

    The generator lives in ``Skew(max(d1, d2))``. See the module docstring for the wide case.
    """

    d1: int
    d2: int
    name: str = "stiefel"

    def __post_init__(self) -> None:
        if self.d1 < 1 or self.d2 < 1:
            raise ShapeError(f"Stiefel dimensions must be >= 1, got ({self.d1}, {self.d2})")

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.d1, self.d2)

    @property
    def tall(self) -> bool:
        return self.d1 >= self.d2

    def riemannian_gradient(self, point: torch.Tensor, euclidean_grad: torch.Tensor) -> torch.Tensor:
        """Eq. 8: ``G Omega^T - Omega G^T`` (tall/square) or ``G^T Omega - Omega^T G`` (wide)."""
        _check_trailing(point, self.shape, self.name)
        _check_trailing(euclidean_grad, self.shape, self.name)
        if self.tall:
            return euclidean_grad @ point.mT - point @ euclidean_grad.mT
        return euclidean_grad.mT @ point - point.mT @ euclidean_grad

    def step(self, point: torch.Tensor, direction: torch.Tensor, alpha: float | torch.Tensor) -> torch.Tensor:
        """``exp(alpha A) Omega`` (tall/square) or ``Omega exp(alpha A)^T`` (wide), ``A`` skew-symmetric."""
        _check_trailing(point, self.shape, self.name)
        k = max(self.d1, self.d2)
        _check_trailing(direction, (k, k), f"{self.name} generator")
        rotation = torch.linalg.matrix_exp(_broadcast_alpha(alpha, direction, 2) * direction)
        if self.tall:
            return rotation @ point
        return point @ rotation.mT

    def project(self, point: torch.Tensor) -> torch.Tensor:
        """Polar projection ``U V^T`` of the SVD ``U S V^T``: the nearest Stiefel point in Frobenius norm."""
        _check_trailing(point, self.shape, self.name)
        u, _, vh = torch.linalg.svd(point, full_matrices=False)
        return u @ vh

    def in_manifold(self, point: torch.Tensor, atol: float = 1e-5) -> bool:
        _check_trailing(point, self.shape, self.name)
        return bool((orthogonality_error(point) <= atol).all())

    def sample(
        self,
        batch: tuple[int, ...] = (),
        *,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float64,
    ) -> torch.Tensor:
        return haar_stiefel(self.d1, self.d2, batch, generator=generator, dtype=dtype)


def Orthogonal(d: int) -> Stiefel:  # noqa: N802 - reads as the group's name, O(d)
    """The orthogonal group ``O(d)``, the square case of ``ST(d, d)``."""
    return Stiefel(d, d, name="orthogonal")


def _broadcast_alpha(alpha: float | torch.Tensor, like: torch.Tensor, trailing: int) -> float | torch.Tensor:
    """Lets ``alpha`` be a scalar or one value per leading index (a population of step sizes)."""
    if isinstance(alpha, torch.Tensor) and alpha.dim() > 0:
        return alpha.reshape(*alpha.shape, *([1] * trailing)).to(like.dtype)
    if isinstance(alpha, float) and not math.isfinite(alpha):
        raise ManifoldError(f"step size must be finite, got {alpha}")
    return alpha
