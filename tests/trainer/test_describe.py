"""``python -m trainer describe-policy``: a policy trained elsewhere (a PyTorch MLP exported with torch.onnx.export)
becomes a servable odetoode policy, and a real server answers over ActStream exactly what the original network
answers locally."""

from __future__ import annotations

import itertools
import json
import warnings
from collections.abc import Callable
from pathlib import Path

import gymnasium as gym
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from odetoode.client import Action, PolicyClient
from odetoode.modelfile import EXTERNAL, Box, Discrete, ModelDescription
from odetoode.testing.servers import server_process
from trainer.cli import main

SEED = 7
"""The episode's seed, the same for the served and the local run."""


def mlp(sizes: tuple[int, ...], seed: int) -> torch.nn.Sequential:
    """A tanh MLP with torch's default initialization under ``seed``: random, but not trivial."""
    torch.manual_seed(seed)
    layers: list[torch.nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers += [torch.nn.Linear(a, b), *([torch.nn.Tanh()] if i < len(sizes) - 2 else [])]
    return torch.nn.Sequential(*layers).eval()


def export(module: torch.nn.Module, path: Path, obs_dim: int, outputs: list[str], *, dynamo: bool = True) -> Path:
    """``torch.onnx.export`` as a user would call it: the default exporter (dynamo, which needs onnxscript) or the
    TorchScript one (``dynamo=False``), each with a dynamic batch axis spelled its own way."""
    batch: dict[str, object] = (
        {"dynamic_shapes": ({0: torch.export.Dim("batch")},)}
        if dynamo
        else {"dynamic_axes": {"obs": {0: "batch"}, **{name: {0: "batch"} for name in outputs}}}
    )
    with warnings.catch_warnings():
        # torch's warnings about its own exporters and internals (the TorchScript exporter is deprecated), not ours
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning, message=".*LeafSpec")
        torch.onnx.export(module, (torch.zeros(1, obs_dim),), str(path), input_names=["obs"], output_names=outputs,
                          dynamo=dynamo, verbose=False, **batch)  # type: ignore[arg-type]  # fmt: skip
    return path


def describe(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Runs the real CLI entry point; returns (exit status, stdout, stderr)."""
    with pytest.raises(SystemExit) as done:
        main(["describe-policy", *argv])
    out = capsys.readouterr()
    return int(done.value.code or 0), out.out, out.err


def loaded(path: Path) -> tuple[ort.InferenceSession, ModelDescription]:
    """The file as the server loads it: an ONNX Runtime session and the description parsed from its metadata."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session, ModelDescription.from_metadata_props(session.get_modelmeta().custom_metadata_map)


def episode(env_id: str, seed: int, act: Callable[[np.ndarray], np.ndarray | int]) -> tuple[float, np.ndarray]:
    """One episode on ``seed``: its return and the actions taken."""
    env = gym.make(env_id)
    obs, _ = env.reset(seed=seed)
    total, actions, done = 0.0, [], False
    while not done:
        action = act(np.asarray(obs, np.float32))
        actions.append(action)
        obs, reward, terminated, truncated, _ = env.step(action)
        total += float(reward)
        done = terminated or truncated
    env.close()
    return total, np.asarray(actions)


def test_an_external_pendulum_policy_served_over_act_stream_returns_what_it_returns_locally(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The must-show: export (default exporter) -> describe (VecNormalize-style statistics baked in) -> serve ->
    one closed-loop episode over ActStream == the same episode with ONNX Runtime on the original file, normalization
    and action clipping applied outside."""
    source = export(mlp((3, 32, 32, 1), seed=0), tmp_path / "pendulum.onnx", 3, ["act"])
    mean, var, clip = np.array([0.2, -0.1, 0.5]), np.array([0.4, 0.3, 9.0]), 5.0
    np.savez(tmp_path / "vecnormalize.npz", mean=mean, var=var, clip_obs=clip)
    repository = tmp_path / "models"
    status, out, err = describe([str(source), "--name", "pendulum", "--repository", str(repository),
                                 "--env", "Pendulum-v1", "--normalization", str(tmp_path / "vecnormalize.npz")],
                                capsys)  # fmt: skip
    assert status == 0, err
    assert f"wrote {repository / 'pendulum' / '1' / 'model.onnx'}" in out

    session, description = loaded(repository / "pendulum" / "1" / "model.onnx")
    assert (description.kind, description.arch, description.env_id) == ("policy", EXTERNAL, "Pendulum-v1")
    assert (description.steps, description.hidden, description.lipschitz_bound) == (None, None, None)
    assert description.action_space == Box((1,), (-2.0,), (2.0,))
    assert description.obs_normalization is not None and description.obs_normalization.clip == clip
    assert "describe-policy" in (description.training.command or "") and description.training["source"]["file"]
    assert [i.name for i in session.get_inputs()] == ["observation"]
    assert [o.name for o in session.get_outputs()] == ["action"]

    original = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"])
    mean32, std32 = np.float32(mean), np.sqrt(var + 1e-8).astype(np.float32)

    def local(obs: np.ndarray, normalize: bool = True) -> np.ndarray:
        z = np.clip((obs - mean32) / std32, -clip, clip).astype(np.float32) if normalize else obs
        return np.clip(original.run(None, {"obs": z[None]})[0][0], -2.0, 2.0)

    local_return, local_actions = episode("Pendulum-v1", SEED, local)

    with server_process(repository) as server, PolicyClient(server.grpc, timeout=10) as client:
        client.wait_ready()
        info = client.get_policy("pendulum")
        assert (info.arch, info.env_id, info.steps, info.hidden) == ("external", "Pendulum-v1", 0, 0)
        assert list(info.normalization.mean) == pytest.approx(mean)
        stream = client.stream("pendulum")
        sequence = iter(range(10**6))

        def served(obs: np.ndarray) -> np.ndarray:
            number = next(sequence)
            stream.send(obs, number)
            answer = stream.receive(timeout=10)
            assert isinstance(answer, Action) and answer.sequence == number, answer
            return answer.values

        try:
            served_return, served_actions = episode("Pendulum-v1", SEED, served)
        finally:
            stream.close()

    assert len(served_actions) == 200
    assert served_return == pytest.approx(local_return, rel=1e-4)
    np.testing.assert_allclose(served_actions, local_actions, rtol=1e-4, atol=1e-5)
    assert np.std(served_actions) > 0.05  # the policy does act; not a constant (or fully clipped) output
    # the baked normalization matters: without it, the same network flies another episode
    assert episode("Pendulum-v1", SEED, lambda obs: local(obs, normalize=False))[0] != pytest.approx(local_return)


class SB3Like(torch.nn.Module):
    """What Stable-Baselines3's ONNX export gives: actions, values and log-probabilities."""

    def __init__(self) -> None:
        super().__init__()
        self.actor, self.critic = mlp((3, 16, 1), seed=1), mlp((3, 16, 1), seed=2)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        actions = self.actor(obs)
        return actions, self.critic(obs).squeeze(1), -0.5 * (actions**2).sum(1)


def test_the_action_is_chosen_among_several_outputs_and_the_others_are_dropped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = export(SB3Like().eval(), tmp_path / "sb3.onnx", 3, ["actions", "values", "log_prob"], dynamo=False)
    repository = tmp_path / "models"
    common = ["--name", "sb3", "--repository", str(repository), "--env", "Pendulum-v1"]

    status, _, err = describe([str(source), *common], capsys)
    assert status == 1
    assert "3 outputs ['actions', 'values', 'log_prob']" in err and "--output" in err
    status, _, err = describe([str(source), *common, "--output", "value"], capsys)
    assert status == 1 and "no output 'value'" in err and "['actions', 'values', 'log_prob']" in err
    assert not repository.exists()  # nothing written on an error

    status, out, err = describe([str(source), *common, "--output", "actions", "--obs-mean", "0", "0", "0",
                                 "--obs-std", "1", "1", "2", "--no-clip-action"], capsys)  # fmt: skip
    assert status == 0, err
    assert "dropped outputs ['values', 'log_prob']" in out
    path = repository / "sb3" / "1" / "model.onnx"
    session, description = loaded(path)
    assert [o.name for o in session.get_outputs()] == ["action"]
    graph = onnx.load(str(path)).graph
    assert len(graph.node) < len(onnx.load(str(source)).graph.node)  # the critic's nodes are gone
    assert not {"Min", "Max"} & {n.op_type for n in graph.node}  # --no-clip-action
    assert description.obs_normalization is not None and description.obs_normalization.std == (1.0, 1.0, 2.0)

    obs = np.random.default_rng(0).uniform(-8, 8, size=(16, 3)).astype(np.float32)
    want = ort.InferenceSession(str(source)).run(["actions"], {"obs": obs / np.asarray([1, 1, 2], np.float32)})[0]
    np.testing.assert_allclose(session.run(None, {"observation": obs})[0], want, rtol=1e-6, atol=1e-6)

    # a version is never overwritten unless asked
    again = [str(source), *common, "--output", "actions", "--version", "1"]
    status, _, err = describe(again, capsys)
    assert status == 1 and "exists" in err and "--overwrite" in err
    status, _, err = describe([*again, "--overwrite"], capsys)
    assert status == 0, err
    assert loaded(path)[1].obs_normalization is None  # replaced by the new description


class Greedy(torch.nn.Module):
    """A discrete policy that outputs its action index itself (as SB3's deterministic export of a Discrete
    policy does)."""

    def __init__(self, logits: torch.nn.Module) -> None:
        super().__init__()
        self.logits = logits

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.logits(obs).argmax(dim=1)


@pytest.mark.parametrize("head", ["logits", "index"])
def test_a_discrete_cartpole_policy_answers_the_argmax_of_its_logits(
    head: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    logits = mlp((4, 32, 2), seed=3)
    network = logits if head == "logits" else Greedy(logits).eval()
    source = export(network, tmp_path / "cartpole.onnx", 4, [head])
    repository = tmp_path / "models"
    status, out, err = describe([str(source), "--name", "cartpole", "--repository", str(repository),
                                 "--env", "CartPole-v1"], capsys)  # fmt: skip
    assert status == 0, err
    assert f"Discrete(2), from {head}" in out

    session, description = loaded(repository / "cartpole" / "1" / "model.onnx")
    assert description.action_space == Discrete(2) and description.discrete
    assert [o.name for o in session.get_outputs()] == ["action", "logits"] == list(description.output_names)
    card = (repository / "cartpole" / "1" / "README.md").read_text()
    assert "index in 0..1" in card

    obs = np.random.default_rng(1).normal(scale=[1.0, 1.0, 0.2, 1.0], size=(256, 4)).astype(np.float32)
    action, scores = session.run(None, {"observation": obs})
    with torch.no_grad():
        reference = logits(torch.from_numpy(obs)).numpy()
    assert action.dtype == np.int64 and action.shape == (256,)
    np.testing.assert_array_equal(action, reference.argmax(axis=1))
    assert set(np.unique(action)) == {0, 1}  # both actions occur: the check is not vacuous
    if head == "logits":
        np.testing.assert_allclose(scores, reference, rtol=1e-5, atol=1e-6)
    else:  # the graph's own index is kept; the logits are its one-hot
        np.testing.assert_array_equal(scores, np.eye(2, dtype=np.float32)[action])
    golden = np.asarray(description.golden.inputs, np.float32)
    np.testing.assert_array_equal(session.run(["action"], {"observation": golden})[0],
                                  np.asarray(description.golden.outputs).reshape(-1))  # fmt: skip


def test_a_described_discrete_policy_is_served_over_act(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """CartPole in closed loop over Act: the server answers the index (``Action.index``) the original logits'
    argmax gives locally, step for step."""
    logits = mlp((4, 32, 2), seed=5)
    source = export(logits, tmp_path / "cartpole.onnx", 4, ["logits"], dynamo=False)
    repository = tmp_path / "models"
    status, _, err = describe([str(source), "--name", "cartpole", "--repository", str(repository),
                               "--env", "CartPole-v1"], capsys)  # fmt: skip
    assert status == 0, err
    original = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"])
    local_return, local_actions = episode(
        "CartPole-v1", SEED, lambda obs: int(original.run(None, {"obs": obs[None]})[0][0].argmax())
    )

    with server_process(repository) as server, PolicyClient(server.grpc, timeout=10) as client:
        client.wait_ready()
        assert client.get_policy("cartpole").action_space.discrete.n == 2

        def served(obs: np.ndarray) -> int:
            answer = client.act("cartpole", obs)
            assert answer.index is not None and answer.values.size == 0
            return answer.index

        served_return, served_actions = episode("CartPole-v1", SEED, served)

    assert served_return == local_return
    np.testing.assert_array_equal(served_actions, local_actions)
    assert set(np.unique(local_actions)) == {0, 1}  # both actions occur: the comparison is not vacuous


class FixedBatch(torch.nn.Module):
    """A module that hard-codes a batch of one (a Reshape to [1, 3] in its graph)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = mlp((3, 8, 1), seed=6)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(obs.reshape(1, 3))


def test_a_graph_that_cannot_take_a_batch_is_refused_with_the_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = export(FixedBatch().eval(), tmp_path / "fixed.onnx", 3, ["act"], dynamo=False)
    status, _, err = describe([str(source), "--name", "fixed", "--repository", str(tmp_path / "models"),
                               "--env", "Pendulum-v1"], capsys)  # fmt: skip
    assert status == 1
    assert "batch of 64 observations" in err and "dynamic batch axis" in err
    assert not (tmp_path / "models").exists()


def test_explicit_spaces_and_json_statistics_without_an_environment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = export(mlp((3, 8, 2), seed=4), tmp_path / "own.onnx", 3, ["act"], dynamo=False)
    (tmp_path / "stats.json").write_text(json.dumps({"mean": [1, 2, 3], "std": [2, 2, 2], "clip": 1.5}))
    repository = tmp_path / "models"
    status, _, err = describe([str(source), "--name", "own", "--repository", str(repository),
                               "--observation-low", "-10", "--observation-high", "10", "--action-low", "-0.1",
                               "--action-high", "0.1", "0.2", "--normalization", str(tmp_path / "stats.json")],
                              capsys)  # fmt: skip
    assert status == 0, err
    session, description = loaded(repository / "own" / "1" / "model.onnx")
    assert description.env_id is None and description.observation_space == Box((3,), (-10.0,) * 3, (10.0,) * 3)
    assert description.action_space == Box((2,), (-0.1, -0.1), (0.1, 0.2))
    obs = np.random.default_rng(2).uniform(-10, 10, size=(32, 3)).astype(np.float32)
    z = np.clip((obs - np.asarray([1, 2, 3], np.float32)) / np.float32(2), -1.5, 1.5)
    want = np.clip(ort.InferenceSession(str(source)).run(None, {"obs": z})[0], [-0.1, -0.1], [0.1, 0.2])
    np.testing.assert_allclose(session.run(None, {"observation": obs})[0], want, rtol=1e-6, atol=1e-7)

    status, _, err = describe([str(source), "--name", "own", "--repository", str(repository), "--env",
                               "Pendulum-v1", "--action-low", "-1"], capsys)  # fmt: skip
    assert status == 2 and "drop --action-low" in err  # options that do not fit together: a usage error
