"""Gate networks: the small networks of time (and optionally of the current weights) that drive a weight flow.

Shared by gated-ODEtoODE (whose flow uses their skew-symmetric part, Sec. 3.1) and HyperNet (which uses them raw, as
the paper's unconstrained hypernetwork baseline), so the two differ only in the constraint, as in the paper's tables.

Gate ``j`` is ``F_j(t, W) = L3 tanh(L2 tanh(L1 z + c1) + c2) + c3`` reshaped to ``h x h``, with ``z = [t]`` or
``z = [t, vec(W)]``; the flow's velocity combines the gates with learnable coefficients ``a_j``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch

from trainer.manifolds import Euclidean
from trainer.models.base import WeightFlowModel

GATE_PARAMETERS = ("gate_a", "gate_w1", "gate_b1", "gate_w2", "gate_b2", "gate_w3", "gate_b3")


def gate_manifolds(gates: int, width: int, hidden: int, weight_input: bool) -> dict[str, tuple[Euclidean, int]]:
    """Each gate parameter's (unconstrained) manifold and the fan-in of its initialization."""
    z = 1 + (hidden * hidden if weight_input else 0)
    hh = hidden * hidden
    return {
        "gate_a": (Euclidean((gates,)), 1),
        "gate_w1": (Euclidean((gates, width, z)), z),
        "gate_b1": (Euclidean((gates, width)), z),
        "gate_w2": (Euclidean((gates, width, width)), width),
        "gate_b2": (Euclidean((gates, width)), width),
        "gate_w3": (Euclidean((gates, hh, width)), width),
        "gate_b3": (Euclidean((gates, hh)), width),
    }


def gate_outputs(
    params: Mapping[str, torch.Tensor], t: float, weights: torch.Tensor, hidden: int, weight_input: bool
) -> torch.Tensor:
    """All gates evaluated at time ``t``: ``[..., gates, hidden, hidden]`` (``...``: population dims)."""
    a = params["gate_a"]
    lead = a.shape[:-1]
    z = torch.full((*lead, 1, 1), t, dtype=a.dtype, device=a.device)
    if weight_input:
        z = torch.cat([z, weights.flatten(-2).unsqueeze(-2)], dim=-1)
    z1 = torch.tanh((params["gate_w1"] @ z.unsqueeze(-1)).squeeze(-1) + params["gate_b1"])
    z2 = torch.tanh((params["gate_w2"] @ z1.unsqueeze(-1)).squeeze(-1) + params["gate_b2"])
    out = (params["gate_w3"] @ z2.unsqueeze(-1)).squeeze(-1) + params["gate_b3"]
    return out.unflatten(-1, (hidden, hidden))


def gate_outputs_over_time(params: Mapping[str, torch.Tensor], times: torch.Tensor, hidden: int) -> torch.Tensor:
    """Gates that read only ``t``, at every time of ``times`` ([T]) at once: ``[..., T, gates, hidden, hidden]``.

    One batched evaluation instead of ``T`` small ones: with ``weight_input=False`` the gates do not depend on the
    flow, so the whole sequence is known up front.
    """
    a = params["gate_a"]
    lead = a.shape[:-1]
    z = times.to(a.dtype).reshape(-1, 1).expand(*lead, times.numel(), 1)  # [..., T, 1]
    # einsum keeps the gate weights un-expanded over T (a broadcast matmul would copy them T times).
    z1 = torch.tanh(torch.einsum("...ti,...koi->...tko", z, params["gate_w1"]) + params["gate_b1"].unsqueeze(-3))
    z2 = torch.tanh(torch.einsum("...tki,...koi->...tko", z1, params["gate_w2"]) + params["gate_b2"].unsqueeze(-3))
    out = torch.einsum("...tki,...koi->...tko", z2, params["gate_w3"]) + params["gate_b3"].unsqueeze(-3)
    return out.unflatten(-1, (hidden, hidden))


def combine_gates(a: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
    """``sum_j a_j G_j`` over the gate axis: ``a: [..., k]``, ``gates: [..., k, h, h]`` -> ``[..., h, h]``."""
    return torch.einsum("...k,...kij->...ij", a, gates)


class GatedWeightFlow(WeightFlowModel):
    """A weight flow driven by gate networks: what gated-ODEtoODE and HyperNet share (parameters, constructor).

    Args (beyond ``FlowModel``'s):
        gates: number of gates ``k`` (the paper's ODEtoODE-1/-2/-4/-10, HyperNet-k).
        gate_width: hidden width of each gate network (two hidden layers); default ``default_gate_width``.
        weight_input: whether the gates also read ``vec(W_t)`` (``h^2`` more inputs per gate); default
            ``default_weight_input``.
    """

    default_gate_width: ClassVar[int] = 8
    default_weight_input: ClassVar[bool] = False

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        gates: int = 1,
        gate_width: int | None = None,
        weight_input: bool | None = None,
        **kwargs: Any,
    ) -> None:
        gate_width = self.default_gate_width if gate_width is None else gate_width
        weight_input = self.default_weight_input if weight_input is None else weight_input
        super().__init__(in_features, out_features, **kwargs)
        if gates < 1 or gate_width < 1:
            raise ValueError(f"gates and gate_width must be >= 1, got {gates}, {gate_width}")
        self.gates, self.gate_width, self.weight_input = gates, gate_width, weight_input
        self.config.update(gates=gates, gate_width=gate_width, weight_input=weight_input)
        h = self.hidden
        self.add_parameter("b", Euclidean((h,)), fan_in=h)
        for name, (manifold, fan_in) in gate_manifolds(gates, gate_width, h, weight_input).items():
            self.add_parameter(name, manifold, fan_in=fan_in)
