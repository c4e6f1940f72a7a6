"""The model files the server's tests and benchmarks use, made by this exporter and committed under
``odetoode/testing/fixtures/`` (so those tests and benchmarks need no PyTorch).

    python -m trainer.fixtures        # rewrites the committed files

``tests/trainer/test_fixtures.py`` makes them again and compares, so the committed files cannot drift from the
exporter. The models are untrained (the server cares about files, not skill) and small: ISO-ODEtoODE policies
17 -> 6 (h=16, N=25) with HalfCheetah's spaces, a gated-ODEtoODE digits classifier (h=16, N=5), and one hand-built
graph that fails at run time.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from onnx import TensorProto, helper, numpy_helper

from odetoode.modelfile import Box, Golden, ModelDescription, Normalization, TrainingRecord
from odetoode.testing.models import ACT, FIXTURES, OBS, POLICY_SEEDS, policy_fixture
from trainer.export import PolicySpec, export_classifier, export_policy
from trainer.models import build_model


def policy_spec(obs: int = OBS, act: int = ACT, bound: float = 1.0) -> PolicySpec:
    rng = np.random.default_rng(obs)
    return PolicySpec(
        observation_space=Box((obs,), (-np.inf,) * obs, (np.inf,) * obs),
        action_space=Box((act,), (-bound,) * act, (bound,) * act),
        normalization=Normalization(tuple(rng.normal(size=obs) * 0.1), tuple(rng.uniform(1, 3, size=obs)), 5.0),
        env_id="HalfCheetah-v5",
    )


def policy(seed: int) -> bytes:
    model = build_model("iso-odetoode", OBS, ACT, generator=torch.Generator().manual_seed(seed))
    training = TrainingRecord(command="tests", seed=seed)
    return export_policy(model, policy_spec(), training=training).proto.SerializeToString()


def classifier() -> bytes:
    model = build_model("gated-odetoode", 784, 10, hidden=16, steps=5, generator=torch.Generator().manual_seed(0))
    return export_classifier(model, training=TrainingRecord(command="tests", seed=0)).proto.SerializeToString()


def runtime_failure() -> bytes:
    """A valid policy file whose graph fails at run time when the first observation entry is 20 or more.

    The action is row ``trunc(observation[0])`` of a 20-row table (ONNX Gather), so an out-of-range index makes
    ONNX Runtime raise -- after the model loaded, warmed up on zeros and passed its golden self-check. That is how
    a server meets an internal error it did not anticipate.
    """
    rng = np.random.default_rng(0)
    table = rng.normal(size=(20, ACT)).astype(np.float32)
    nodes = [
        helper.make_node("Slice", ["observation", "zero", "one", "one"], ["first"]),
        helper.make_node("Cast", ["first"], ["index"], to=TensorProto.INT64),
        helper.make_node("Gather", ["table", "index"], ["rows"], axis=0),
        helper.make_node("Reshape", ["rows", "shape"], ["action"]),
    ]
    graph = helper.make_graph(
        nodes,
        "fragile",
        [helper.make_tensor_value_info("observation", TensorProto.FLOAT, ["batch", OBS])],
        [helper.make_tensor_value_info("action", TensorProto.FLOAT, ["batch", ACT])],
        [
            numpy_helper.from_array(np.array([0], dtype=np.int64), "zero"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "one"),
            numpy_helper.from_array(table, "table"),
            numpy_helper.from_array(np.array([-1, ACT], dtype=np.int64), "shape"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    x = rng.uniform(0, 5, size=(4, OBS)).astype(np.float32)
    y = table[np.trunc(x[:, 0]).astype(np.int64)].astype(np.float64)
    spec = policy_spec()
    description = ModelDescription(
        kind="policy",
        arch="dense",
        steps=1,
        hidden=ACT,
        golden=Golden(tuple(map(tuple, x.astype(np.float64))), tuple(map(tuple, y))),
        observation_space=spec.observation_space,
        action_space=spec.action_space,
        obs_normalization=spec.normalization,
    )
    helper.set_model_props(model, description.to_metadata_props())
    return model.SerializeToString()


RECIPES: dict[str, Callable[[], bytes]] = {
    **{policy_fixture(seed).name: (lambda seed=seed: policy(seed)) for seed in POLICY_SEEDS},  # type: ignore[misc]
    "digits.onnx": classifier,
    "fragile.onnx": runtime_failure,
}


def write(directory: Path = FIXTURES) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, recipe in RECIPES.items():
        (directory / name).write_bytes(recipe())
        written.append(directory / name)
    return written


if __name__ == "__main__":
    for path in write():
        print(path, path.stat().st_size, "bytes")
    sys.exit(0)
