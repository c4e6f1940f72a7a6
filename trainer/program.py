"""The unrolled program: what every model in this package reduces to once its weight flow is computed.

In ODEtoODE, NANODE, HyperNet and BaseODE the weights used at step ``i`` depend only on parameters and time, never on
the input, so a model is a fixed chain of two kinds of layer:

* ``Dense(W, b, f)``: ``x <- f(W x + b)``;
* ``Residual(h, body)``: ``x <- x + h * body(x)`` (an Euler step of size ``h``, or a ResNet block with ``h = 1``).

Training code builds a ``Program`` from live parameters (so autograd flows through the matrix flow) and applies it;
the exporter builds one from float64 parameters and bakes its constants into an ONNX graph. One representation for
both is what makes the torch/ONNX parity checks meaningful.

Tensors may carry leading *population* dimensions (``W: [..., out, in]``, ``b: [..., out]``, ``x: [..., batch, in]``)
so one ``Program`` evaluates many perturbed parameter sets in one batched matmul per layer. ``apply`` only uses
``@``, ``.mT``, ``abs`` and elementwise arithmetic, so it also runs on numpy arrays (numpy >= 2).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeAlias

import numpy as np
import torch

__all__ = ["ACTIVATIONS", "Dense", "Layer", "Program", "Residual"]


def _relu(x: Any) -> Any:
    return x * (x > 0)


def _tanh(x: Any) -> Any:
    return np.tanh(x) if isinstance(x, np.ndarray) else torch.tanh(x)


# name -> (function, Lipschitz constant). Every activation here is 1-Lipschitz, which the certificate relies on.
ACTIVATIONS: dict[str, tuple[Callable[[Any], Any], float]] = {
    "abs": (abs, 1.0),
    "relu": (_relu, 1.0),
    "tanh": (_tanh, 1.0),
}


@dataclass(frozen=True)
class Dense:
    """``x <- f(x W^T + b)``; ``weight: [..., out, in]``, ``bias: [..., out]`` or ``None``, ``f`` a name or ``None``."""

    weight: Any
    bias: Any = None
    activation: str | None = None

    def __post_init__(self) -> None:
        if self.activation is not None and self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}; expected one of {sorted(ACTIVATIONS)}")

    @property
    def in_features(self) -> int:
        return int(self.weight.shape[-1])

    @property
    def out_features(self) -> int:
        return int(self.weight.shape[-2])


@dataclass(frozen=True)
class Residual:
    """``x <- x + scale * body(x)``."""

    scale: float
    body: tuple[Layer, ...]


Layer: TypeAlias = Dense | Residual


def _apply_layers(layers: tuple[Layer, ...], x: Any) -> Any:
    for layer in layers:
        if isinstance(layer, Dense):
            y = x @ layer.weight.mT
            if layer.bias is not None:
                # bias [..., out] -> [..., 1, out] so it broadcasts over the batch axis of x
                y = y + layer.bias[..., None, :]
            if layer.activation is not None:
                y = ACTIVATIONS[layer.activation][0](y)
            x = y
        else:
            x = x + layer.scale * _apply_layers(layer.body, x)
    return x


def _map_layers(layers: tuple[Layer, ...], fn: Callable[[Any], Any]) -> tuple[Layer, ...]:
    out: list[Layer] = []
    for layer in layers:
        if isinstance(layer, Dense):
            bias = None if layer.bias is None else fn(layer.bias)
            out.append(Dense(fn(layer.weight), bias, layer.activation))
        else:
            out.append(Residual(layer.scale, _map_layers(layer.body, fn)))
    return tuple(out)


def _walk(layers: tuple[Layer, ...]) -> Iterator[Layer]:
    for layer in layers:
        yield layer
        if isinstance(layer, Residual):
            yield from _walk(layer.body)


def _as_float64_tensor(t: Any) -> torch.Tensor:
    if isinstance(t, torch.Tensor):
        return t.detach().to("cpu", torch.float64)
    return torch.from_numpy(np.asarray(t, dtype=np.float64))


def _lipschitz(layers: tuple[Layer, ...]) -> float:
    bound = 1.0
    for layer in layers:
        if isinstance(layer, Dense):
            w = _as_float64_tensor(layer.weight)
            lip = 1.0 if layer.activation is None else ACTIVATIONS[layer.activation][1]
            bound *= float(torch.linalg.matrix_norm(w, ord=2)) * lip
        else:
            bound *= 1.0 + abs(layer.scale) * _lipschitz(layer.body)
    return bound


@dataclass(frozen=True)
class Program:
    """A model as a chain of constant layers; ``program(x)`` evaluates it on ``x: [..., batch, in]``."""

    layers: tuple[Layer, ...]

    def __call__(self, x: Any) -> Any:
        return _apply_layers(self.layers, x)

    @property
    def in_features(self) -> int:
        first = next(layer for layer in _walk(self.layers) if isinstance(layer, Dense))
        return first.in_features

    @property
    def out_features(self) -> int:
        last = self.layers[-1]
        if not isinstance(last, Dense):
            raise ValueError("a program must end with a Dense layer to have a definite output size")
        return last.out_features

    def map(self, fn: Callable[[Any], Any]) -> Program:
        """The same program with ``fn`` applied to every weight and bias (cast, detach, convert)."""
        return Program(_map_layers(self.layers, fn))

    def numpy(self, dtype: type[np.floating[Any]] = np.float32) -> Program:
        """A numpy copy of the program with every constant cast to ``dtype`` (from float64 where possible)."""

        def convert(t: Any) -> np.ndarray:
            return _as_float64_tensor(t).numpy().astype(dtype)

        return self.map(convert)

    def dense_layers(self) -> list[Dense]:
        """Every Dense layer, in evaluation order, including those inside residual blocks."""
        return [layer for layer in _walk(self.layers) if isinstance(layer, Dense)]

    def flow_weights(self) -> list[Any]:
        """The time-indexed weights ``W_1..W_N`` of the Euler steps (the first Dense of each residual block)."""
        weights = []
        for layer in self.layers:
            if isinstance(layer, Residual) and isinstance(layer.body[0], Dense):
                weights.append(layer.body[0].weight)
        return weights

    def lipschitz_bound(self) -> float:
        """A certified Lipschitz constant (l2 -> l2) of the map, from the spectral norms of the actual constants.

        Dense: ``||W||_2 Lip(f)``; residual: ``1 + h Lip(body)``; a chain multiplies. For ISO-/gated-ODEtoODE with
        Stiefel projections this evaluates to ``(1 + 1/N)^N`` up to the orthogonality error of the stored weights
        (Lemma 1); for other architectures it is still a valid, usually much larger, bound. Single programs only.
        """
        return _lipschitz(self.layers)
