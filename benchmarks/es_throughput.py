"""Training speed: environment steps per second of the ES rollout loop against the raw simulation rate.

Measured in one run, for one environment:

* floor -- the raw rate: the same number of environments stepped in lock-step with random actions, no policy;
* the ES loop -- ``run_rollouts`` on a population of ISO-ODEtoODE policies (h = 16, N = 25): observation
  normalization, one batched evaluation of all members per step, bookkeeping;
* the speed-up of the local backend from 1 to 2 worker processes (workers already started, environments built).

Target: the ES loop keeps at least 80% of the raw rate.

    python benchmarks/es_throughput.py [--env HalfCheetah-v5] [--members 100] [--steps 200]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from trainer.envs import env_spec, make_env
from trainer.es import population, sample_directions
from trainer.models import build_model
from trainer.rollouts import LocalBackend, RolloutRequest, run_rollouts


def raw_rate(env_id: str, members: int, steps: int) -> float:
    """Steps/s of ``members`` environments stepped in lock-step with random actions."""
    envs = [make_env(env_id) for _ in range(members)]
    for i, env in enumerate(envs):
        env.reset(seed=i)
    rng = np.random.default_rng(0)
    low, high = envs[0].action_space.low, envs[0].action_space.high
    done = 0
    start = time.perf_counter()
    for _ in range(steps):
        actions = rng.uniform(low, high, size=(members, *low.shape)).astype(np.float32)
        for env, action in zip(envs, actions, strict=True):
            _, _, terminated, truncated, _ = env.step(action)
            done += 1
            if terminated or truncated:
                env.reset()
    return done / (time.perf_counter() - start)


def request(env_id: str, members: int, steps: int) -> RolloutRequest:
    spec = env_spec(env_id)
    model = build_model("iso-odetoode", spec.obs_dim, spec.act_dim, dtype=torch.float64)
    params = {k: v.detach() for k, v in model.named_parameters()}
    pairs = population(params, sample_directions(params, members // 2, np.random.default_rng(0)), 0.05)
    with torch.no_grad():
        program = model.program(pairs).map(lambda t: t.to(torch.float32).contiguous())
    return RolloutRequest(
        env_id, program, tuple(range(members)), np.zeros(spec.obs_dim), np.ones(spec.obs_dim), 5.0,
        np.asarray(spec.action_low), np.asarray(spec.action_high), 0.0, steps,
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="HalfCheetah-v5")
    parser.add_argument("--members", type=int, default=100)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    req = request(args.env, args.members, args.steps)
    run_rollouts(req)  # build the environments of this process once

    raw, loop = [], []
    for _ in range(args.rounds):  # alternate, so drift on a shared machine hits both
        raw.append(raw_rate(args.env, args.members, args.steps))
        start = time.perf_counter()
        result = run_rollouts(req)
        loop.append(result.steps / (time.perf_counter() - start))
    r, lp = float(np.median(raw)), float(np.median(loop))
    print(f"{args.env}, {args.members} members x {args.steps} steps, one process; median of {args.rounds} rounds")
    print(f"{'floor: raw env.step, random actions':<44}{r:>12,.0f} steps/s   1.00")
    print(f"{'ES rollout loop (ISO-ODEtoODE h=16 N=25)':<44}{lp:>12,.0f} steps/s   {lp / r:.2f}  (target >= 0.80)")

    rates = {}
    for workers in (1, 2):
        backend = LocalBackend(workers)
        try:
            backend.evaluate(req)  # start the workers and build their environments
            start = time.perf_counter()
            steps = sum(backend.evaluate(req).steps for _ in range(args.rounds))
            rates[workers] = steps / (time.perf_counter() - start)
        finally:
            backend.close()
    print(f"{'local backend, 1 worker process':<44}{rates[1]:>12,.0f} steps/s")
    print(f"{'local backend, 2 worker processes':<44}{rates[2]:>12,.0f} steps/s   speed-up {rates[2] / rates[1]:.2f}x")


if __name__ == "__main__":
    main()
