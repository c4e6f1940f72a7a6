"""Closed-loop demo: a Gymnasium environment driven through the server over ActStream by a served policy.

    python -m odetoode.demo --policy halfcheetah [--target localhost:8001] [--hz 100] [--seed 1000000000]

It prints the achieved control rate, the round-trip latency percentiles and the episode return, then evaluates the
same policy file locally with ONNX Runtime on the same seed and checks that both returns are equal: the server
computes exactly what the file computes. Needs the environment packages (``odetoode[train]``), not PyTorch.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from odetoode.client import Action, LoopReport, PolicyClient


@dataclass
class _Episode:
    held: np.ndarray | int
    total: float = 0.0
    steps: int = 0


@dataclass
class DemoResult:
    env_id: str
    version: str
    served_return: float
    steps: int
    report: LoopReport
    local_return: float | None = None


def run_demo(target: str, policy: str, *, hz: float = 100.0, seed: int = 1_000_000_000, realtime: bool = False,
             repository: Path | None = None, max_steps: int | None = None) -> DemoResult:  # fmt: skip
    """One episode through the server; with ``repository``, also the local ONNX Runtime return of the same file."""
    from trainer.envs import make_env  # the environments are an optional dependency of the service

    with PolicyClient(target, timeout=5.0) as client:
        client.wait_ready(30)
        info = client.get_policy(policy)
        env = make_env(info.env_id)
        discrete = info.action_space.HasField("discrete")
        episode = _Episode(0 if discrete else np.zeros(len(info.action_space.low), np.float32))

        def observe(sequence: int, previous: Action | None) -> np.ndarray | None:
            if sequence == 0:
                obs, _ = env.reset(seed=seed)
                return np.asarray(obs, dtype=np.float32)
            if previous is not None:  # None: a missed cycle in realtime mode, hold the last action
                episode.held = previous.command
            obs, reward, terminated, truncated, _ = env.step(episode.held)
            episode.total += float(reward)
            episode.steps += 1
            if terminated or truncated or (max_steps is not None and episode.steps >= max_steps):
                return None
            return np.asarray(obs, dtype=np.float32)

        report = client.control_loop(policy, hz, observe, version=info.version, realtime=realtime)
        env.close()
    result = DemoResult(info.env_id, info.version, episode.total, episode.steps, report)
    if repository is not None:
        from trainer.evaluate import policy_session, run_episode

        session = policy_session(repository / policy / info.version / "model.onnx")
        result.local_return, _ = run_episode(session, info.env_id, seed, max_steps)
    return result


class _Help(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The module docstring as written, and every option's default."""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m odetoode.demo", description=__doc__, formatter_class=_Help)
    parser.add_argument("--policy", default="halfcheetah", help="the served policy")
    parser.add_argument("--target", default="localhost:8001", help="gRPC address of the server")
    parser.add_argument("--hz", type=float, default=100.0, help="control rate")
    parser.add_argument("--seed", type=int, default=1_000_000_000, help="episode seed")
    parser.add_argument(
        "--realtime",
        action="store_true",
        help="robot timing: a late action is dropped and the last one held (returns may differ)",
    )
    parser.add_argument("--repository", type=Path, default=Path("models"),
                        help="where the served file is, for the local comparison ('' to skip)")  # fmt: skip
    parser.add_argument("--max-steps", type=int, default=None)
    args = parser.parse_args(argv)
    repository = args.repository if str(args.repository) else None
    r = run_demo(args.target, args.policy, hz=args.hz, seed=args.seed, realtime=args.realtime,
                 repository=repository, max_steps=args.max_steps)  # fmt: skip
    print(f"{args.policy} v{r.version} on {r.env_id}, seed {args.seed}: {r.steps} steps")
    print(f"  control loop: {r.report.summary()}")
    print(f"  episode return through the server: {r.served_return:.3f}")
    if r.local_return is not None:
        same = abs(r.served_return - r.local_return) <= 1e-6 * max(1.0, abs(r.local_return))
        print(f"  episode return, local ONNX Runtime: {r.local_return:.3f} ({'equal' if same else 'DIFFERENT'})")


if __name__ == "__main__":
    main()
