"""Evaluating a whole ES population at once: every member's episode runs in lock-step with the others.

The trainer unrolls the flows of all members once per iteration (one batched ``matrix_exp`` per step) into a
population ``Program`` -- constants with a leading member axis -- and ships slices of it to workers. A worker keeps
one environment per member and, at every time step, normalizes all observations, evaluates all members with one
batched matmul per layer, and steps every environment still running.

A member's action is its program's output clipped to the ``Box`` bounds, or, for a ``Discrete(n)`` task, the argmax
of its ``n`` outputs (logits), exactly what the exported graph computes (``trainer.onnx_graph``).

Backends: ``inline`` (this process; tests), ``local`` (worker processes on this machine, the default) and ``ray``
(a Ray cluster, or a local Ray instance). All three run the same ``run_rollouts`` function.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from functools import partial
from multiprocessing import get_context
from typing import Any, Protocol

import numpy as np
import torch

from trainer.envs import make_env
from trainer.program import Program


@dataclass(frozen=True)
class RolloutRequest:
    """One episode per member: ``program`` has a leading member axis of length ``len(seeds)``.

    ``discrete``: the program outputs logits and every environment takes the index of the largest (the first of
    equal ones, as ONNX ``ArgMax`` does); ``action_low``/``action_high`` are then unused (empty). Otherwise the
    outputs are clipped to ``[action_low, action_high]``.
    """

    env_id: str
    program: Program
    seeds: tuple[int, ...]
    obs_mean: np.ndarray
    obs_std: np.ndarray
    obs_clip: float
    action_low: np.ndarray
    action_high: np.ndarray
    survival_bonus: float = 0.0
    max_steps: int | None = None
    discrete: bool = False

    def slice(self, start: int, stop: int) -> RolloutRequest:
        return replace(self, program=self.program.map(lambda t: t[start:stop]), seeds=self.seeds[start:stop])


@dataclass
class RolloutResult:
    """Per-member returns (``returns`` with the survival bonus removed, ``raw_returns`` as the task pays)."""

    returns: np.ndarray
    raw_returns: np.ndarray
    lengths: np.ndarray
    obs_count: float
    obs_sum: np.ndarray
    obs_sumsq: np.ndarray

    @property
    def steps(self) -> int:
        return int(self.lengths.sum())

    @staticmethod
    def concat(parts: Sequence[RolloutResult]) -> RolloutResult:
        return RolloutResult(
            np.concatenate([p.returns for p in parts]),
            np.concatenate([p.raw_returns for p in parts]),
            np.concatenate([p.lengths for p in parts]),
            sum(p.obs_count for p in parts),
            np.sum([p.obs_sum for p in parts], axis=0),
            np.sum([p.obs_sumsq for p in parts], axis=0),
        )


# Environments live as long as their worker process: creating MuJoCo models every iteration would dominate.
_ENVS: dict[str, list[Any]] = {}


def _environments(env_id: str, count: int) -> list[Any]:
    pool = _ENVS.setdefault(env_id, [])
    while len(pool) < count:
        pool.append(make_env(env_id))
    return pool[:count]


def run_rollouts(request: RolloutRequest) -> RolloutResult:
    """Runs one episode per member in lock-step; the policy of member ``i`` is ``request.program`` at index ``i``."""
    torch.set_num_threads(1)
    members = len(request.seeds)
    envs = _environments(request.env_id, members)
    first = np.stack([env.reset(seed=seed)[0] for env, seed in zip(envs, request.seeds, strict=True)])
    obs = first.reshape(members, -1).astype(np.float64)
    dim = obs.shape[1]
    mean = torch.from_numpy(request.obs_mean.astype(np.float32))
    std = torch.from_numpy(request.obs_std.astype(np.float32))
    low, high = request.action_low.astype(np.float32), request.action_high.astype(np.float32)
    returns, raw = np.zeros(members), np.zeros(members)
    lengths = np.zeros(members, dtype=np.int64)
    obs_sum, obs_sumsq = obs.sum(axis=0), (obs**2).sum(axis=0)
    obs_count = float(members)
    alive = np.ones(members, dtype=bool)
    program, index = request.program, np.arange(members)  # index: member of each row of `program`
    limit = request.max_steps or 10**9
    with torch.inference_mode():
        for _ in range(limit):
            if not alive.any():
                break
            if alive.sum() <= len(index) // 2:  # drop finished members from the batch once half are done
                keep = np.flatnonzero(alive[index])
                rows = torch.from_numpy(keep)
                program = program.map(partial(torch.index_select, dim=0, index=rows))
                index = index[keep]
            x = torch.from_numpy(obs[index].astype(np.float32))
            z = ((x - mean) / std).clamp_(-request.obs_clip, request.obs_clip)
            outputs = program(z.unsqueeze(1)).squeeze(1)
            # torch.argmax returns the first of equal maxima, like ONNX ArgMax (select_last_index=0) in the export.
            actions = outputs.argmax(dim=-1).numpy() if request.discrete else np.clip(outputs.numpy(), low, high)
            for row, member in enumerate(index):
                if not alive[member]:
                    continue
                action = int(actions[row]) if request.discrete else actions[row]
                o, r, terminated, truncated, _ = envs[member].step(action)
                raw[member] += r
                returns[member] += r - request.survival_bonus
                lengths[member] += 1
                o = np.asarray(o, dtype=np.float64).reshape(dim)
                obs[member] = o
                obs_sum += o
                obs_sumsq += o * o
                obs_count += 1
                if terminated or truncated:
                    alive[member] = False
    return RolloutResult(returns, raw, lengths, obs_count, obs_sum, obs_sumsq)


class Backend(Protocol):
    workers: int

    def evaluate(self, request: RolloutRequest) -> RolloutResult: ...

    def close(self) -> None: ...


def _chunks(members: int, workers: int) -> list[tuple[int, int]]:
    bounds = np.linspace(0, members, workers + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in itertools.pairwise(bounds) if b > a]


class InlineBackend:
    """Everything in this process (tests, debugging, and the evaluation of exported policies)."""

    workers = 1

    def evaluate(self, request: RolloutRequest) -> RolloutResult:
        return run_rollouts(request)

    def close(self) -> None:
        pass


def _worker_init() -> None:
    torch.set_num_threads(1)
    os.environ.setdefault("MUJOCO_GL", "disabled")
    # A killed trainer cannot shut its pool down; workers notice the orphaning and leave instead of lingering.
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()


class LocalBackend:
    """Worker processes on this machine (spawned: safe with torch's thread pools), one slice of members each."""

    def __init__(self, workers: int) -> None:
        self.workers = max(1, workers)
        self._pool = ProcessPoolExecutor(self.workers, mp_context=get_context("spawn"), initializer=_worker_init)

    def evaluate(self, request: RolloutRequest) -> RolloutResult:
        parts = [request.slice(a, b) for a, b in _chunks(len(request.seeds), self.workers)]
        return RolloutResult.concat(list(self._pool.map(run_rollouts, parts)))

    def close(self) -> None:
        self._pool.shutdown(cancel_futures=True)


class RayBackend:
    """Ray actors (one per worker CPU), each holding its environments between iterations.

    ``address=None`` starts a local Ray instance; ``"auto"`` or ``ray://...`` joins a cluster.
    """

    def __init__(self, workers: int | None = None, address: str | None = None) -> None:
        import ray

        if not ray.is_initialized():
            ray.init(address=address, num_cpus=workers if address is None else None, include_dashboard=False,
                     log_to_driver=False, configure_logging=False)  # fmt: skip
        self._ray = ray
        self.workers = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        actor: Any = ray.remote(num_cpus=1)(_RolloutActor)
        self._actors: list[Any] = [actor.remote() for _ in range(self.workers)]

    def evaluate(self, request: RolloutRequest) -> RolloutResult:
        spans = _chunks(len(request.seeds), self.workers)
        futures = [a.run.remote(request.slice(s, e)) for a, (s, e) in zip(self._actors, spans, strict=False)]
        return RolloutResult.concat(self._ray.get(futures))

    def close(self) -> None:
        for a in self._actors:
            self._ray.kill(a)
        self._ray.shutdown()


class _RolloutActor:
    def __init__(self) -> None:
        _worker_init()

    def run(self, request: RolloutRequest) -> RolloutResult:
        return run_rollouts(request)


def make_backend(kind: str, workers: int, address: str | None = None) -> Backend:
    if kind == "inline":
        return InlineBackend()
    if kind == "local":
        return LocalBackend(workers)
    if kind == "ray":
        return RayBackend(workers, address)
    raise ValueError(f"unknown backend {kind!r}; expected inline, local or ray")
