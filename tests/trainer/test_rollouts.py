"""Population rollouts: determinism, agreement with the exported ONNX policy, and backends that agree."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import torch

from odetoode.modelfile import Box, Normalization
from trainer.envs import env_spec, make_env
from trainer.es import population, sample_directions
from trainer.evaluate import run_episode
from trainer.export import PolicySpec, export_policy, max_relative_error
from trainer.models import build_model
from trainer.rollouts import InlineBackend, LocalBackend, RolloutRequest, run_rollouts

ENV = "Pendulum-v1"


def request(members: dict[str, torch.Tensor], model: object, seeds: tuple[int, ...], env: str = ENV,
            bonus: float = 0.0) -> RolloutRequest:  # fmt: skip
    spec = env_spec(env)
    with torch.no_grad():
        program = model.program(members).map(lambda t: t.to(torch.float32).contiguous())  # type: ignore[attr-defined]
    return RolloutRequest(
        env, program, seeds, np.full(spec.obs_dim, 0.1), np.full(spec.obs_dim, 2.0), 5.0,
        np.asarray(spec.action_low), np.asarray(spec.action_high), bonus,
    )  # fmt: skip


def pendulum_population(n: int = 3) -> tuple[object, dict[str, torch.Tensor]]:
    model = build_model("iso-odetoode", 3, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    params = {k: v.detach() for k, v in model.named_parameters()}
    return model, population(params, sample_directions(params, n, np.random.default_rng(0)), sigma=0.3)


def test_rollouts_are_deterministic_and_pairs_differ() -> None:
    model, members = pendulum_population()
    seeds = (7, 7, 8, 8, 9, 9)
    a = run_rollouts(request(members, model, seeds))
    b = run_rollouts(request(members, model, seeds))
    assert np.array_equal(a.returns, b.returns)
    assert a.lengths.tolist() == [200] * 6
    assert a.returns[0] != a.returns[1]  # the two sides of a pair are different policies
    assert a.obs_count == 6 * 201 and a.steps == 1200


def test_a_member_scores_what_its_exported_onnx_policy_scores() -> None:
    model, members = pendulum_population()
    result = run_rollouts(request(members, model, (11,) * 6))
    spec = env_spec(ENV)
    with torch.no_grad():
        for name, p in model.named_parameters():  # type: ignore[attr-defined]
            p.copy_(members[name][2])
    exported = export_policy(
        model,  # type: ignore[arg-type]
        PolicySpec(
            Box((3,), (-np.inf,) * 3, (np.inf,) * 3),
            Box((1,), spec.action_low, spec.action_high),
            Normalization((0.1,) * 3, (2.0,) * 3, 5.0),
            ENV,
        ),
    )
    session = ort.InferenceSession(exported.proto.SerializeToString(), providers=["CPUExecutionProvider"])
    total, steps = run_episode(session, ENV, 11)
    assert steps == 200
    assert abs(total - result.raw_returns[2]) <= 1e-3 * abs(total)

    # identical actions on recorded observations: torch (float64 unrolled program) vs ONNX Runtime
    env = make_env(ENV)
    observations = [env.reset(seed=3)[0]]
    for _ in range(99):
        observations.append(env.step(env.action_space.sample())[0])
    obs = np.asarray(observations, dtype=np.float32)
    z = np.clip((obs.astype(np.float64) - 0.1) / 2.0, -5, 5)
    torch_actions = np.clip(model.unroll()(torch.from_numpy(z)).numpy(), -2, 2)  # type: ignore[attr-defined]
    onnx_actions = session.run(None, {"observation": obs})[0]
    assert max_relative_error(onnx_actions, torch_actions) < 1e-5


def test_survival_bonus_is_removed_per_step_from_the_training_return() -> None:
    model = build_model("iso-odetoode", 11, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    params = {k: v.detach() for k, v in model.named_parameters()}
    members = population(params, sample_directions(params, 2, np.random.default_rng(1)), sigma=0.5)
    result = run_rollouts(request(members, model, (1, 1, 2, 2), env="Hopper-v5", bonus=1.0))
    assert np.allclose(result.returns, result.raw_returns - result.lengths)
    assert result.lengths.min() < 1000  # Hopper falls: episodes end early and the batch shrinks


def test_worker_processes_agree_with_the_inline_backend() -> None:
    model, members = pendulum_population(n=4)
    req = request(members, model, tuple(range(8)))
    inline = InlineBackend().evaluate(req)
    local = LocalBackend(2)
    try:
        parallel = local.evaluate(req)
    finally:
        local.close()
    assert np.array_equal(inline.returns, parallel.returns)
    assert inline.obs_count == parallel.obs_count and np.allclose(inline.obs_sum, parallel.obs_sum)
