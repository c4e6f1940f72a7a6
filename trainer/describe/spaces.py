"""What the user tells about a policy: the spaces it is served with (from a Gymnasium id or stated) and the
observation normalization that lived outside its graph (statistics as VecNormalize or NormalizeObservation keep them).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from odetoode.modelfile import Box, Discrete, ModelFormatError, Normalization, Space
from trainer.describe.errors import DescribeError, OptionsError

VECNORMALIZE_CLIP = 10.0
"""Stable-Baselines3 VecNormalize's default ``clip_obs``: the clip when the statistics do not state one."""
VECNORMALIZE_EPSILON = 1e-8
"""VecNormalize's (and Gymnasium's NormalizeObservation's) ``epsilon``: ``std = sqrt(var + epsilon)``."""


@dataclass(frozen=True)
class PolicySpaces:
    """The spaces a described policy is served with, and the environment they came from (if any)."""

    observation: Box
    action: Space
    env_id: str | None = None


def spaces_of_env(env_id: str) -> PolicySpaces:
    """The (flattened) observation Box and the Box or Discrete action space of a Gymnasium id or ``dmc:domain/task``."""
    try:
        if env_id.startswith("dmc:"):
            from trainer.envs import make_env  # flattens DM Control's dict observations; needs mujoco

            env = make_env(env_id)
        else:
            env = gym.make(env_id)
    except (gym.error.Error, ValueError) as exc:
        raise DescribeError(f"--env {env_id!r}: {exc}") from None
    obs_space, act_space = env.observation_space, env.action_space
    env.close()
    if not isinstance(obs_space, gym.spaces.Box):
        raise DescribeError(f"{env_id}: the observation space {obs_space} is not a Box; a policy reads a float vector")
    observation = _flat_box(obs_space)
    if isinstance(act_space, gym.spaces.Discrete):
        if int(act_space.start) != 0:
            raise DescribeError(f"{env_id}: Discrete actions must start at 0, this space starts at {act_space.start}")
        return PolicySpaces(observation, Discrete(int(act_space.n)), env_id)
    if isinstance(act_space, gym.spaces.Box):
        return PolicySpaces(observation, _flat_box(act_space), env_id)
    raise DescribeError(f"{env_id}: the action space {act_space} is neither a Box nor a Discrete")


def _flat_box(space: gym.spaces.Box) -> Box:
    low, high = np.asarray(space.low, np.float64).reshape(-1), np.asarray(space.high, np.float64).reshape(-1)
    return Box((low.size,), tuple(float(v) for v in low), tuple(float(v) for v in high))


def box_of(dim: int, low: Sequence[float], high: Sequence[float], what: str) -> Box:
    """A Box of ``dim`` elements; ``low``/``high`` hold one value for all, one per element, or none (unbounded)."""

    def values(given: Sequence[float], default: float, side: str) -> tuple[float, ...]:
        if len(given) in (0, 1):
            return (float(given[0]) if given else default,) * dim
        if len(given) != dim:
            raise OptionsError(f"--{what}-{side}: {len(given)} values for {dim} elements (give 1 or {dim})")
        return tuple(float(v) for v in given)

    if dim < 1:
        raise OptionsError(f"the {what} needs at least one element, got {dim}")
    box = Box((dim,), values(low, -math.inf, "low"), values(high, math.inf, "high"))
    if any(lo > hi for lo, hi in zip(box.low, box.high, strict=True)):
        raise OptionsError(f"--{what}-low must not exceed --{what}-high")
    return box


def normalization_from_stats(
    mean: Sequence[float],
    *,
    std: Sequence[float] | None = None,
    var: Sequence[float] | None = None,
    clip: float = VECNORMALIZE_CLIP,
    epsilon: float = VECNORMALIZE_EPSILON,
) -> Normalization:
    """``clip((obs - mean) / std, -clip, clip)`` from a mean and either ``std`` or ``var`` (then ``std =
    sqrt(var + epsilon)``, as VecNormalize and Gymnasium's NormalizeObservation compute it); ``clip`` may be inf."""
    if (std is None) == (var is None):
        raise OptionsError("a normalization needs the mean and exactly one of std and var")
    if var is not None:
        std = [math.sqrt(float(v) + epsilon) if float(v) + epsilon >= 0 else math.nan for v in var]
    assert std is not None
    if len(std) != len(mean):
        raise DescribeError(f"the normalization's mean has {len(mean)} values, its std/var {len(std)}")
    norm = Normalization(tuple(float(v) for v in mean), tuple(float(v) for v in std), float(clip))
    try:  # the contract's own checks: positive finite std, positive clip, no NaN
        return Normalization.from_json(norm.to_json(), "normalization")
    except (ModelFormatError, ValueError) as exc:
        raise DescribeError(str(exc)) from None


def read_statistics(path: Path) -> dict[str, Any]:
    """Normalization statistics from ``.npz`` or ``.json``: ``mean`` and ``var`` (VecNormalize's ``obs_rms``) or
    ``std``; optionally ``clip`` (or ``clip_obs``) and ``epsilon``. Pickles are never read."""
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as data:
                raw: dict[str, Any] = {k: data[k] for k in data.files}
        elif path.suffix == ".json":
            raw = json.loads(path.read_text())
        else:
            raise DescribeError(f"{path}: normalization statistics are read from .npz or .json")
    except (OSError, ValueError) as exc:
        raise DescribeError(f"{path}: {exc}") from None
    if not isinstance(raw, dict) or "mean" not in raw:
        raise DescribeError(f"{path}: needs a 'mean' and a 'var' or 'std'")
    out: dict[str, Any] = {"mean": np.asarray(raw["mean"], np.float64).reshape(-1).tolist()}
    for key in ("std", "var"):
        if key in raw:
            out[key] = np.asarray(raw[key], np.float64).reshape(-1).tolist()
    for key, alias in (("clip", "clip_obs"), ("epsilon", "epsilon")):
        value = raw.get(key, raw.get(alias))
        if value is not None:
            out[key] = float(np.asarray(value))
    return out
