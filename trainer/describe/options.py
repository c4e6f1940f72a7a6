"""The command's options (flattened into ``python -m trainer describe-policy``): the spaces and the normalization as
stated on the command line, resolved against the graph's declared sizes."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import onnx

from odetoode.modelfile import Discrete, Normalization
from trainer.describe.errors import DescribeError, OptionsError
from trainer.describe.graph import static_dim
from trainer.describe.spaces import (
    VECNORMALIZE_CLIP,
    VECNORMALIZE_EPSILON,
    PolicySpaces,
    box_of,
    normalization_from_stats,
    read_statistics,
    spaces_of_env,
)


@dataclass
class SpaceOptions:
    """The spaces: from --env, or stated (every size defaults to the graph's own when it is fixed there)."""

    env: str | None = None
    """A Gymnasium id (or dmc:<domain>/<task>) to read the observation and action spaces from; recorded as the
    model's env_id. Without it, state the spaces with the options below."""
    observation_dim: int | None = None
    """Without --env: observation size (default: the input's fixed size)."""
    observation_low: tuple[float, ...] = ()
    """Without --env: observation lower bounds, one for all or one per element (default: unbounded)."""
    observation_high: tuple[float, ...] = ()
    """Without --env: observation upper bounds, one for all or one per element (default: unbounded)."""
    action_dim: int | None = None
    """Without --env: Box action size (default: the output's fixed size)."""
    action_low: tuple[float, ...] = ()
    """Without --env: Box action lower bounds, one for all or one per element (default: unbounded)."""
    action_high: tuple[float, ...] = ()
    """Without --env: Box action upper bounds, one for all or one per element (default: unbounded)."""
    discrete: int | None = None
    """Without --env: a Discrete(n) action space of this n instead of a Box."""

    def resolve(self, observation: onnx.ValueInfoProto, action: onnx.ValueInfoProto) -> PolicySpaces:
        """The spaces these options state, sizes not given read from the graph's ``observation``/``action``."""
        stated = [f for f in dataclasses.fields(self) if f.name != "env" and getattr(self, f.name) not in (None, ())]
        if self.env is not None:
            if stated:
                flags = ", ".join("--" + f.name.replace("_", "-") for f in stated)
                raise OptionsError(f"--env reads the spaces from the environment; drop {flags}")
            return spaces_of_env(self.env)
        obs_dim = self.observation_dim or static_dim(observation, 1)
        if obs_dim is None:
            raise DescribeError("the graph does not fix the observation size: give --observation-dim (or --env)")
        obs = box_of(obs_dim, self.observation_low, self.observation_high, "observation")
        if self.discrete is not None:
            if self.action_dim is not None or self.action_low or self.action_high:
                raise OptionsError("--discrete states a Discrete action space: drop --action-dim/-low/-high")
            if self.discrete < 1:
                raise OptionsError(f"--discrete must be >= 1, got {self.discrete}")
            return PolicySpaces(obs, Discrete(self.discrete))
        bounds = max(len(self.action_low), len(self.action_high))
        act_dim = self.action_dim or static_dim(action, 1) or bounds or None
        if act_dim is None:
            raise DescribeError("the graph does not fix the action size: give --action-dim (or --env)")
        return PolicySpaces(obs, box_of(act_dim, self.action_low, self.action_high, "action"))


@dataclass
class NormalizationOptions:
    """An observation normalization that lived outside the graph (VecNormalize, NormalizeObservation): baked in,
    so clients send raw observations."""

    normalization: Path | None = None
    """Statistics as .npz or .json: 'mean' and 'var' (VecNormalize's obs_rms) or 'std'; optionally 'clip'
    (or 'clip_obs') and 'epsilon'."""
    obs_mean: tuple[float, ...] = ()
    """Instead of --normalization: the observation mean, one value per element."""
    obs_std: tuple[float, ...] = ()
    """With --obs-mean: the standard deviation ..."""
    obs_var: tuple[float, ...] = ()
    """... or the variance (std = sqrt(var + epsilon))."""
    clip_obs: float | None = None
    """Normalized observations are clipped to +-this (default: the statistics' clip, else 10 as VecNormalize; inf:
    no clip)."""
    epsilon: float | None = None
    """Added to var before the square root (default: the statistics' epsilon, else 1e-8 as VecNormalize)."""

    def resolve(self) -> Normalization | None:
        """The normalization these options state, or ``None``."""
        given = bool(self.obs_mean or self.obs_std or self.obs_var)
        if self.normalization is not None and given:
            raise OptionsError("give --normalization or --obs-mean with --obs-std/--obs-var, not both")
        if self.normalization is not None:
            stats = read_statistics(self.normalization)
        elif given:
            stats = {"mean": self.obs_mean, "std": self.obs_std or None, "var": self.obs_var or None}
        else:
            if self.clip_obs is not None or self.epsilon is not None:
                raise OptionsError("--clip-obs/--epsilon need a normalization (--normalization or --obs-mean)")
            return None
        clip = self.clip_obs if self.clip_obs is not None else stats.get("clip", VECNORMALIZE_CLIP)
        epsilon = self.epsilon if self.epsilon is not None else stats.get("epsilon", VECNORMALIZE_EPSILON)
        return normalization_from_stats(stats["mean"], std=stats.get("std"), var=stats.get("var"), clip=clip,
                                        epsilon=epsilon)  # fmt: skip
