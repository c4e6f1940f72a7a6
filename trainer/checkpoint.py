"""Training checkpoints: a model's architecture, configuration and weights, plus what its export needs.

Saved with ``torch.save`` and loaded with ``weights_only=True``: a checkpoint holds only tensors, numbers, strings,
lists and dicts, so loading one cannot execute code (unlike a pickled module).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from odetoode.modelfile import Box, Kind, Normalization, Space, TrainingRecord, space_from_json
from trainer.models import FlowModel, build_model

CHECKPOINT_FORMAT = 1


class CheckpointError(ValueError):
    """A checkpoint file is missing fields or was written by an incompatible version."""


@dataclass
class Checkpoint:
    """Everything needed to rebuild a model, resume its training, and export it."""

    arch: str
    kind: Kind
    config: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    env_id: str | None = None
    observation_space: Box | None = None
    action_space: Space | None = None
    """A ``Box`` (the model outputs the action) or a ``Discrete(n)`` (it outputs n logits; the action is their
    argmax)."""
    normalization: Normalization | None = None
    training: TrainingRecord = field(default_factory=TrainingRecord)
    """Provenance, carried into the exported file's ``odetoode.training``."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Trainer-specific state for resuming (optimizer moments, iteration, RNG state)."""

    @classmethod
    def from_model(cls, model: FlowModel, kind: Kind, **fields: Any) -> Checkpoint:
        """The model's current parameter values; a parametrized one (the supervised ``W_0 = exp(A - A^T) W``) is
        stored as its value, so ``model()`` rebuilds a plain model that computes the same function."""
        state = {name: getattr(model, name).detach().clone() for name in model.manifolds}
        return cls(arch=model.arch, kind=kind, config=dict(model.config), state_dict=state, **fields)

    def model(self, dtype: torch.dtype = torch.float32) -> FlowModel:
        config = dict(self.config)
        in_features, out_features = config.pop("in_features"), config.pop("out_features")
        model = build_model(self.arch, in_features, out_features, dtype=dtype, **config)
        model.load_state_dict({k: v.to(dtype) for k, v in self.state_dict.items()})
        return model

    def save(self, path: str | Path) -> None:
        """Writes atomically (temporary file + rename), so a crash never leaves half a checkpoint."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "format": CHECKPOINT_FORMAT,
            "arch": self.arch,
            "kind": self.kind,
            "config": self.config,
            "state_dict": self.state_dict,
            "env_id": self.env_id,
            "observation_space": None if self.observation_space is None else self.observation_space.to_json(),
            "action_space": None if self.action_space is None else self.action_space.to_json(),
            "normalization": None if self.normalization is None else self.normalization.to_json(),
            "training": self.training.to_dict(),
            "extra": self.extra,
        }
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        os.close(fd)
        try:
            torch.save(payload, tmp)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    @classmethod
    def load(cls, path: str | Path) -> Checkpoint:
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise
        except Exception as exc:  # torch raises several unrelated types for a bad file
            raise CheckpointError(f"{path}: not a readable checkpoint ({exc})") from exc
        if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(f"{path}: not an odetoode checkpoint of format {CHECKPOINT_FORMAT}")
        missing = {"arch", "kind", "config", "state_dict"} - payload.keys()
        if missing:
            raise CheckpointError(f"{path}: missing fields {sorted(missing)}")

        obs, act, norm = (payload.get(key) for key in ("observation_space", "action_space", "normalization"))
        return cls(
            arch=payload["arch"],
            kind=payload["kind"],
            config=payload["config"],
            state_dict=payload["state_dict"],
            env_id=payload.get("env_id"),
            observation_space=None if obs is None else Box.from_json(obs, "observation_space"),
            action_space=None if act is None else space_from_json(act, "action_space"),
            normalization=None if norm is None else Normalization.from_json(norm, "normalization"),
            training=TrainingRecord.from_mapping(payload.get("training") or {}),
            extra=payload.get("extra") or {},
        )
