"""Discrete(n) action spaces: the environment spec, the exported graph (action index + logits), rollouts that act by
argmax, ES end to end through export, and the bundled CartPole policy."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

from odetoode.modelfile import POLICY_LOGITS, Box, Discrete, ModelDescription, Normalization
from trainer.envs import (
    UnknownEnvironmentError,
    UnsupportedEnvironmentError,
    UnsupportedSpaceError,
    env_spec,
    make_env,
)
from trainer.es import population, sample_directions
from trainer.es_training import ESConfig, ESRun
from trainer.evaluate import evaluate_onnx, run_episode
from trainer.export import ExportedModel, PolicySpec, export_policy, max_relative_error
from trainer.models import ARCHITECTURES, FlowModel, build_model
from trainer.publish import export_checkpoint
from trainer.rollouts import InlineBackend, RolloutRequest, run_rollouts

ROOT = Path(__file__).resolve().parents[2]
CARTPOLE = "CartPole-v1"
BUNDLED = ROOT / "models" / "cartpole" / "1" / "model.onnx"


def description(proto: onnx.ModelProto) -> ModelDescription:
    return ModelDescription.from_metadata_props({p.key: p.value for p in proto.metadata_props})


def session(proto: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])


def discrete_spec(obs: int = 4, n: int = 2, seed: int = 0) -> PolicySpec:
    rng = np.random.default_rng(seed)
    return PolicySpec(
        observation_space=Box((obs,), (-np.inf,) * obs, (np.inf,) * obs),
        action_space=Discrete(n),
        normalization=Normalization(tuple(rng.normal(size=obs)), tuple(rng.uniform(0.5, 2, size=obs)), 5.0),
        env_id=CARTPOLE,
    )


def torch_logits(model: FlowModel, spec: PolicySpec, obs: np.ndarray) -> np.ndarray:
    """The live torch module in float64 behind the normalization the graph bakes in."""
    mean, std = torch.tensor(spec.normalization.mean), torch.tensor(spec.normalization.std)
    z = ((torch.from_numpy(obs.astype(np.float64)) - mean) / std).clamp(-5, 5)
    with torch.no_grad():
        return model.double()(z).numpy()


# -- environments -----------------------------------------------------------------------------------------------------


def test_cartpole_spec_is_a_discrete_action_of_two_logits() -> None:
    spec = env_spec(CARTPOLE)
    assert spec.discrete and spec.action_space == Discrete(2)
    assert (spec.obs_dim, spec.act_dim, spec.max_episode_steps, spec.survival_bonus) == (4, 2, 500, 0.0)
    assert spec.observation_space.shape == (4,) and spec.observation_space.high[0] == pytest.approx(4.8)
    assert spec.action_low == () and spec.action_high == ()  # nothing to clip
    assert env_spec("Acrobot-v1").action_space == Discrete(3)
    pendulum = env_spec("Pendulum-v1")  # Box behaviour unchanged
    assert not pendulum.discrete and pendulum.act_dim == 1 and pendulum.action_high == (2.0,)


def test_unknown_ids_raise_one_line_naming_the_id_and_what_is_supported() -> None:
    with pytest.raises(UnknownEnvironmentError) as caught:
        env_spec("Cartpole-v1")
    message = str(caught.value)
    assert "\n" not in message and "'Cartpole-v1'" in message
    assert "Did you mean: `CartPole`" in message  # Gymnasium's hint survives
    assert "Box or Discrete action" in message and "dmc:<domain>/<task>" in message
    with pytest.raises(UnknownEnvironmentError, match=r"'dmc:swimmer': DM Control ids are dmc:<domain>/<task>"):
        make_env("dmc:swimmer")


class _Env(gym.Env):
    """A registered environment with whatever spaces a test needs."""

    def __init__(self, action_space: gym.Space) -> None:
        self.observation_space = gym.spaces.Box(-1.0, 1.0, (3,))
        self.action_space = action_space


SHIFTED = r"has a Discrete\(3, start=1\) action; the trainer writes Box actions or Discrete\(n\) actions starting at 0"


@pytest.mark.parametrize(
    ("observation", "action", "match"),
    [
        ("FrozenLake-v1", None, r"'FrozenLake-v1' has a Discrete observation; the trainer reads Box observations only"),
        (None, gym.spaces.Discrete(3, start=1), SHIFTED),
        (None, gym.spaces.MultiDiscrete([2, 3]), r"has a MultiDiscrete action"),
    ],
)
def test_unsupported_spaces_raise_a_typed_error(observation: str | None, action: Any, match: str) -> None:
    env_id = observation or f"test/{type(action).__name__}-v0"
    if observation is None:
        gym.register(env_id, entry_point=f"{__name__}:_Env", kwargs={"action_space": action})
    try:
        with pytest.raises(UnsupportedSpaceError, match=match) as caught:
            env_spec(env_id)
        assert isinstance(caught.value, UnsupportedEnvironmentError) and "\n" not in str(caught.value)
    finally:
        if observation is None:
            del gym.registry[env_id]


# -- export -----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_a_discrete_policy_exports_the_index_then_the_logits(arch: str) -> None:
    n = 3
    model = build_model(arch, 4, n, hidden=8, steps=5, generator=torch.Generator().manual_seed(1))
    spec = discrete_spec(n=n)
    exported = export_policy(model, spec)
    graph_outputs = [(o.name, o.type.tensor_type.elem_type) for o in exported.proto.graph.output]
    assert graph_outputs == [("action", onnx.TensorProto.INT64), (POLICY_LOGITS, onnx.TensorProto.FLOAT)]
    d = description(exported.proto)
    assert d.action_space == Discrete(n) and d.discrete and d.output_names == ("action", "logits")
    argmax = [node for node in exported.proto.graph.node if node.op_type == "ArgMax"]
    assert len(argmax) == 1 and {a.name: a.i for a in argmax[0].attribute}["keepdims"] == 0

    sess = session(exported.proto)
    rng = np.random.default_rng(2)
    obs = (np.asarray(spec.normalization.mean) + rng.normal(size=(256, 4)) * 2).astype(np.float32)
    for batch in (1, 256):
        action, logits = sess.run(None, {"observation": obs[:batch]})
        assert action.shape == (batch,) and action.dtype == np.int64
        assert logits.shape == (batch, n) and logits.dtype == np.float32
        reference = torch_logits(model, spec, obs[:batch])
        assert max_relative_error(logits, reference) < 1e-5
        assert np.array_equal(action, reference.argmax(axis=1))  # no near-ties among these draws


def golden_check(proto: onnx.ModelProto) -> bool:
    """What the service does at load: the golden inputs through the file, the FIRST output against the record."""
    golden = description(proto).golden
    actual = session(proto).run(None, {"observation": np.asarray(golden.inputs, dtype=np.float32)})[0]
    expected = np.asarray(golden.outputs)
    return bool(np.allclose(actual.reshape(expected.shape), expected, rtol=golden.rtol, atol=golden.atol))


def test_golden_pairs_record_indices_of_every_action_and_catch_a_tampered_file() -> None:
    model = build_model("iso-odetoode", 4, 2, hidden=8, steps=10, generator=torch.Generator().manual_seed(3))
    exported: ExportedModel = export_policy(model, discrete_spec())
    golden = exported.description.golden
    indices = [row[0] for row in golden.outputs]
    assert set(indices) == {0.0, 1.0} and len(indices) == 8  # 4 per action
    assert (golden.rtol, golden.atol) == (0.0, 0.0)  # indices compare exactly
    assert golden_check(exported.proto)
    # A file whose actions are mislabelled (the logits of the two actions swapped) fails the service's check.
    tampered = onnx.ModelProto()
    tampered.CopyFrom(exported.proto)
    last = [n for n in tampered.graph.node if n.op_type == "MatMul"][-1].input[1]
    (weight,) = [t for t in tampered.graph.initializer if t.name == last]
    w = numpy_helper.to_array(weight).copy()
    w[:, [0, 1]] = w[:, [1, 0]]  # swap the two actions' logits
    weight.CopyFrom(numpy_helper.from_array(w, last))
    assert not golden_check(tampered)


# -- rollouts and training --------------------------------------------------------------------------------------------


def test_a_member_acting_by_argmax_scores_what_its_exported_onnx_policy_scores() -> None:
    spec = env_spec(CARTPOLE)
    model = build_model("iso-odetoode", 4, 2, hidden=8, steps=10, dtype=torch.float64,
                        generator=torch.Generator().manual_seed(0))  # fmt: skip
    params = {k: v.detach() for k, v in model.named_parameters()}
    members = population(params, sample_directions(params, 3, np.random.default_rng(0)), sigma=1.0)
    with torch.no_grad():
        program = model.program(members).map(lambda t: t.to(torch.float32).contiguous())
    mean, std = np.zeros(4), np.array([1.0, 1.0, 0.1, 1.0])
    request = RolloutRequest(CARTPOLE, program, (5,) * 6, mean, std, 5.0, np.empty(0), np.empty(0), discrete=True)
    result = run_rollouts(request)
    assert len(set(result.raw_returns.tolist())) > 1  # the members act differently
    for member in range(6):
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.copy_(members[name][member])
        exported = export_policy(model, PolicySpec(spec.observation_space, spec.action_space,
                                                   Normalization(tuple(mean), tuple(std), 5.0), CARTPOLE))  # fmt: skip
        total, steps = run_episode(session(exported.proto), CARTPOLE, 5)
        assert (total, steps) == (result.raw_returns[member], result.lengths[member])


def test_es_learns_cartpole_and_exports_a_discrete_policy(tmp_path: Path) -> None:
    config = ESConfig(env=CARTPOLE, hidden=8, steps=10, directions=20, sigma=0.2, step_size=0.05, shaping="top-b",
                      top_b=10, iterations=30, eval_episodes=4, max_episode_steps=200, seed=2,
                      backend="inline")  # fmt: skip
    run = ESRun(config, tmp_path / "run")
    state = run.train(InlineBackend(), progress=False)
    evals = [json.loads(line)["eval_return"] for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert evals[0] < 30 and state.best_reward >= 150  # from falling over at once to balancing (the cap is 200)
    published = export_checkpoint(tmp_path / "run", "cartpole", tmp_path / "models", episodes=2)
    d = description(onnx.load(str(published.path / "model.onnx")))
    assert d.action_space == Discrete(2) and d.env_id == CARTPOLE and d.obs_normalization is not None
    assert d.training.metrics["onnx_eval_return_2_episodes"] > 100
    assert "`action` int64 [batch], an index in 0..1" in (published.path / "README.md").read_text()


# -- the bundled model ------------------------------------------------------------------------------------------------


def test_the_bundled_cartpole_policy_describes_itself_and_balances_for_500_steps() -> None:
    proto = onnx.load(str(BUNDLED))
    d = description(proto)
    assert (d.kind, d.arch, d.env_id, d.action_space) == ("policy", "iso-odetoode", CARTPOLE, Discrete(2))
    assert d.steps is not None and d.lipschitz_bound == pytest.approx((1 + 1 / d.steps) ** d.steps, rel=1e-5)
    assert golden_check(proto)
    evaluation = evaluate_onnx(BUNDLED, episodes=20)  # the card's seeds, which training never drew
    assert evaluation.returns == (500.0,) * 20
    card = (BUNDLED.parent / "README.md").read_text()
    assert f"mean return **{evaluation.mean:.1f}**" in card and f"min {min(evaluation.returns):.1f}" in card
    assert d.training.metrics["onnx_eval_return_20_episodes"] == round(evaluation.mean, 2)
