"""Lemma 4.1 measured: how the loss gradient's norm changes while backpropagating through the main flow.

For a loss ``L(x_N)`` the lemma bounds ``||dL/dx_i|| / ||dL/dx_N||`` by ``[1/e, e]`` for every step ``i`` whenever
the weights ``W_i`` are orthogonal and ``|f'| = 1`` (f = |x|): the Jacobian of one step is ``I + (1/N) D_i W_i`` with
``D_i W_i`` orthogonal, so a product of ``N - i`` of them has norm in ``[(1 - 1/N)^N, (1 + 1/N)^N]``. Unconstrained
weight flows (BaseODE, HyperNet, NANODE) carry no such bound.

``python -m trainer gradients`` prints the band each architecture reaches at several depths (``band_report``);
``python -m trainer reproduce gradients`` draws the committed figure (``band_table``, ``plot_bands``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from trainer.manifolds import Stiefel
from trainer.models import FlowModel, build_model
from trainer.program import Program

LOWER, UPPER = 1 / math.e, math.e


def gradient_norm_ratios(model: FlowModel, x: torch.Tensor, cotangent: torch.Tensor) -> torch.Tensor:
    """``||dL/dx_i||_2 / ||dL/dx_N||_2`` for ``i = 0..N`` with ``L = <cotangent, x_N>`` (one input ``x: [in]``).

    ``x_0`` is the input projected into the flow's space and ``x_N`` the flow's last state (before the output
    projection), as in the lemma. Computed with autograd in the model's dtype.
    """
    p = model.parameter_dict()
    states = [Program(model.input_layers(p))(x.unsqueeze(0))]
    for layer in model.flow_layers(p):
        states.append(Program((layer,))(states[-1]))
    loss = (states[-1] * cotangent).sum()
    grads = torch.autograd.grad(loss, states)
    norms = torch.stack([g.norm() for g in grads])
    return (norms / norms[-1]).detach()


def randomize(model: FlowModel, generator: torch.Generator, scale: float = 1.0) -> FlowModel:
    """Redraws every parameter: Haar on compact manifolds, i.i.d. ``N(0, scale^2)`` entries elsewhere.

    Standard Gaussian entries are the usual "random instance" of an unconstrained matrix (spectral norm about
    ``2 sqrt(h)``); ODEtoODE's flow stays orthogonal whatever the scale of ``Q``, ``N`` or the gates.
    """
    with torch.no_grad():
        for name, param in model.named_parameters():
            manifold = model.manifolds[name]
            if isinstance(manifold, Stiefel):
                value = manifold.sample(generator=generator)
            else:
                value = manifold.project(torch.randn(param.shape, generator=generator, dtype=torch.float64)) * scale
            param.copy_(value.to(param.dtype))
    return model


@dataclass(frozen=True)
class BandReading:
    arch: str
    steps: int
    low: float
    high: float

    @property
    def inside(self) -> bool:
        return self.low >= LOWER and self.high <= UPPER


def measure(
    arch: str,
    steps: int,
    *,
    hidden: int = 16,
    instances: int = 5,
    seed: int = 0,
    scale: float = 1.0,
    **config: object,
) -> BandReading:
    """The smallest and largest ratio over every step of ``instances`` random float64 instances of ``arch``.

    ``scale`` multiplies the Gaussian entries of unconstrained parameters (see ``randomize``). A gradient that
    overflows float64 counts as an infinite ratio.
    """
    generator = torch.Generator().manual_seed(seed)
    low, high = math.inf, -math.inf
    for _ in range(instances):
        model = build_model(arch, hidden, hidden, hidden=hidden, steps=steps, dtype=torch.float64, **config)
        randomize(model, generator, scale=scale)
        x = torch.randn(hidden, generator=generator, dtype=torch.float64)
        c = torch.randn(model.hidden, generator=generator, dtype=torch.float64)
        ratios = gradient_norm_ratios(model, x, c)
        if not torch.isfinite(ratios).all():
            high = math.inf
            finite = ratios[torch.isfinite(ratios)]
            ratios = finite if finite.numel() else torch.ones(1, dtype=torch.float64)
        low, high = min(low, float(ratios.min())), max(high, float(ratios.max()))
    return BandReading(arch, steps, low, high)


def band_report(archs: Sequence[str], steps: Sequence[int], *, hidden: int = 16, instances: int = 5
                ) -> Iterator[str]:  # fmt: skip
    """The lines of a plain-text table: for each architecture and depth, the band its ratios reach (``measure``),
    one line at a time as each is measured."""
    yield f"band [1/e, e] = [{LOWER:.4f}, {UPPER:.4f}]"
    yield f"{'arch':<16}{'N':>6}{'min ratio':>14}{'max ratio':>14}  inside"
    for arch in archs:
        for n in steps:
            r = measure(arch, n, hidden=hidden, instances=instances)
            yield f"{arch:<16}{n:>6}{r.low:>14.4g}{r.high:>14.4g}  {'yes' if r.inside else 'NO'}"


CLIP_LOW, CLIP_HIGH = 1e-6, 1e12  # the plot's range; beyond it (up to float64 overflow) points sit on the edge
FIGURE_ARCHS = ("iso-odetoode", "gated-odetoode", "baseode", "nanode", "hypernet", "deepnet")
FIGURE_STEPS = (10, 30, 100, 300, 1000, 3000, 10000)


def band_table(archs: tuple[str, ...] = FIGURE_ARCHS, steps: tuple[int, ...] = FIGURE_STEPS, *, instances: int = 3,
               scales: tuple[str, ...] = ("unit", "init"), hidden: int = 16) -> list[dict[str, object]]:  # fmt: skip
    """Every (scale, arch, N): the lowest and highest gradient-norm ratio over all steps of random instances.

    ``unit``: unconstrained weights with standard Gaussian entries; ``init``: with entries ``N(0, 1/fan_in)``, the
    scale of a freshly initialized network. Compact-manifold parameters are Haar in both.
    """
    rows = []
    for scale in scales:
        for arch in archs:
            for n in steps:
                config: dict[str, Any] = {"depth": n} if arch == "deepnet" else {}
                factor = 1.0 if scale == "unit" else 1.0 / math.sqrt(hidden)
                r = measure(arch, n, hidden=hidden, scale=factor, instances=instances, **config)
                rows.append({"scale": scale, "arch": arch, "steps": n, "low": r.low, "high": r.high,
                             "inside": r.inside})  # fmt: skip
    return rows


def plot_bands(rows: list[dict[str, object]], out: Path) -> Path:
    """Min/max ratio against depth, log-log, one panel per weight scale, with the [1/e, e] band shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scales = sorted({str(r["scale"]) for r in rows}, reverse=True)
    fig, axes = plt.subplots(1, len(scales), figsize=(6.5 * len(scales), 4.5), squeeze=False, sharey=True)
    titles = {"unit": "unconstrained weights ~ N(0, 1)", "init": "unconstrained weights ~ N(0, 1/h) (init scale)"}
    for ax, scale in zip(axes[0], scales, strict=True):
        ax.axhspan(LOWER, UPPER, color="green", alpha=0.12, label="[1/e, e] (Lemma 4.1)")
        for arch in dict.fromkeys(str(r["arch"]) for r in rows):
            pts = [r for r in rows if r["scale"] == scale and r["arch"] == arch]
            ns = [int(r["steps"]) for r in pts]  # type: ignore[call-overload]
            hi = [min(float(r["high"]), CLIP_HIGH) for r in pts]  # type: ignore[arg-type]
            lo = [max(float(r["low"]), CLIP_LOW) for r in pts]  # type: ignore[arg-type]
            (line,) = ax.plot(ns, hi, marker="o", label=arch)
            ax.plot(ns, lo, marker="v", linestyle="--", color=line.get_color())
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_ylim(CLIP_LOW / 2, CLIP_HIGH * 2)
        ax.set_xlabel("depth N (Euler steps / layers)")
        ax.set_title(titles.get(scale, scale))
        ax.grid(alpha=0.3, which="both")
    axes[0][0].set_ylabel("||dL/dx_t|| / ||dL/dx_N||: max (o), min (v)")
    title = f"Lemma 4.1 on random instances (h = 16); values outside [{CLIP_LOW:g}, {CLIP_HIGH:g}] sit on the edge"
    fig.suptitle(title, fontsize=10)
    axes[0][-1].legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
