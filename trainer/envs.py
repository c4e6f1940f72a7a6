"""Environments behind one interface: Gymnasium MuJoCo v5, DM Control suite tasks, classic control.

Everything is a ``gymnasium.Env`` with a flat float observation (a ``Box``) and an action that is either a bounded
float vector (a ``Box``) or an index (``Discrete(n)``):

* Gymnasium ids as they are: ``HalfCheetah-v5``, ``Swimmer-v5``, ``Hopper-v5``, ``Walker2d-v5``, ``Ant-v5``,
  ``Humanoid-v5``, ``Pendulum-v1`` (the classic-control task the fast tests train), and the discrete classic-control
  tasks ``CartPole-v1``, ``Acrobot-v1``, ``MountainCar-v0``;
* DM Control as ``dmc:<domain>/<task>`` (``dmc:swimmer/swimmer15``, ``dmc:humanoid/stand``, ``dmc:cheetah/run``),
  adapted by Farama's Shimmy and flattened with ``gymnasium.wrappers.FlattenObservation``.

``EnvSpec`` records what training and export need to know about a task: its observation and action spaces (in the
model-file contract's types, ``odetoode.modelfile.Box`` / ``Discrete``), episode length and the survival bonus
subtracted during training (ARS's trick for the locomotion tasks that pay for staying alive). A policy for a
``Discrete(n)`` task outputs ``n`` logits and acts greedily: the environment gets their argmax.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import gymnasium as gym
import mujoco
import numpy as np

from odetoode.modelfile import Box, Discrete, Space

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
DISCRETE_TASKS = ("CartPole-v1", "Acrobot-v1", "MountainCar-v0")

SUPPORTED = (
    "a registered Gymnasium id with a Box observation and a Box or Discrete action (e.g. HalfCheetah-v5, "
    "CartPole-v1) or dmc:<domain>/<task>"
)
"""What the trainer takes, as the error messages below say it."""


class UnsupportedEnvironmentError(ValueError):
    """The trainer cannot train on this environment; the message is one line naming the id and what is supported.

    The base of ``UnknownEnvironmentError`` and ``UnsupportedSpaceError``; also raised as itself for a registered
    environment whose dependencies are not installed."""


class UnknownEnvironmentError(UnsupportedEnvironmentError):
    """The environment id is neither a registered Gymnasium id nor a ``dmc:domain/task`` of the suite."""


class UnsupportedSpaceError(UnsupportedEnvironmentError):
    """The environment exists but its observation or action space is not one a policy here can read or write
    (observations: ``Box``; actions: ``Box`` or ``Discrete(n)`` starting at 0)."""


@dataclass(frozen=True)
class EnvSpec:
    """A task as training and export see it: its spaces (the model-file contract's types), its episode length, and
    the per-step survival bonus training subtracts."""

    env_id: str
    observation_space: Box
    """Flattened: shape ``[obs_dim]``, with the environment's bounds (often ``+-inf``)."""
    action_space: Space
    """A ``Box`` (flattened, shape ``[act_dim]``) or a ``Discrete(n)``."""
    max_episode_steps: int
    survival_bonus: float

    @property
    def obs_dim(self) -> int:
        return self.observation_space.size

    @property
    def discrete(self) -> bool:
        """The action is an index: the policy's outputs are logits and the environment takes their argmax."""
        return isinstance(self.action_space, Discrete)

    @property
    def act_dim(self) -> int:
        """How many numbers the policy network outputs: the action's size, or ``n`` logits for ``Discrete(n)``."""
        return self.action_space.n if isinstance(self.action_space, Discrete) else self.action_space.size

    @property
    def action_low(self) -> tuple[float, ...]:
        """Lower bounds a ``Box`` action is clipped to; empty for a ``Discrete`` one (an index needs no clipping)."""
        return () if isinstance(self.action_space, Discrete) else self.action_space.low

    @property
    def action_high(self) -> tuple[float, ...]:
        """Upper bounds a ``Box`` action is clipped to; empty for a ``Discrete`` one."""
        return () if isinstance(self.action_space, Discrete) else self.action_space.high


def make_env(env_id: str) -> gym.Env:
    """A fresh environment for ``env_id`` with a flat observation and a time limit.

    Raises ``UnknownEnvironmentError`` for an id that names no environment and ``UnsupportedEnvironmentError`` for
    one whose dependencies are missing (the message says which)."""
    if env_id.startswith(DMC_PREFIX):
        import shimmy  # type: ignore[import-untyped]  # registers dm_control/* ids with Gymnasium

        gym.register_envs(shimmy)
        domain, _, task = env_id.removeprefix(DMC_PREFIX).partition("/")
        if not domain or not task:
            raise UnknownEnvironmentError(f"unknown environment {env_id!r}: DM Control ids are dmc:<domain>/<task>")
        try:
            env = gym.make(f"dm_control/{domain}-{task}-v0")
        except gym.error.Error as exc:
            raise UnknownEnvironmentError(f"unknown environment {env_id!r} ({_one_line(exc)}); the trainer takes "
                                          f"{SUPPORTED}") from None  # fmt: skip
        # DM Control tasks run 1000 control steps; the adapter leaves the limit to the suite's own termination.
        return gym.wrappers.TimeLimit(gym.wrappers.FlattenObservation(env), max_episode_steps=1000)
    try:
        return gym.make(env_id)
    except gym.error.DependencyNotInstalled as exc:
        raise UnsupportedEnvironmentError(f"environment {env_id!r} needs a package that is not installed "
                                          f"({_one_line(exc)})") from None  # fmt: skip
    except gym.error.Error as exc:
        raise UnknownEnvironmentError(f"unknown environment {env_id!r} ({_one_line(exc)}); the trainer takes "
                                      f"{SUPPORTED}") from None  # fmt: skip


def _one_line(exc: BaseException) -> str:
    """Gymnasium's message (which carries hints such as "Did you mean: `CartPole`?") on one line, without its final
    full stop, to quote inside ours."""
    return " ".join(str(exc).split()).rstrip(".") or type(exc).__name__


def env_spec(env_id: str) -> EnvSpec:
    """The spec of ``env_id``; raises ``UnknownEnvironmentError`` (see ``make_env``) or ``UnsupportedSpaceError``
    when its observation is not a ``Box`` or its action neither a ``Box`` nor a ``Discrete`` starting at 0."""
    env = make_env(env_id)
    try:
        obs_space, act_space = env.observation_space, env.action_space
        if not isinstance(obs_space, gym.spaces.Box):
            raise UnsupportedSpaceError(f"environment {env_id!r} has a {_space_name(obs_space)} observation; the "
                                        "trainer reads Box observations only")  # fmt: skip
        action: Space
        if isinstance(act_space, gym.spaces.Box):
            action = _box(act_space)
        elif isinstance(act_space, gym.spaces.Discrete) and int(act_space.start) == 0:
            action = Discrete(int(act_space.n))
        else:
            raise UnsupportedSpaceError(f"environment {env_id!r} has a {_space_name(act_space)} action; the trainer "
                                        "writes Box actions or Discrete(n) actions starting at 0")  # fmt: skip
        limit = env.spec.max_episode_steps if env.spec is not None and env.spec.max_episode_steps else 1000
        return EnvSpec(
            env_id=env_id,
            observation_space=_box(obs_space),
            action_space=action,
            max_episode_steps=int(limit),
            survival_bonus=SURVIVAL_BONUS.get(env_id, 0.0),
        )
    finally:
        env.close()


def _box(space: gym.spaces.Box) -> Box:
    """The flattened contract ``Box`` of a Gymnasium box (row-major, per-element bounds)."""
    low = np.broadcast_to(space.low, space.shape).ravel()
    high = np.broadcast_to(space.high, space.shape).ravel()
    return Box((low.size,), tuple(float(v) for v in low), tuple(float(v) for v in high))


def _space_name(space: gym.Space) -> str:
    if isinstance(space, gym.spaces.Discrete) and int(space.start) != 0:
        return f"Discrete({int(space.n)}, start={int(space.start)})"
    return type(space).__name__
