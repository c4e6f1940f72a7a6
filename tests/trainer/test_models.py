"""Every architecture: the definitions of the paper checked against independent float64 computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch

from odetoode.modelfile import ARCHS
from trainer.manifolds import Euclidean, Stiefel, orthogonality_error, skew
from trainer.models import (
    ARCHITECTURES,
    FlowModel,
    GatedODEtoODE,
    GatedWeightFlow,
    HyperNet,
    IsoODEtoODE,
    LayerStack,
    WeightFlowModel,
    build_model,
)
from trainer.models.baselines import activation_gain
from trainer.models.gates import RL_HYPERNET_GATES, TIME_GATES, WIDE_TIME_GATES, GateNetworkSpec, gate_outputs
from trainer.program import Dense, Program, Residual


def small(arch: str, **config: object) -> FlowModel:
    config.setdefault("hidden", 6)
    config.setdefault("steps", 5)
    return build_model(arch, 5, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64, **config)


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_forward_shape_and_unroll_agree(arch: str) -> None:
    model = build_model(arch, 17, 6, generator=torch.Generator().manual_seed(1))
    x = torch.randn(8, 17)
    y = model(x)
    assert y.shape == (8, 6)
    assert y.dtype == torch.float32
    unrolled = model.unroll()
    assert unrolled.dense_layers()[0].weight.dtype == torch.float64
    assert torch.allclose(unrolled(x.double()), y.double(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_population_evaluation_equals_member_by_member(arch: str) -> None:
    """A stacked population of parameter sets is evaluated in one program, as evolution strategies need."""
    models = [small(arch) for _ in range(3)]
    for i, m in enumerate(models):  # distinct members
        with torch.no_grad():
            for p in m.parameters():
                p.add_(0.01 * i * torch.randn_like(p))
    stacked = {name: torch.stack([m.parameter_dict()[name] for m in models]) for name in models[0].parameter_dict()}
    x = torch.randn(3, 4, 5, dtype=torch.float64)
    together = models[0].program(stacked)(x)
    assert together.shape == (3, 4, 3)
    for i, m in enumerate(models):
        assert torch.allclose(together[i], m(x[i]), atol=1e-12)


def expm_flow_oracle(w0: np.ndarray, q: np.ndarray, n: np.ndarray, steps: int) -> list[np.ndarray]:
    """Eq. 6 in numpy/scipy float64: W_i = W_{i-1} expm((1/N)(W^T Q W N - N W^T Q W))."""
    out, w = [], w0
    for _ in range(steps):
        h = w.T @ q @ w
        w = w @ scipy.linalg.expm((h @ n - n @ h) / steps)
        out.append(w)
    return out


@pytest.mark.parametrize("steps", [25, 100, 1000])
def test_iso_flow_is_equation_6_and_orthogonal(steps: int) -> None:
    model = build_model("iso-odetoode", 17, 6, hidden=16, steps=steps, dtype=torch.float64)
    p = {k: v.detach() for k, v in model.parameter_dict().items()}
    ws = model.flow_matrices(p)
    assert len(ws) == steps
    assert max(float(orthogonality_error(w)) for w in ws) < 1e-10
    oracle = expm_flow_oracle(p["w0"].numpy(), p["q"].numpy(), p["n"].numpy(), steps)
    for i in (0, steps // 2, steps - 1):
        assert np.allclose(ws[i].numpy(), oracle[i], atol=1e-10)


def test_iso_main_flow_is_equation_5() -> None:
    model = small("iso-odetoode")
    p = {k: v.detach().numpy() for k, v in model.parameter_dict().items()}
    s = np.random.default_rng(0).normal(size=5)
    x = p["omega1"] @ s
    for w in expm_flow_oracle(p["w0"], p["q"], p["n"], model.steps):
        x = x + np.abs(w @ x + p["b"]) / model.steps
    expected = p["omega2"] @ x
    assert np.allclose(model(torch.from_numpy(s)[None])[0].detach().numpy(), expected, atol=1e-12)


def test_iso_uses_only_the_symmetric_parts_of_q_and_n() -> None:
    """An antisymmetric perturbation of Q or N (as ES may draw) changes nothing and keeps the flow orthogonal."""
    model = small("iso-odetoode")
    x = torch.randn(4, 5, dtype=torch.float64)
    before = model(x)
    with torch.no_grad():
        model.q.add_(skew(torch.randn(6, 6, dtype=torch.float64)))
        model.n.add_(skew(torch.randn(6, 6, dtype=torch.float64)))
    assert torch.allclose(model(x), before, atol=1e-12)


@pytest.mark.parametrize("gates", [1, 2, 4])
@pytest.mark.parametrize("weight_input", [False, True])
def test_gated_flow_is_exp_of_a_gated_skew_sum(gates: int, weight_input: bool) -> None:
    model = small("gated-odetoode", gates=gates, weight_input=weight_input)
    assert isinstance(model, GatedODEtoODE)
    p = {k: v.detach() for k, v in model.parameter_dict().items()}
    ws = model.flow_matrices(p)
    w_prev = p["w0"]
    for i, w in enumerate(ws):
        f = gate_outputs(p, i * model.step_size, w_prev, model.hidden, weight_input)
        b_psi = sum(p["gate_a"][j] * (f[j] - f[j].T) for j in range(gates))
        expected = w_prev.numpy() @ scipy.linalg.expm(model.step_size * b_psi.numpy())
        assert np.allclose(w.numpy(), expected, atol=1e-12)
        assert float(orthogonality_error(w)) < 1e-12
        w_prev = w


def test_hypernet_flow_is_unconstrained_euler() -> None:
    model = small("hypernet", gates=2)
    p = {k: v.detach() for k, v in model.parameter_dict().items()}
    ws = model.flow_matrices(p)  # type: ignore[attr-defined]
    f = gate_outputs(p, 0.0, p["w0"], model.hidden, True)
    expected = p["w0"] + model.step_size * (p["gate_a"][0] * f[0] + p["gate_a"][1] * f[1])
    assert torch.allclose(ws[0], expected)
    assert float(orthogonality_error(ws[-1])) > 1e-6  # nothing keeps it orthogonal


def test_nanode_weights_are_trigonometric_polynomials() -> None:
    model = small("nanode", degree=2, horizon=2.0)
    c = model.coefficients.detach()  # type: ignore[union-attr]
    layers = model.flow_layers(model.parameter_dict())
    for i, layer in enumerate(layers, start=1):
        t = i * model.step_size
        expected = c[0].clone()
        for j in (1, 2):
            expected += c[2 * j - 1] * math.cos(math.pi * j * t) + c[2 * j] * math.sin(math.pi * j * t)
        assert isinstance(layer, Residual)
        assert torch.allclose(layer.body[0].weight, expected)  # type: ignore[union-attr]


def test_baseode_is_a_two_hidden_layer_field_shared_over_time() -> None:
    model = small("baseode")
    layers = model.flow_layers(model.parameter_dict())
    assert len(layers) == model.steps
    first, last = layers[0], layers[-1]
    assert isinstance(first, Residual) and isinstance(last, Residual)
    assert [type(b) for b in first.body] == [Dense, Dense, Dense]
    assert first.body[0].weight is last.body[0].weight  # type: ignore[union-attr]


@pytest.mark.parametrize(("arch", "depth"), [("deepnet", 25), ("dense", 1), ("dense", 10), ("deepresnet", 25)])
def test_discrete_baselines_have_the_papers_depth(arch: str, depth: int) -> None:
    """DeepNet/DeepResNet: 25 hidden layers (the paper); Dense-k: k hidden layers; then a linear read-out."""
    program = build_model(arch, 5, 3, depth=depth).unroll()
    if arch == "deepresnet":
        hidden = [layer for layer in program.layers if isinstance(layer, Residual)]
    else:
        hidden = [layer for layer in program.dense_layers() if layer.activation is not None]
    assert len(hidden) == depth
    assert isinstance(program.layers[-1], Dense) and program.layers[-1].activation is None


def test_stiefel_projections_have_unit_spectral_norm() -> None:
    model = build_model("iso-odetoode", 17, 6)
    dense = model.unroll().dense_layers()
    assert float(torch.linalg.matrix_norm(dense[0].weight, ord=2)) == pytest.approx(1.0, abs=1e-6)
    assert float(torch.linalg.matrix_norm(dense[-1].weight, ord=2)) == pytest.approx(1.0, abs=1e-6)


def test_lipschitz_certificate_is_lemma_1_for_orthogonal_flows() -> None:
    for steps in (10, 25):
        bound = build_model("iso-odetoode", 17, 6, steps=steps).unroll().lipschitz_bound()
        assert bound == pytest.approx((1 + 1 / steps) ** steps, rel=1e-5)


@pytest.mark.parametrize("arch", ["iso-odetoode", "gated-odetoode"])
def test_gradcheck_float64(arch: str) -> None:
    """Autograd through the matrix flow (matrix_exp, gates) against finite differences, w.r.t. every input."""
    model = build_model(arch, 3, 2, hidden=4, steps=3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    names = list(model.parameter_dict())
    params = tuple(model.parameter_dict()[n].detach().clone().requires_grad_() for n in names)
    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)

    def f(x: torch.Tensor, *values: torch.Tensor) -> torch.Tensor:
        return model.program(dict(zip(names, values, strict=True)))(x)

    assert torch.autograd.gradcheck(f, (x, *params))


def test_unknown_architecture_and_bad_sizes_are_rejected() -> None:
    with pytest.raises(ValueError, match=r"unknown architecture 'resnet50'"):
        build_model("resnet50", 3, 2)
    with pytest.raises(ValueError, match=r"hidden and steps must be >= 1"):
        build_model("iso-odetoode", 3, 2, steps=0)
    with pytest.raises(ValueError, match=r"expected inputs with 3 features"):
        IsoODEtoODE(3, 2)(torch.zeros(1, 4))


def test_time_only_gates_take_the_batched_path_and_agree_with_the_recurrence() -> None:
    """With gates of t alone, gated/HyperNet flows are computed for all steps at once; same W_i as step by step."""
    for arch in ("gated-odetoode", "hypernet"):
        model = small(arch, gates=3, weight_input=False)
        p = {k: v.detach() for k, v in model.parameter_dict().items()}
        ws = model.flow_matrices(p)  # type: ignore[attr-defined]
        w = p["w0"]
        for i in range(model.steps):
            f = gate_outputs(p, i * model.step_size, w, model.hidden, False)
            if arch == "hypernet":
                w = w + model.step_size * torch.einsum("k,kij->ij", p["gate_a"], f)
            else:
                w = w @ torch.linalg.matrix_exp(model.step_size * torch.einsum("k,kij->ij", p["gate_a"], f - f.mT))
            assert torch.allclose(ws[i], w, atol=1e-12)


def test_the_registry_names_exactly_the_contracts_architectures() -> None:
    assert tuple(ARCHITECTURES) == ARCHS
    assert all(cls.arch == arch for arch, cls in ARCHITECTURES.items())


@pytest.mark.parametrize("cls", [IsoODEtoODE, GatedODEtoODE, HyperNet])
def test_weight_flow_models_supply_only_their_weight_flow(cls: type[WeightFlowModel]) -> None:
    """The main flow is WeightFlowModel's, once: each layer is x + (1/N) f(W_i x + b) on the subclass's W_i."""
    assert issubclass(cls, WeightFlowModel) and "flow_layers" not in vars(cls) and "flow_matrices" in vars(cls)
    model = small(cls.arch)
    p = {k: v.detach() for k, v in model.parameter_dict().items()}
    assert isinstance(model, WeightFlowModel)
    layers, ws = model.flow_layers(p), model.flow_matrices(p)
    assert len(layers) == len(ws) == model.steps
    for layer, w in zip(layers, ws, strict=True):
        assert isinstance(layer, Residual) and layer.scale == model.step_size
        dense = layer.body[0]
        assert isinstance(dense, Dense) and dense.activation == model.activation
        assert torch.equal(dense.weight, w) and dense.bias is not None and torch.equal(dense.bias, p["b"])
    # W_0 starts Haar-orthogonal everywhere; only HyperNet lets it leave O(h)
    assert float(orthogonality_error(p["w0"])) < 1e-6
    expected = Euclidean if cls is HyperNet else Stiefel
    assert isinstance(model.manifolds["w0"], expected)


def test_gated_models_share_one_constructor_with_their_own_defaults() -> None:
    gated, hyper = small("gated-odetoode", gates=2), small("hypernet", gates=2)
    assert isinstance(gated, GatedWeightFlow) and isinstance(hyper, GatedWeightFlow)
    assert (gated.gate_width, gated.weight_input) == (8, False)
    assert (hyper.gate_width, hyper.weight_input) == (16, True)
    projections = {"omega1", "omega2", "w_in", "b_in", "w_out", "b_out"}  # Stiefel for gated, linear for HyperNet
    flow = [[n for n in m.manifolds if n not in projections] for m in (gated, hyper)]
    assert flow[0] == flow[1] == ["w0", "b", "gate_a", "gate_w1", "gate_b1", "gate_w2", "gate_b2", "gate_w3", "gate_b3"]
    for arch in ("gated-odetoode", "hypernet"):
        with pytest.raises(ValueError, match=r"gates and gate_width must be >= 1"):
            small(arch, gates=0)


@pytest.mark.parametrize("arch", ["deepnet", "deepresnet", "dense"])
def test_layer_stacks_share_one_constructor(arch: str) -> None:
    model = build_model(arch, 5, 3, depth=3)
    assert isinstance(model, LayerStack) and model.depth == 3 == model.steps and model.config["depth"] == 3
    with pytest.raises(ValueError, match=r"depth must be >= 1, got 0"):
        build_model(arch, 5, 3, depth=0)


@pytest.mark.parametrize("gates", [1, 2, 10])
def test_one_gate_spec_gives_hypernet_and_gated_odetoode_gate_parts_of_equal_size(gates: int) -> None:
    """Built from one GateNetworkSpec the two differ only in the constraint: identical gate tensors, counted in closed
    form (per gate: a_j, L1 [w, 1] + c1, L2 [w, w] + c2, L3 [h^2, w] + c3)."""
    h = 12
    for spec in (TIME_GATES, WIDE_TIME_GATES):
        built = [build_model(arch, 5, 3, hidden=h, steps=4, gates=gates, **spec.options())
                 for arch in ("gated-odetoode", "hypernet")]  # fmt: skip
        counts = [m.gate_parameter_count() for m in built if isinstance(m, GatedWeightFlow)]
        w = spec.width
        assert counts == [gates * (1 + 3 * w + w * w + h * h * (w + 1))] * 2 == [spec.parameter_count(gates, h)] * 2
        assert all(m.gate_network == spec for m in built if isinstance(m, GatedWeightFlow))
    assert TIME_GATES.parameter_count(gates, h) < WIDE_TIME_GATES.parameter_count(gates, h)
    # HyperNet's class default stays the paper's RL hypernetwork (width 16, reading vec(W))
    assert HyperNet.default_gates == RL_HYPERNET_GATES != GatedODEtoODE.default_gates == TIME_GATES
    with pytest.raises(ValueError, match="gate width must be >= 1"):
        GateNetworkSpec(width=0)


@pytest.mark.parametrize("activation", ["abs", "relu"])
def test_dense_k_init_preserves_the_signals_second_moment_through_its_activation(activation: str) -> None:
    """The gain of each activation (1 for |x|, sqrt(2) for ReLU) keeps E[x^2] roughly constant over 10 layers, and
    the other activation's gain would not: the init is matched to the activation."""
    model = build_model("dense", 256, 10, hidden=256, depth=10, activation=activation, dtype=torch.float64,
                        generator=torch.Generator().manual_seed(3))  # fmt: skip
    assert model.activation == activation
    dense = model.unroll().dense_layers()[:-1]
    assert len(dense) == 10 and all(layer.activation == activation for layer in dense)
    other = "relu" if activation == "abs" else "abs"
    ratios = {}
    for act in (activation, other):  # the same weights through their own activation and through the other one
        x = torch.randn(512, 256, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
        moments = []
        for layer in dense:
            x = Program((Dense(layer.weight, layer.bias, act),))(x)
            moments.append(float((x**2).mean()))
        ratios[act] = moments[-1] / moments[0]
    assert 0.5 < ratios[activation] < 2.0, ratios
    assert (ratios[other] < 0.01) if other == "relu" else (ratios[other] > 100), ratios  # ~2^-9 or ~2^9
    assert activation_gain(activation) == (math.sqrt(2) if activation == "relu" else 1.0)


def test_dense_k_defaults_to_the_flows_activation_and_accepts_only_abs_or_relu() -> None:
    assert build_model("dense", 5, 3).activation == "abs" == build_model("iso-odetoode", 5, 3).activation
    assert build_model("dense", 5, 3, activation="relu").config["activation"] == "relu"
    with pytest.raises(ValueError, match=r"Dense-k's activation must be one of \['abs', 'relu'\], got 'tanh'"):
        build_model("dense", 5, 3, activation="tanh")
