"""Evaluating an exported policy in its environment with ONNX Runtime alone (no PyTorch).

This is the check a user can run on a bundled model: the file, ONNX Runtime and the environment, nothing of the
trainer; ``Box`` policies and discrete ones (whose ``action`` output is the index the environment takes) alike.
Evaluation seeds start at ``EVALUATION_SEED_BASE``; training draws its episode seeds below it, so the two never
overlap. On the command line: ``python -m trainer evaluate model.onnx --episodes 20``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from odetoode.modelfile import POLICY_INPUT, POLICY_OUTPUT
from trainer.envs import make_env

EVALUATION_SEED_BASE = 1_000_000_000
"""Training episode seeds are drawn from ``[0, EVALUATION_SEED_BASE)``; evaluation uses seeds from here up."""


@dataclass(frozen=True)
class Evaluation:
    env_id: str
    returns: tuple[float, ...]
    lengths: tuple[int, ...]
    seeds: tuple[int, ...]

    @property
    def mean(self) -> float:
        return float(np.mean(self.returns))

    @property
    def std(self) -> float:
        return float(np.std(self.returns))


def policy_session(path: str | Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_episode(
    session: ort.InferenceSession, env_id: str, seed: int, max_steps: int | None = None
) -> tuple[float, int]:
    """One episode of the ONNX policy; returns (return, length). The environment gets the graph's ``action``
    output: a float vector (``Box``) or, for a discrete policy, the index as an ``int``."""
    env = make_env(env_id)
    try:
        obs, _ = env.reset(seed=seed)
        total, steps = 0.0, 0
        while max_steps is None or steps < max_steps:
            x = np.asarray(obs, dtype=np.float32).reshape(1, -1)
            action = session.run([POLICY_OUTPUT], {POLICY_INPUT: x})[0][0]
            # A discrete policy's action is an int64 index (a 0-d row); Discrete spaces want a plain int.
            obs, reward, terminated, truncated, _ = env.step(int(action) if action.ndim == 0 else action)
            total += float(reward)
            steps += 1
            if terminated or truncated:
                break
        return total, steps
    finally:
        env.close()


def evaluate_onnx(path: str | Path, env_id: str | None = None, episodes: int = 20,
                  seed: int = EVALUATION_SEED_BASE) -> Evaluation:  # fmt: skip
    """Mean return of the ONNX policy at ``path`` over ``episodes`` episodes with seeds ``seed, seed+1, ...``."""
    session = policy_session(path)
    env_id = env_id or session.get_modelmeta().custom_metadata_map.get("odetoode.env_id")
    if not env_id:
        raise ValueError(f"{path}: no odetoode.env_id in the model; pass the environment id")
    seeds = tuple(seed + i for i in range(episodes))
    results = [run_episode(session, env_id, s) for s in seeds]
    return Evaluation(env_id, tuple(r for r, _ in results), tuple(n for _, n in results), seeds)


if __name__ == "__main__":  # the spelling the model cards of the bundled models give; the CLI does the work
    import sys

    from trainer.cli import main

    main(["evaluate", *sys.argv[1:]])
