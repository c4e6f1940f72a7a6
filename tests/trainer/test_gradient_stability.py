"""Lemma 4.1: ||dL/dx_t|| / ||dL/dx_T|| stays in [1/e, e] for ODEtoODE, checked on random instances up to N = 1000."""

from __future__ import annotations

import math

import pytest
import torch

from trainer.experiments.gradient_stability import LOWER, UPPER, gradient_norm_ratios, measure, randomize
from trainer.models import build_model
from trainer.program import Dense, Residual


@pytest.mark.parametrize("arch", ["iso-odetoode", "gated-odetoode"])
@pytest.mark.parametrize("steps", [25, 100, 1000])
def test_odetoode_gradient_ratios_stay_in_the_band(arch: str, steps: int) -> None:
    reading = measure(arch, steps, hidden=16, instances=3 if steps < 1000 else 1, seed=steps)
    assert reading.low >= LOWER, reading
    assert reading.high <= UPPER, reading


@pytest.mark.parametrize("arch", ["baseode", "hypernet"])
def test_unconstrained_flows_leave_the_band(arch: str) -> None:
    """The contrast the lemma is about: random unconstrained instances break [1/e, e] at depth (N = 1000)."""
    reading = measure(arch, 1000, hidden=16, instances=1)
    assert reading.high > UPPER, reading


def test_autograd_ratios_equal_the_explicit_jacobian_product() -> None:
    """Oracle: dL/dx_i = prod_{r > i} (I + (1/N) diag(f'(z_r)) W_r)^T c, built by hand in float64 (Eq. 13)."""
    model = build_model("iso-odetoode", 8, 8, hidden=8, steps=25, dtype=torch.float64)
    randomize(model, torch.Generator().manual_seed(0))
    x, c = torch.randn(8, dtype=torch.float64), torch.randn(8, dtype=torch.float64)
    ratios = gradient_norm_ratios(model, x, c)

    p = model.parameter_dict()
    states = [p["omega1"].detach() @ x]
    steps = [layer for layer in model.flow_layers(p) if isinstance(layer, Residual)]
    for layer in steps:
        dense = layer.body[0]
        assert isinstance(dense, Dense)
        states.append(states[-1] + layer.scale * torch.abs(dense.weight.detach() @ states[-1] + dense.bias.detach()))
    grads = [c]
    for i in reversed(range(len(steps))):
        dense = steps[i].body[0]
        assert isinstance(dense, Dense)
        w, b = dense.weight.detach(), dense.bias.detach()
        d = torch.sign(w @ states[i] + b)
        jacobian = torch.eye(8, dtype=torch.float64) + (d[:, None] * w) / model.steps
        grads.insert(0, jacobian.T @ grads[0])
    expected = torch.stack([g.norm() for g in grads]) / c.norm()
    assert torch.allclose(ratios, expected, rtol=1e-10)
    # and the finite-N form of the lemma's bounds
    n = model.steps
    assert (ratios >= (1 - 1 / n) ** n).all() and (ratios <= (1 + 1 / n) ** n).all()
    assert (1 + 1 / n) ** n < math.e
