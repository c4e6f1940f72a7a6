"""Environments behind one interface: Gymnasium MuJoCo v5, DM Control suite tasks, classic control.

Everything is a ``gymnasium.Env`` with a flat float observation and a bounded float action:

* Gymnasium ids as they are: ``HalfCheetah-v5``, ``Swimmer-v5``, ``Hopper-v5``, ``Walker2d-v5``, ``Ant-v5``,
  ``Humanoid-v5``, ``Pendulum-v1`` (the classic-control task the fast tests train);
* DM Control as ``dmc:<domain>/<task>`` (``dmc:swimmer/swimmer15``, ``dmc:humanoid/stand``, ``dmc:cheetah/run``),
  adapted by Farama's Shimmy and flattened with ``gymnasium.wrappers.FlattenObservation``.

``EnvSpec`` records what training and export need to know about a task: sizes, action bounds, episode length and the
survival bonus subtracted during training (ARS's trick for the locomotion tasks that pay for staying alive).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import gymnasium as gym
import mujoco
import numpy as np

# We never render; without this dm_control probes for a display (and warns) when imported.
os.environ.setdefault("MUJOCO_GL", "disabled")

log = logging.getLogger(__name__)
# MuJoCo prints its warnings straight to stderr (e.g. HalfCheetah's deprecated 'settotalmass', once per env);
# route them through logging instead, where they can be filtered.
mujoco.set_mju_user_warning(lambda message: log.debug("mujoco: %s", message))

DMC_PREFIX = "dmc:"

# Reward per step paid just for staying alive; subtracted during ES training (ARS, Mania et al. 2018).
SURVIVAL_BONUS = {"Hopper-v5": 1.0, "Walker2d-v5": 1.0, "Ant-v5": 1.0, "Humanoid-v5": 5.0}

MUJOCO_TASKS = ("Swimmer-v5", "HalfCheetah-v5", "Hopper-v5", "Walker2d-v5", "Ant-v5", "Humanoid-v5")
DMC_TASKS = ("dmc:swimmer/swimmer15", "dmc:humanoid/stand", "dmc:cheetah/run")
CLASSIC_TASKS = ("Pendulum-v1",)


class UnknownEnvironmentError(ValueError):
    """The environment id is neither a registered Gymnasium id nor a ``dmc:domain/task`` of the suite."""


@dataclass(frozen=True)
class EnvSpec:
    env_id: str
    obs_dim: int
    act_dim: int
    action_low: tuple[float, ...]
    action_high: tuple[float, ...]
    max_episode_steps: int
    survival_bonus: float


def make_env(env_id: str) -> gym.Env:
    """A fresh environment for ``env_id`` with a flat observation and a time limit."""
    if env_id.startswith(DMC_PREFIX):
        import shimmy  # type: ignore[import-untyped]  # registers dm_control/* ids with Gymnasium

        gym.register_envs(shimmy)
        domain, _, task = env_id.removeprefix(DMC_PREFIX).partition("/")
        if not domain or not task:
            raise UnknownEnvironmentError(f"{env_id!r}: DM Control ids look like dmc:<domain>/<task>")
        try:
            env = gym.make(f"dm_control/{domain}-{task}-v0")
        except gym.error.Error as exc:
            raise UnknownEnvironmentError(f"{env_id!r}: {exc}") from None
        # DM Control tasks run 1000 control steps; the adapter leaves the limit to the suite's own termination.
        return gym.wrappers.TimeLimit(gym.wrappers.FlattenObservation(env), max_episode_steps=1000)
    try:
        return gym.make(env_id)
    except gym.error.Error as exc:
        raise UnknownEnvironmentError(f"{env_id!r}: {exc}") from None


def env_spec(env_id: str) -> EnvSpec:
    env = make_env(env_id)
    try:
        obs_space, act_space = env.observation_space, env.action_space
        if not isinstance(act_space, gym.spaces.Box) or not isinstance(obs_space, gym.spaces.Box):
            raise UnknownEnvironmentError(f"{env_id!r}: needs Box observation and action spaces")
        limit = env.spec.max_episode_steps if env.spec is not None and env.spec.max_episode_steps else 1000
        return EnvSpec(
            env_id=env_id,
            obs_dim=int(np.prod(obs_space.shape)),
            act_dim=int(np.prod(act_space.shape)),
            action_low=tuple(float(v) for v in np.ravel(act_space.low)),
            action_high=tuple(float(v) for v in np.ravel(act_space.high)),
            max_episode_steps=int(limit),
            survival_bonus=SURVIVAL_BONUS.get(env_id, 0.0),
        )
    finally:
        env.close()
