"""Gate networks: the small networks of time (and optionally of the current weights) that drive a weight flow.

Shared by gated-ODEtoODE (whose flow uses their skew-symmetric part, Sec. 3.1) and HyperNet (which uses them raw, as
the paper's unconstrained hypernetwork baseline). Built from the same ``GateNetworkSpec`` the two differ only in the
constraint -- the comparison of the paper's supervised tables, which build both from ``TIME_GATES``. The class
defaults differ: gated-ODEtoODE's is ``TIME_GATES``, HyperNet's the paper's RL hypernetwork (``RL_HYPERNET_GATES``).

Gate ``j`` is ``F_j(t, W) = L3 tanh(L2 tanh(L1 z + c1) + c2) + c3`` reshaped to ``h x h``, with ``z = [t]`` or
``z = [t, vec(W)]``; the flow's velocity combines the gates with learnable coefficients ``a_j``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
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


@dataclass(frozen=True)
class GateNetworkSpec:
    """The shape shared by the ``k`` gate networks of one model: two tanh hidden layers of ``width`` units, reading
    ``z = [t]`` or, with ``weight_input``, ``z = [t, vec(W_t)]``.

    Two models built from one spec have gate parts of equal size (``parameter_count``) whatever their constraint.
    """

    width: int
    """Hidden width of each gate network (both hidden layers)."""
    weight_input: bool = False
    """Whether the gates also read ``vec(W_t)`` (``h^2`` more inputs per gate, and a step-by-step flow)."""

    def __post_init__(self) -> None:
        if self.width < 1:
            raise ValueError(f"gate width must be >= 1, got {self.width}")

    def options(self) -> dict[str, Any]:
        """The model keyword arguments (``gate_width``, ``weight_input``) that build gates of this shape."""
        return {"gate_width": self.width, "weight_input": self.weight_input}

    def parameter_count(self, gates: int, hidden: int) -> int:
        """Parameters of ``gates`` such networks in a flow of width ``hidden`` (every ``GATE_PARAMETERS`` entry)."""
        return sum(
            math.prod(manifold.shape)
            for manifold, _ in gate_manifolds(gates, self.width, hidden, self.weight_input).values()
        )


TIME_GATES = GateNetworkSpec(width=8)
"""gated-ODEtoODE's gates, networks of ``t`` alone (the whole flow is then one batched ``matrix_exp``); the
supervised tables build HyperNet-k's from this spec too, so the two columns differ only in the constraint."""
WIDE_TIME_GATES = GateNetworkSpec(width=16)
"""Width-16 gates of ``t``: what supervised HyperNet-k used before its gates were made equal to ODEtoODE-k's (kept
for the ablation; at h = 128 they make HyperNet-1 397k parameters against ODEtoODE-1's 266k)."""
RL_HYPERNET_GATES = GateNetworkSpec(width=16, weight_input=True)
"""The paper's RL hypernetwork (Sec. 5.1.2: two hidden layers of 16, an output reshaped to ``W_t``, driven by the
flow's state): ``HyperNet``'s class default, used by the RL comparison."""


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
        gate_width: hidden width of each gate network (two hidden layers); default ``default_gates.width``.
        weight_input: whether the gates also read ``vec(W_t)`` (``h^2`` more inputs per gate); default
            ``default_gates.weight_input``.

    ``gate_width`` and ``weight_input`` are the serialized form of a ``GateNetworkSpec`` (``spec.options()``);
    ``gate_network`` gives it back.
    """

    default_gates: ClassVar[GateNetworkSpec] = TIME_GATES

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
        gate_width = self.default_gates.width if gate_width is None else gate_width
        weight_input = self.default_gates.weight_input if weight_input is None else weight_input
        super().__init__(in_features, out_features, **kwargs)
        if gates < 1 or gate_width < 1:
            raise ValueError(f"gates and gate_width must be >= 1, got {gates}, {gate_width}")
        self.gates, self.gate_width, self.weight_input = gates, gate_width, weight_input
        self.config.update(gates=gates, gate_width=gate_width, weight_input=weight_input)
        h = self.hidden
        self.add_parameter("b", Euclidean((h,)), fan_in=h)
        for name, (manifold, fan_in) in gate_manifolds(gates, gate_width, h, weight_input).items():
            self.add_parameter(name, manifold, fan_in=fan_in)

    @property
    def gate_network(self) -> GateNetworkSpec:
        """The shape of this model's gate networks."""
        return GateNetworkSpec(self.gate_width, self.weight_input)

    def gate_parameter_count(self) -> int:
        """Parameters of the gate networks alone (``GATE_PARAMETERS``): not ``W_0``, ``b`` or the projections."""
        return sum(getattr(self, name).numel() for name in GATE_PARAMETERS)
