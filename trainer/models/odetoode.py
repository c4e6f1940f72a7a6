"""ISO-ODEtoODE and gated-ODEtoODE (Sec. 3.1 and Eq. 5-6 of the paper).

Both are nested flows: the main flow ``x_i = x_{i-1} + (1/N) f(W_i x_{i-1} + b)`` runs on weights ``W_i`` that
evolve on the orthogonal group by the exact exponential map ``W_i = W_{i-1} exp(eta b_psi(t_{i-1}, W_{i-1}))``,
``b_psi`` skew-symmetric. Because ``b_psi`` never sees ``x``, the weights are constants of the model (``unroll``).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from odetoode.modelfile import Arch
from trainer.manifolds import Euclidean, Symmetric, sym
from trainer.models.base import Params, Projection, WeightFlowModel
from trainer.models.gates import GatedWeightFlow, combine_gates, gate_outputs, gate_outputs_over_time


class IsoODEtoODE(WeightFlowModel):
    """ISO-ODEtoODE: the isospectral double-bracket flow on ``O(h)``.

    ``b_iso(W) = [W^T Q W, N] = W^T Q W N - N W^T Q W`` with learnable symmetric ``Q, N``, learnable ``W_0`` in
    ``O(h)``, bias ``b`` in ``R^h``, and Stiefel projections ``Omega_1 in ST(h, d)``, ``Omega_2 in ST(m, h)`` (Eq. 5-6;
    the paper's ``G_{i-1}`` in Eq. 6 is ``W_{i-1}``). ``Q`` and ``N`` enter through their symmetric parts, so a
    perturbation that breaks their symmetry (ES explores the ambient space) still yields a skew generator and an
    orthogonal flow.
    """

    arch: ClassVar[Arch] = "iso-odetoode"
    default_projection: ClassVar[Projection] = "stiefel"

    def __init__(self, in_features: int, out_features: int, **kwargs: Any) -> None:
        super().__init__(in_features, out_features, **kwargs)
        h = self.hidden
        self.add_parameter("q", Symmetric(h), fan_in=h)
        self.add_parameter("n", Symmetric(h), fan_in=h)
        self.add_parameter("b", Euclidean((h,)), fan_in=h)

    def flow_matrices(self, p: Params) -> list[torch.Tensor]:
        w = p["w0"]
        q, n = sym(p["q"]), sym(p["n"])
        out = []
        for _ in range(self.steps):
            h = w.mT @ q @ w
            w = w @ torch.linalg.matrix_exp(self.step_size * (h @ n - n @ h))
            out.append(w)
        return out


class GatedODEtoODE(GatedWeightFlow):
    """gated-ODEtoODE: ``b_psi(t, W) = sum_j a_j (F_j - F_j^T)`` with ``F_j`` small networks of ``t`` (and ``W``).

    Gates as in ``GatedWeightFlow`` (default width 8, reading ``t`` only).
    """

    arch: ClassVar[Arch] = "gated-odetoode"
    default_projection: ClassVar[Projection] = "stiefel"

    def flow_matrices(self, p: Params) -> list[torch.Tensor]:
        w = p["w0"]
        out = []
        if not self.weight_input:
            # b_psi depends on t alone: every rotation exp(eta b_psi(t_i)) in one batched call, then the products.
            times = torch.arange(self.steps, dtype=w.dtype, device=w.device) * self.step_size
            f = gate_outputs_over_time(p, times, self.hidden)
            rotations = torch.linalg.matrix_exp(self.step_size * combine_gates(p["gate_a"].unsqueeze(-2), f - f.mT))
            for i in range(self.steps):
                w = w @ rotations[..., i, :, :]
                out.append(w)
            return out
        for i in range(self.steps):
            f = gate_outputs(p, i * self.step_size, w, self.hidden, self.weight_input)
            b_psi = combine_gates(p["gate_a"], f - f.mT)
            w = w @ torch.linalg.matrix_exp(self.step_size * b_psi)
            out.append(w)
        return out
