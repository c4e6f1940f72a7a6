"""The paper's baselines (Sec. 5.1.2 and 5.2.2), on the same projections and main flow as ODEtoODE.

Where the paper leaves a detail open, the baselines reuse ODEtoODE's main flow ``x <- x + (1/N) f(W_t x + b)`` so
that only the *weight* flow differs between architectures -- the comparison the paper is about:

* DeepNet / Dense: ``depth`` hidden layers ``x <- f(W_l x + b_l)`` (the first one is the input projection), with
  weights scaled to the activation so the signal's second moment is preserved layer to layer (``activation_gain``);
* DeepResNet: ``depth`` residual layers ``x <- x + f(W_l x + b_l)``;
* BaseODE (NODE): ``dx/dt = MLP(x)``, two hidden layers of size ``h``, time-independent weights;
* NANODE: ``W_t`` a trigonometric polynomial of degree ``d`` in ``t`` with learnable matrix coefficients;
* HyperNet: ``W_t`` the state of an unconstrained weight ODE ``dW/dt = sum_j a_j F_j(t, W)`` driven by gate networks
  (``trainer.models.gates``). Its class default is the paper's RL hypernetwork (``RL_HYPERNET_GATES``: width 16,
  reading ``vec(W)``); given ``TIME_GATES.options()``, as the supervised tables do, its gates are gated-ODEtoODE's.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from typing import Any, ClassVar

import torch

from odetoode.modelfile import Arch
from trainer.manifolds import Euclidean, Manifold
from trainer.models.base import FlowModel, Params, uniform_init
from trainer.models.gates import (
    RL_HYPERNET_GATES,
    GatedWeightFlow,
    GateNetworkSpec,
    combine_gates,
    gate_outputs,
    gate_outputs_over_time,
)
from trainer.program import ACTIVATIONS, Dense, Layer, Residual


def activation_gain(activation: str) -> float:
    """The weight gain that keeps ``E[x^2]`` constant through a layer ``x <- f(W x + b)`` at initialization.

    With zero-mean weights of variance ``g^2 / fan_in`` and ``z = W x``, ``E[z^2] = g^2 E[x^2]``; for ``z`` symmetric
    about 0, ``E[f(z)^2] = r E[z^2]`` with ``r = 1`` for ``|x|`` (it keeps magnitudes), ``1/2`` for ReLU (it zeroes
    half of them) and ``~1`` for tanh near 0. So ``g = 1/sqrt(r)``: 1 for ``|x|`` and tanh (LeCun), ``sqrt(2)`` for
    ReLU (He et al. 2015). With ``nn.Linear``'s default scale (``g^2 = 1/3``) ``E[x^2]`` shrinks 3x per ``|x|`` layer
    and 6x per ReLU layer, and a 10-layer stack barely trains.
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
    return math.sqrt(2.0) if activation == "relu" else 1.0


class LayerStack(FlowModel):
    """``depth`` discrete layers of width ``hidden`` in place of Euler steps (DeepNet, DeepResNet).

    ``steps`` defaults to ``depth`` (it only labels the model); subclasses supply their layers' parameters
    (``add_layer_parameters``) and the layers (``flow_layers``).
    """

    def __init__(self, in_features: int, out_features: int, *, depth: int = 25, **kwargs: Any) -> None:
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        kwargs.setdefault("steps", depth)
        super().__init__(in_features, out_features, **kwargs)
        self.depth = depth
        self.config.update(depth=depth)
        self.add_layer_parameters()

    @abstractmethod
    def add_layer_parameters(self) -> None:
        """Registers the parameters of the ``depth`` layers (called once, at the end of construction)."""


class DeepNet(LayerStack):
    """A plain feed-forward network with ``depth`` hidden layers of width ``hidden`` (the paper: 25).

    ``steps`` is ignored; ``depth`` counts hidden layers including the input projection's, so ``depth = k`` is the
    paper's Dense-k.
    """

    arch: ClassVar[Arch] = "deepnet"
    input_activation: ClassVar[bool] = True

    def add_layer_parameters(self) -> None:
        h, depth, in_features = self.hidden, self.depth, self.in_features
        # uniform_init has variance 1/(3 fan_in): sqrt(3) makes it 1/fan_in before the activation's own gain.
        gain = math.sqrt(3.0) * activation_gain(self.activation)
        if self.projection == "linear":
            self.add_parameter(
                "w_in", Euclidean((h, in_features)),
                value=uniform_init((h, in_features), in_features, self._generator) * gain,
            )  # fmt: skip
        if depth > 1:
            weights = uniform_init((depth - 1, h, h), h, self._generator) * gain
            self.add_parameter("weights", Euclidean((depth - 1, h, h)), value=weights)
            self.add_parameter("biases", Euclidean((depth - 1, h)), fan_in=h)

    def flow_layers(self, p: Params) -> tuple[Layer, ...]:
        return tuple(
            Dense(p["weights"][..., layer, :, :], p["biases"][..., layer, :], self.activation)
            for layer in range(self.depth - 1)
        )


class DenseK(DeepNet):
    """Dense-k of the supervised tables: ``DeepNet`` with ``depth = k`` (default 1).

    ``activation`` is ``"abs"`` (the default: the flows' ``f(x) = |x|``, so every column of a table shares one
    nonlinearity) or ``"relu"`` (the usual choice for a plain network, kept as a named variant so both can be
    reported). Either way the weights start at the scale that preserves the signal's second moment through that
    activation (``activation_gain``): LeCun's ``Var(w) = 1/fan_in`` for ``|x|``, He's ``2/fan_in`` for ReLU.
    """

    arch: ClassVar[Arch] = "dense"
    activations: ClassVar[tuple[str, ...]] = ("abs", "relu")

    def __init__(self, in_features: int, out_features: int, *, depth: int = 1, **kwargs: Any) -> None:
        activation = kwargs.setdefault("activation", "abs")
        if activation not in self.activations:
            raise ValueError(f"Dense-k's activation must be one of {list(self.activations)}, got {activation!r}")
        super().__init__(in_features, out_features, depth=depth, **kwargs)


class DeepResNet(LayerStack):
    """``depth`` residual layers ``x <- x + f(W_l x + b_l)`` of width ``hidden`` (the paper: 25)."""

    arch: ClassVar[Arch] = "deepresnet"

    def add_layer_parameters(self) -> None:
        h, depth = self.hidden, self.depth
        # Residual branches start scaled by 1/sqrt(depth) (as in Fixup-style inits): with the default scale a
        # 25-block ResNet's output grows by ~1e7 at initialization and ES starts from saturated actions.
        shrink = 1.0 / math.sqrt(depth)
        self.add_parameter(
            "weights", Euclidean((depth, h, h)), value=uniform_init((depth, h, h), h, self._generator) * shrink
        )
        self.add_parameter("biases", Euclidean((depth, h)), fan_in=h)

    def flow_layers(self, p: Params) -> tuple[Layer, ...]:
        return tuple(
            Residual(1.0, (Dense(p["weights"][..., layer, :, :], p["biases"][..., layer, :], self.activation),))
            for layer in range(self.depth)
        )


class BaseODE(FlowModel):
    """A standard neural ODE ``dx/dt = g(x)``, ``g`` fully connected with two hidden layers of size ``hidden``."""

    arch: ClassVar[Arch] = "baseode"

    def __init__(self, in_features: int, out_features: int, **kwargs: Any) -> None:
        super().__init__(in_features, out_features, **kwargs)
        h = self.hidden
        for i in (1, 2, 3):
            self.add_parameter(f"f{i}_w", Euclidean((h, h)), fan_in=h)
            self.add_parameter(f"f{i}_b", Euclidean((h,)), fan_in=h)

    def flow_layers(self, p: Params) -> tuple[Layer, ...]:
        field = (
            Dense(p["f1_w"], p["f1_b"], self.activation),
            Dense(p["f2_w"], p["f2_b"], self.activation),
            Dense(p["f3_w"], p["f3_b"]),
        )
        return tuple(Residual(self.step_size, field) for _ in range(self.steps))


class NANODE(FlowModel):
    """Non-autonomous neural ODE: ``W(t) = C_0 + sum_{j=1..d} C_j cos(2 pi j t / T) + S_j sin(2 pi j t / T)``."""

    arch: ClassVar[Arch] = "nanode"

    def __init__(self, in_features: int, out_features: int, *, degree: int = 5, **kwargs: Any) -> None:
        super().__init__(in_features, out_features, **kwargs)
        if degree < 0:
            raise ValueError(f"degree must be >= 0, got {degree}")
        self.degree = degree
        self.config.update(degree=degree)
        h = self.hidden
        terms = 2 * degree + 1
        # Scale so that W(t) starts with the variance of one default-initialized layer whatever the degree.
        value = uniform_init((terms, h, h), h, self._generator) / math.sqrt(terms)
        self.add_parameter("coefficients", Euclidean((terms, h, h)), value=value)
        self.add_parameter("b", Euclidean((h,)), fan_in=h)

    def basis(self, t: float) -> list[float]:
        """``[1, cos(2 pi t/T), sin(2 pi t/T), ..., cos(2 pi d t/T), sin(2 pi d t/T)]``."""
        values = [1.0]
        for j in range(1, self.degree + 1):
            angle = 2 * math.pi * j * t / self.horizon
            values += [math.cos(angle), math.sin(angle)]
        return values

    def flow_layers(self, p: Params) -> tuple[Layer, ...]:
        c = p["coefficients"]
        layers: list[Layer] = []
        for i in range(1, self.steps + 1):
            phi = torch.tensor(self.basis(i * self.step_size), dtype=c.dtype, device=c.device)
            w = torch.einsum("m,...mij->...ij", phi, c)
            layers.append(Residual(self.step_size, (Dense(w, p["b"], self.activation),)))
        return tuple(layers)


class HyperNet(GatedWeightFlow):
    """Unconstrained hypernetwork flow ``W_i = W_{i-1} + (1/N) sum_j a_j F_j(t_{i-1}, W_{i-1})`` (no orthogonality).

    Gates as in ``GatedWeightFlow``; by default the paper's RL hypernetwork (``RL_HYPERNET_GATES``: width 16, reading
    ``vec(W)``). The supervised HyperNet-k passes gated-ODEtoODE-k's spec (``TIME_GATES``) instead.
    """

    arch: ClassVar[Arch] = "hypernet"
    default_gates: ClassVar[GateNetworkSpec] = RL_HYPERNET_GATES

    def initial_weight_manifold(self) -> Manifold:
        # Starts from an orthogonal W_0 like ODEtoODE, so any difference comes from the unconstrained flow.
        return Euclidean((self.hidden, self.hidden))

    def flow_matrices(self, p: Params) -> list[torch.Tensor]:
        w = p["w0"]
        if not self.weight_input:
            # The velocity depends on t alone: W_i = W_0 + eta sum_{m < i} v(t_m), a cumulative sum.
            times = torch.arange(self.steps, dtype=w.dtype, device=w.device) * self.step_size
            velocity = combine_gates(p["gate_a"].unsqueeze(-2), gate_outputs_over_time(p, times, self.hidden))
            flow = w.unsqueeze(-3) + self.step_size * torch.cumsum(velocity, dim=-3)
            return list(flow.unbind(-3))
        out = []
        for i in range(self.steps):
            f = gate_outputs(p, i * self.step_size, w, self.hidden, self.weight_input)
            w = w + self.step_size * combine_gates(p["gate_a"], f)
            out.append(w)
        return out
