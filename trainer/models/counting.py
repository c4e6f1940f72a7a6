"""Counting a model's parameters two ways: ambient (the numbers stored) and intrinsic (the dimension of the manifold
they live on).

ES perturbs and the exporter stores every ambient entry, but a constrained parameter has fewer degrees of freedom
than entries: its manifold's dimension,

* ``O(d)``: ``d (d - 1) / 2`` (the dimension of its Lie algebra ``Skew(d)``);
* ``ST(n, p)`` (``n x p``, orthonormal columns when ``n >= p``, rows otherwise; ``k = min(n, p)``):
  ``n p - k (k + 1) / 2`` (the ``k (k + 1) / 2`` constraints ``Omega^T Omega = I`` or ``Omega Omega^T = I``);
  ``O(d)`` is the case ``n = p = d``;
* ``S(d)``, symmetric matrices: ``d (d + 1) / 2``;
* ``R^shape``: every entry.

``intrinsic_parameters(model)`` sums these over a model's parameters, by the manifold each one is registered with
(``FlowModel.manifolds``). For ISO-ODEtoODE (``h = 16``, HalfCheetah's ``d = 17``, ``m = 6``) that is 619 of 1152
ambient numbers. It counts the parameter manifold, not what the function can distinguish (symmetries of the flow
that leave the policy unchanged are not quotiented out).
"""

from __future__ import annotations

import math

from trainer.manifolds import Euclidean, Manifold, Stiefel, Symmetric
from trainer.models.base import FlowModel


def manifold_dimension(manifold: Manifold) -> int:
    """The dimension of ``manifold`` (closed forms above); raises ``TypeError`` for a manifold it does not know."""
    if isinstance(manifold, Stiefel):
        k = min(manifold.d1, manifold.d2)
        return manifold.d1 * manifold.d2 - k * (k + 1) // 2
    if isinstance(manifold, Symmetric):
        return manifold.d * (manifold.d + 1) // 2
    if isinstance(manifold, Euclidean):
        return math.prod(manifold.shape)
    raise TypeError(f"no dimension known for manifold {manifold!r}")


def ambient_parameters(model: FlowModel) -> int:
    """Every stored number (``model.num_parameters()``)."""
    return model.num_parameters()


def intrinsic_parameters(model: FlowModel) -> int:
    """The sum of the manifold dimensions of ``model``'s parameters; equals ``ambient_parameters`` for a model whose
    parameters are all unconstrained."""
    names = {name for name, _ in model.named_parameters()}
    if names != set(model.manifolds):
        raise ValueError(f"parameters without a manifold or manifolds without a parameter: "
                         f"{sorted(names ^ set(model.manifolds))}")  # fmt: skip
    return sum(manifold_dimension(model.manifolds[name]) for name in sorted(names))
