"""What every architecture shares: input/output projections, manifold-tagged parameters, and the unrolled program.

A model is ``out = P_out(flow(P_in(s)))``. Subclasses define only ``flow_layers``: the layers of their flow as a
function of a parameter mapping (``WeightFlowModel`` narrows that to the weight flow ``W_1..W_N``), so the same code
evaluates

* the module's own parameters (``forward``, with autograd);
* a population of parameter sets stacked on leading dimensions (``program(params)``, used by evolution strategies);
* float64 copies with no graph (``unroll``, used by the exporter).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from odetoode.modelfile import Arch
from trainer.manifolds import Euclidean, Manifold, Orthogonal, Stiefel, haar_orthogonal
from trainer.program import ACTIVATIONS, Dense, Layer, Program, Residual

Projection = Literal["stiefel", "linear"]
Params = Mapping[str, torch.Tensor]


def uniform_init(shape: tuple[int, ...], fan_in: int, generator: torch.Generator | None) -> torch.Tensor:
    """``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``, the default of ``nn.Linear``, in float64."""
    bound = 1.0 / math.sqrt(max(fan_in, 1))
    return (torch.rand(*shape, generator=generator, dtype=torch.float64) * 2 - 1) * bound


class FlowModel(nn.Module, ABC):
    """Base class: a projection into ``hidden`` dimensions, a flow of ``steps`` layers, a projection out.

    Args:
        in_features: input size (observation dimension, or 784 for a flattened 28x28 image).
        out_features: output size (action dimension, or number of classes).
        hidden: width ``h`` of the flow.
        steps: number of Euler steps ``N`` (or layers, for the discrete baselines).
        horizon: integration time ``T``; the step size is ``T / N`` (the paper: ``T = 1``, ``N = 25``).
        activation: the nonlinearity ``f`` of the main flow (the paper: ``|x|``).
        projection: ``"stiefel"`` for Stiefel-constrained projections without bias (the paper's ODEtoODE policies),
            ``"linear"`` for unconstrained projections with bias.
        generator: random source for initialization.
        dtype: parameter dtype (initial values are always drawn in float64).
    """

    arch: ClassVar[Arch]
    default_projection: ClassVar[Projection] = "linear"
    input_activation: ClassVar[bool] = False

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        hidden: int = 16,
        steps: int = 25,
        horizon: float = 1.0,
        activation: str = "abs",
        projection: Projection | None = None,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        if in_features < 1 or out_features < 1 or hidden < 1 or steps < 1:
            raise ValueError(
                f"in_features, out_features, hidden and steps must be >= 1, got "
                f"{in_features}, {out_features}, {hidden}, {steps}"
            )
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        if not (horizon > 0 and math.isfinite(horizon)):
            raise ValueError(f"horizon must be a positive finite number, got {horizon}")
        projection = projection or self.default_projection
        if projection not in ("stiefel", "linear"):
            raise ValueError(f"projection must be 'stiefel' or 'linear', got {projection!r}")
        self.in_features = in_features
        self.out_features = out_features
        self.hidden = hidden
        self.steps = steps
        self.horizon = horizon
        self.activation = activation
        self.projection: Projection = projection
        self._dtype = dtype
        self._generator = generator
        self.manifolds: dict[str, Manifold] = {}
        self.config: dict[str, Any] = {
            "in_features": in_features,
            "out_features": out_features,
            "hidden": hidden,
            "steps": steps,
            "horizon": horizon,
            "activation": activation,
            "projection": projection,
        }
        if projection == "stiefel":
            self.add_parameter("omega1", Stiefel(hidden, in_features))
            self.add_parameter("omega2", Stiefel(out_features, hidden))
        else:
            self.add_parameter("w_in", Euclidean((hidden, in_features)), fan_in=in_features)
            self.add_parameter("b_in", Euclidean((hidden,)), fan_in=in_features)
            self.add_parameter("w_out", Euclidean((out_features, hidden)), fan_in=hidden)
            self.add_parameter("b_out", Euclidean((out_features,)), fan_in=hidden)

    # -- parameters -----------------------------------------------------------------------------------------------

    def add_parameter(
        self,
        name: str,
        manifold: Manifold,
        *,
        fan_in: int | None = None,
        value: torch.Tensor | None = None,
    ) -> None:
        """Registers a parameter with the manifold it lives on and an initial value.

        Compact manifolds start at a Haar-random point; vector spaces at ``U(+-1/sqrt(fan_in))`` unless ``value``
        is given. Draws from the ``generator`` given to the constructor.
        """
        if value is None:
            if isinstance(manifold, Stiefel):
                value = manifold.sample(generator=self._generator)
            else:
                value = uniform_init(manifold.shape, fan_in or manifold.shape[-1], self._generator)
                value = manifold.project(value)
        self.register_parameter(name, nn.Parameter(value.to(self._dtype)))
        self.manifolds[name] = manifold

    def parameter_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.named_parameters())

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @property
    def step_size(self) -> float:
        return self.horizon / self.steps

    # -- the program ----------------------------------------------------------------------------------------------

    def input_layers(self, p: Params) -> tuple[Layer, ...]:
        act = self.activation if self.input_activation else None
        if self.projection == "stiefel":
            return (Dense(p["omega1"], None, act),)
        return (Dense(p["w_in"], p["b_in"], act),)

    def output_layers(self, p: Params) -> tuple[Layer, ...]:
        if self.projection == "stiefel":
            return (Dense(p["omega2"]),)
        return (Dense(p["w_out"], p["b_out"]),)

    @abstractmethod
    def flow_layers(self, p: Params) -> tuple[Layer, ...]:
        """The layers between the projections, as functions of the parameters ``p`` (leading dims allowed)."""

    def program(self, params: Params | None = None) -> Program:
        """The whole model as a ``Program`` for parameters ``params`` (default: the module's own)."""
        p = self.parameter_dict() if params is None else params
        return Program(self.input_layers(p) + self.flow_layers(p) + self.output_layers(p))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x: [batch, in_features] -> [batch, out_features]``."""
        if x.shape[-1] != self.in_features:
            raise ValueError(f"expected inputs with {self.in_features} features, got shape {tuple(x.shape)}")
        return self.program()(x)

    @torch.no_grad()
    def unroll(self) -> Program:
        """The program with every constant computed in float64 from the current parameters (for export)."""
        p = {name: value.detach().to(torch.float64) for name, value in self.named_parameters()}
        return self.program(p)


class WeightFlowModel(FlowModel):
    """The paper's nested flow: ``x_i = x_{i-1} + (1/N) f(W_i x_{i-1} + b)`` on weights ``W_1..W_N`` that follow a
    weight flow from a learnable ``W_0`` (ISO-ODEtoODE, gated-ODEtoODE, HyperNet).

    Subclasses supply only the weight flow: ``flow_matrices(p)``, the parameters it reads (registered in their
    constructor, together with the main flow's bias ``b``), and, if ``W_0`` is not meant to stay orthogonal,
    ``initial_weight_manifold``. ``W_0`` itself starts Haar-random on ``O(h)`` in every subclass.
    """

    def __init__(self, in_features: int, out_features: int, **kwargs: Any) -> None:
        super().__init__(in_features, out_features, **kwargs)
        w0 = haar_orthogonal(self.hidden, generator=self._generator)
        self.add_parameter("w0", self.initial_weight_manifold(), value=w0)

    def initial_weight_manifold(self) -> Manifold:
        """Where ``W_0`` lives: ``O(h)`` (ODEtoODE); unconstrained flows override it."""
        return Orthogonal(self.hidden)

    @abstractmethod
    def flow_matrices(self, p: Params) -> list[torch.Tensor]:
        """``W_1..W_N`` for parameters ``p`` (each ``[..., h, h]``; leading population dims allowed)."""

    def flow_layers(self, p: Params) -> tuple[Layer, ...]:
        return tuple(Residual(self.step_size, (Dense(w, p["b"], self.activation),)) for w in self.flow_matrices(p))
