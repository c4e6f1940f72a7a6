"""Model files for service tests, produced by the real exporter (untrained models: the service cares about files)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from odetoode.modelfile import Box, Normalization
from trainer.export import PolicySpec, export_classifier, export_policy, write_to_repository
from trainer.models import build_model

OBS, ACT = 17, 6


def policy_spec(obs: int = OBS, act: int = ACT, bound: float = 1.0) -> PolicySpec:
    rng = np.random.default_rng(obs)
    return PolicySpec(
        observation_space=Box((obs,), (-np.inf,) * obs, (np.inf,) * obs),
        action_space=Box((act,), (-bound,) * act, (bound,) * act),
        normalization=Normalization(tuple(rng.normal(size=obs) * 0.1), tuple(rng.uniform(1, 3, size=obs)), 5.0),
        env_id="HalfCheetah-v5",
    )


def add_policy(
    repository: Path,
    name: str = "policy",
    version: int | None = None,
    *,
    seed: int = 0,
    arch: str = "iso-odetoode",
    serving_config: dict[str, Any] | None = None,
    **config: Any,
) -> Path:
    model = build_model(arch, OBS, ACT, generator=torch.Generator().manual_seed(seed), **config)
    exported = export_policy(model, policy_spec(), training={"command": "tests", "seed": seed})
    return write_to_repository(exported, repository, name, version, serving_config=serving_config) / "model.onnx"


def add_classifier(repository: Path, name: str = "digits", version: int | None = None, *, seed: int = 0) -> Path:
    model = build_model("gated-odetoode", 784, 10, hidden=16, steps=5, generator=torch.Generator().manual_seed(seed))
    exported = export_classifier(model, training={"command": "tests", "seed": seed})
    return write_to_repository(exported, repository, name, version) / "model.onnx"


def add_garbage(repository: Path, name: str, version: int = 1, content: bytes = b"not an onnx file") -> Path:
    """A version directory whose model.onnx is not a model (what a truncated copy or a bad upload looks like)."""
    path = repository / name / str(version) / "model.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def add_runtime_failure(repository: Path, name: str = "fragile") -> Path:
    """A valid policy file whose graph fails at run time when the first observation entry is 20 or more.

    The action is row ``trunc(observation[0])`` of a 20-row table (ONNX Gather), so an out-of-range index makes
    ONNX Runtime raise -- after the model loaded, warmed up on zeros and passed its golden self-check. That is how
    a server meets an internal error it did not anticipate.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from odetoode.modelfile import Golden, ModelDescription

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
        name,
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
    path = repository / name / "1" / "model.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(path))
    return path
