"""Unrolled ONNX export: parity with torch, orthogonality in the float32 file, Lemma 1 in ONNX Runtime, metadata."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

from odetoode.modelfile import Box, ModelDescription, Normalization, TrainingRecord
from trainer.checkpoint import Checkpoint
from trainer.export import (
    ClassifierInputs,
    ExportedModel,
    ExportError,
    PolicySpec,
    export_classifier,
    export_model,
    export_policy,
    max_relative_error,
)
from trainer.models import ARCHITECTURES, FlowModel, build_model
from trainer.publish import export_checkpoint, write_to_repository

OBS, ACT = 17, 6
ALLOWED_OPS = {
    "Sub",
    "Div",
    "Clip",
    "MatMul",
    "Add",
    "Mul",
    "Abs",
    "Relu",
    "Tanh",
    "Min",
    "Max",
    "Identity",
    "Flatten",
    "Softmax",
}


def spec(bound: float = 1e6, obs: int = OBS, act: int = ACT) -> PolicySpec:
    rng = np.random.default_rng(0)
    return PolicySpec(
        observation_space=Box((obs,), (-np.inf,) * obs, (np.inf,) * obs),
        action_space=Box((act,), (-bound,) * act, (bound,) * act),
        normalization=Normalization(tuple(rng.normal(size=obs)), tuple(rng.uniform(0.5, 2, size=obs)), 5.0),
        env_id="HalfCheetah-v5",
    )


def session(exported: ExportedModel) -> ort.InferenceSession:
    return ort.InferenceSession(exported.proto.SerializeToString(), providers=["CPUExecutionProvider"])


def torch_policy(model: FlowModel, s: PolicySpec, obs: np.ndarray) -> np.ndarray:
    """The live torch module in float64, wrapped in the normalization and clipping the graph bakes in."""
    m = model.double()
    z = (torch.from_numpy(obs) - torch.tensor(s.normalization.mean)) / torch.tensor(s.normalization.std)
    with torch.no_grad():
        a = m(z.clamp(-5, 5))
    lo, hi = torch.tensor(s.action_space.low), torch.tensor(s.action_space.high)
    return torch.maximum(torch.minimum(a, hi), lo).numpy()  # type: ignore[no-any-return]


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_policy_parity_with_torch_at_batch_1_and_256(arch: str) -> None:
    model = build_model(arch, OBS, ACT, generator=torch.Generator().manual_seed(3))
    s = spec()
    exported = export_policy(model, s)
    sess = session(exported)
    rng = np.random.default_rng(1)
    obs = np.asarray(s.normalization.mean) + rng.normal(size=(256, OBS)) * np.asarray(s.normalization.std)
    obs = obs.astype(np.float32)
    for batch in (1, 256):
        actual = sess.run(["action"], {"observation": obs[:batch]})[0]
        assert actual.shape == (batch, ACT) and actual.dtype == np.float32
        assert max_relative_error(actual, torch_policy(model, s, obs[:batch].astype(np.float64))) < 1e-5


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_classifier_parity_with_torch_at_batch_1_and_256(arch: str) -> None:
    model = (
        build_model(arch, 784, 10, hidden=32, steps=10, depth=2)
        if arch in ("deepnet", "deepresnet", "dense")
        else build_model(arch, 784, 10, hidden=32, steps=10)
    )
    exported = export_classifier(model)
    sess = session(exported)
    images = np.random.default_rng(2).uniform(size=(256, 1, 28, 28)).astype(np.float32)
    with torch.no_grad():
        logits = model.double()(torch.from_numpy(images.reshape(256, -1).astype(np.float64))).numpy()
    for batch in (1, 256):
        out_logits, probs = sess.run(["logits", "probabilities"], {"image": images[:batch]})
        assert max_relative_error(out_logits, logits[:batch]) < 1e-5
        expected = np.exp(logits[:batch] - logits[:batch].max(1, keepdims=True))
        assert np.allclose(probs, expected / expected.sum(1, keepdims=True), atol=1e-6)


@pytest.mark.parametrize("steps", [25, 100, 1000])
def test_every_unrolled_matrix_in_the_float32_file_is_orthogonal(steps: int) -> None:
    model = build_model("iso-odetoode", OBS, ACT, steps=steps, generator=torch.Generator().manual_seed(steps))
    proto = export_policy(model, spec()).proto
    flow = [numpy_helper.to_array(t) for t in proto.graph.initializer if t.name.endswith("/residual/0/weight_t")]
    assert len(flow) == steps
    assert all(w.dtype == np.float32 for w in flow)
    # Euler steps store (1/N) W_i^T (the step size is folded into the constant); undo it in float64.
    ws = [w.astype(np.float64) * steps for w in flow]
    errors = [np.abs(w.T @ w - np.eye(16)).max() for w in ws]
    assert max(errors) < 1e-5


def test_lemma_1_holds_for_an_exported_policy_in_onnx_runtime() -> None:
    """||g(s') - g(s'')|| <= (1 + 1/N)^N ||s' - s''|| in normalized units, on many random pairs."""
    steps = 25
    model = build_model("iso-odetoode", OBS, ACT, steps=steps, generator=torch.Generator().manual_seed(4))
    s = spec()
    exported = export_policy(model, s)
    bound = (1 + 1 / steps) ** steps
    assert exported.description.lipschitz_bound == pytest.approx(bound, rel=1e-5)
    sess = session(exported)
    rng = np.random.default_rng(5)
    mean, std = np.asarray(s.normalization.mean), np.asarray(s.normalization.std)
    z1 = rng.uniform(-4, 4, size=(4000, OBS))
    # half the pairs far apart, half within 1e-2 (where the local Lipschitz constant shows)
    z2 = np.concatenate([rng.uniform(-4, 4, size=(2000, OBS)), z1[2000:] + rng.normal(size=(2000, OBS)) * 1e-2])
    g1, g2 = (sess.run(None, {"observation": (mean + std * z).astype(np.float32)})[0] for z in (z1, z2))
    z1_32 = ((mean + std * z1).astype(np.float32) - mean) / std  # the normalized inputs the graph actually saw
    z2_32 = ((mean + std * z2).astype(np.float32) - mean) / std
    ratios = np.linalg.norm(g1 - g2, axis=1) / np.linalg.norm(z1_32 - z2_32, axis=1)
    assert ratios.max() <= bound * (1 + 1e-4)
    assert ratios.max() > 0.2  # the pairs actually exercise the map


def test_metadata_describes_the_model_and_golden_pairs_reproduce() -> None:
    model = build_model("iso-odetoode", OBS, ACT, generator=torch.Generator().manual_seed(6))
    s = spec(bound=1.0)
    exported = export_policy(model, s, training={"command": "test", "seed": 6, "metrics": {"reward": 1.5}})
    props = {p.key: p.value for p in exported.proto.metadata_props}
    for key in (
        "format",
        "kind",
        "arch",
        "steps",
        "hidden",
        "env_id",
        "observation_space",
        "action_space",
        "obs_normalization",
        "lipschitz_bound",
        "golden",
        "training",
    ):
        assert f"odetoode.{key}" in props, key
    d = ModelDescription.from_metadata_props(props)
    assert (d.kind, d.arch, d.steps, d.hidden, d.env_id) == ("policy", "iso-odetoode", 25, 16, "HalfCheetah-v5")
    assert d.training["metrics"] == {"reward": 1.5}
    assert d.obs_normalization == s.normalization
    sess = session(exported)
    inputs = np.asarray(d.golden.inputs, dtype=np.float32)
    out = sess.run(None, {"observation": inputs})[0]
    assert np.allclose(out, np.asarray(d.golden.outputs), rtol=d.golden.rtol, atol=d.golden.atol)
    assert np.abs(out).max() <= 1.0  # action clipping is in the graph


def test_graph_is_plain_ops_with_dynamic_batch() -> None:
    for exported in (
        export_policy(build_model("gated-odetoode", OBS, ACT), spec()),
        export_classifier(build_model("gated-odetoode", 784, 10, hidden=16, steps=5)),
    ):
        proto = exported.proto
        assert {n.op_type for n in proto.graph.node} <= ALLOWED_OPS
        assert proto.opset_import[0].version >= 17
        for value in (*proto.graph.input, *proto.graph.output):
            assert value.type.tensor_type.shape.dim[0].dim_param == "batch"
        onnx.checker.check_model(proto, full_check=True)


def test_baseode_shares_one_set_of_weights_across_steps() -> None:
    proto = export_policy(build_model("baseode", OBS, ACT, steps=25), spec()).proto
    matmuls = [n for n in proto.graph.node if n.op_type == "MatMul"]
    assert len(matmuls) == 2 + 3 * 25
    assert len({n.input[1] for n in matmuls}) == 2 + 3


def test_repository_layout_versions_and_names(tmp_path: Path) -> None:
    exported = export_policy(build_model("iso-odetoode", OBS, ACT), spec())
    first = write_to_repository(exported, tmp_path, "cheetah", serving_config={"max_batch_size": 64})
    second = write_to_repository(exported, tmp_path, "cheetah")
    assert (first.name, second.name) == ("1", "2")
    assert (first / "model.onnx").is_file() and "certified Lipschitz bound" in (first / "README.md").read_text()
    assert (tmp_path / "cheetah" / "config.yaml").read_text().strip() == "max_batch_size: 64"
    assert first.stat().st_mode & 0o777 == 0o755
    assert not [p for p in (tmp_path / "cheetah").iterdir() if p.name.startswith(".")]  # no staging left behind
    with pytest.raises(FileExistsError):
        write_to_repository(exported, tmp_path, "cheetah", version=1)
    for bad in ("../escape", "/abs", "a/b", "", ".hidden", "x" * 65, "nul\x00"):
        with pytest.raises(ValueError, match="must match"):
            write_to_repository(exported, tmp_path, bad)


def test_cli_exports_a_checkpoint_and_an_initialized_model(tmp_path: Path) -> None:
    model = build_model("iso-odetoode", OBS, ACT, generator=torch.Generator().manual_seed(8))
    s = spec(bound=1.0)
    Checkpoint.from_model(
        model,
        "policy",
        env_id=s.env_id,
        observation_space=s.observation_space,
        action_space=s.action_space,
        normalization=s.normalization,
        training=TrainingRecord(command="unit test", seed=8),
    ).save(tmp_path / "ckpt.pt")
    run = [sys.executable, "-m", "trainer", "export", "--repository", str(tmp_path / "models")]
    out = subprocess.run(
        [*run, "--checkpoint", str(tmp_path / "ckpt.pt"), "--name", "trained"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "certified Lipschitz bound: 2.66584" in out.stdout
    proto = onnx.load(str(tmp_path / "models" / "trained" / "1" / "model.onnx"))
    d = ModelDescription.from_metadata_props({p.key: p.value for p in proto.metadata_props})
    assert (d.training.command, d.training.seed) == ("unit test", 8)  # the checkpoint's record, carried over
    assert set(d.training.metrics) == {"stiefel_orthogonality_error_max"}  # plus what export measured
    assert d.training.metrics["stiefel_orthogonality_error_max"] < 1e-5
    expected = export_policy(model, s).description.golden
    assert d.golden == expected
    subprocess.run(
        [*run, "--init", "nanode", "--kind", "classifier", "--hidden", "8", "--steps", "4", "--name", "c"],
        capture_output=True,
        text=True,
        check=True,
    )
    props = {p.key: p.value for p in onnx.load(str(tmp_path / "models" / "c" / "1" / "model.onnx")).metadata_props}
    record = json.loads(props["odetoode.training"])
    assert record["iterations"] == 0 and record["note"].startswith("untrained")
    assert record["command"].startswith("python -m trainer export") and "--init nanode" in record["command"]
    help_text = subprocess.run(
        [sys.executable, "-m", "trainer", "export", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "--checkpoint" in help_text and "--init" in help_text


def test_both_kinds_go_through_the_one_pipeline() -> None:
    """export_policy / export_classifier are export_model with the kind's spec: the same bytes."""
    policy = build_model("iso-odetoode", OBS, ACT, generator=torch.Generator().manual_seed(9))
    classifier = build_model("gated-odetoode", 784, 10, hidden=8, steps=3, generator=torch.Generator().manual_seed(9))
    images = np.random.default_rng(3).uniform(size=(5, 1, 28, 28))
    pairs = [
        (
            export_policy(policy, spec(), training={"seed": 9}),
            export_model(policy, spec(), training=TrainingRecord(seed=9)),
        ),
        (export_classifier(classifier, sample_images=images), export_model(classifier, ClassifierInputs(images))),
    ]
    for a, b in pairs:
        assert a.proto.SerializeToString() == b.proto.SerializeToString()
    d = pairs[1][0].description
    assert (d.kind, d.input_name, d.env_id, d.observation_space) == ("classifier", "image", None, None)
    assert d.golden.inputs[0] == tuple(float(v) for v in images[0].astype(np.float32).ravel())  # samples first


def test_export_checkpoint_refuses_a_policy_without_its_spaces(tmp_path: Path) -> None:
    model = build_model("iso-odetoode", OBS, ACT)
    with pytest.raises(ExportError, match="needs its observation and action spaces"):
        export_checkpoint(Checkpoint.from_model(model, "policy"), "p", tmp_path)
    assert not (tmp_path / "p" / "1").exists()


def test_export_checkpoint_of_a_run_directory_picks_best_and_draws_its_curve(tmp_path: Path) -> None:
    s = spec(bound=1.0)
    run = tmp_path / "run"
    for filename, seed in (("checkpoint.pt", 1), ("best.pt", 2)):
        model = build_model("deepnet", OBS, ACT, depth=2, generator=torch.Generator().manual_seed(seed))
        Checkpoint.from_model(model, "policy", env_id=s.env_id, observation_space=s.observation_space,
                              action_space=s.action_space, normalization=s.normalization,
                              training=TrainingRecord(command=filename, iterations=3)).save(run / filename)  # fmt: skip
    (run / "config.json").write_text(json.dumps({"env": "HalfCheetah-v5", "arch": "deepnet"}))
    (run / "log.jsonl").write_text("".join(json.dumps({"env_steps": 10 * i, "eval_return": float(i)}) + "\n"
                                           for i in range(1, 4)))  # fmt: skip
    published = export_checkpoint(run, "cheetah", tmp_path / "models")
    d = published.exported.description
    assert d.training.command == "best.pt" and d.training.iterations == 3
    assert "stiefel_orthogonality_error_max" not in d.training.metrics  # a DeepNet has no constrained parameter
    assert (published.path / "learning_curve.png").read_bytes()[:4] == b"\x89PNG"
    card = (published.path / "README.md").read_text()
    assert "![learning curve](learning_curve.png)" in card and "## Evaluation" not in card  # no episodes asked
