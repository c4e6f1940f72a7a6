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
