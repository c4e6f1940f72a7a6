"""``python -m trainer es``: train a policy with evolution strategies, checkpoint it, log it, export it.

The loop is the paper's (Sec. 4.2, 5.1): antithetic perturbations of every parameter, one episode each, fitness
shaping, and a Riemannian step for the Stiefel/orthogonal parameters. Its settings can come from a named protocol
(``trainer.protocols``: ``paper`` or ``tuned``), recorded with the run. A run directory holds ``log.jsonl`` (one line
per iteration), ``checkpoint.pt`` (the latest state, for ``--resume``) and ``best.pt`` (the best evaluated policy,
with the normalization it was evaluated with), which ``--export`` writes into the model repository
(``trainer.publish.export_checkpoint``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from tqdm import tqdm

from odetoode.modelfile import Arch, Normalization, TrainingRecord
from trainer.checkpoint import Checkpoint
from trainer.envs import EnvSpec, env_spec
from trainer.es import (
    Params,
    RunningStats,
    Shaping,
    ascend,
    estimate_gradient,
    off_manifolds,
    population,
    sample_directions,
    shape_fitness,
    step_size,
)
from trainer.evaluate import EVALUATION_SEED_BASE
from trainer.manifolds import NotOnManifoldError
from trainer.models import FlowModel, build_model
from trainer.protocols import ProtocolName, apply, deviations, get_protocol
from trainer.provenance import command_line
from trainer.rollouts import Backend, RolloutRequest, make_backend
from trainer.rundir import prepare_run_directory


@dataclass
class ESConfig:
    """Everything that defines an ES run; saved in every checkpoint so a run can be resumed or reproduced."""

    env: str = "HalfCheetah-v5"
    """Environment id: a Gymnasium id or ``dmc:<domain>/<task>``; a ``Discrete(n)`` action (``CartPole-v1``) makes the
    policy output n logits and act by their argmax."""
    arch: Arch = "iso-odetoode"
    """Policy architecture."""
    hidden: int = 16
    """Hidden size ``h`` (the paper: 16; 64 for Humanoid)."""
    steps: int = 25
    """Euler steps ``N`` of the flow (the paper: eta = 0.04, so N = 25)."""
    model_options: dict[str, int] = field(default_factory=dict)
    """Extra architecture arguments, e.g. ``depth 25`` (DeepNet) or ``degree 5`` (NANODE)."""
    protocol: ProtocolName | None = None
    """A named protocol (trainer/protocols.py, docs/training.md): sets every ES setting from --directions to
    --common-random-numbers to the protocol's (paper: Sec. 5.1 of the paper; tuned: the earlier RL comparison's);
    flags given explicitly override it, and config.json records the protocol, every setting and any deviation."""
    directions: int = 100
    """Antithetic pairs per iteration; the paper's k = 200 perturbations is 100 pairs."""
    sigma: float = 0.1
    """Perturbation standard deviation (the paper: 0.1)."""
    step_size: float = 0.01
    """Step size alpha (the paper: 0.01)."""
    step_decay: Literal["constant", "sqrt"] = "constant"
    """``sqrt``: alpha / sqrt(t), the schedule of Theorem 1."""
    shaping: Shaping = "centered-ranks"
    """Fitness shaping: centered ranks (OpenAI ES), ARS's best ``top_b`` directions, the paper's Monte Carlo
    estimator on returns standardized within the iteration (``standardized``) or on raw returns (``none``)."""
    top_b: int | None = None
    """How many directions ``top-b`` keeps (default: all)."""
    normalize: bool = True
    """Normalize observations with running statistics (frozen within an iteration), baked into the export."""
    obs_clip: float = 5.0
    """Normalized observations are clipped to +-obs_clip."""
    survival_bonus: float | None = None
    """Per-step reward subtracted during training; None: the task's default (1 for Hopper, 5 for Humanoid...)."""
    iterations: int = 100
    """Number of ES iterations."""
    time_budget_s: float | None = None
    """Stop after this much wall time (the run is still checkpointed and exportable)."""
    eval_every: int = 1
    """Evaluate the current (unperturbed) policy every this many iterations, in the same batch."""
    eval_episodes: int = 5
    """Episodes per evaluation."""
    max_episode_steps: int | None = None
    """Cap on episode length (default: the task's own limit)."""
    common_random_numbers: bool = True
    """Both members of an antithetic pair run an episode with the same seed (their difference then measures the
    perturbation, not the start state); off: every perturbed policy draws its own seed."""
    seed: int = 0
    """Seeds parameters, directions and episode seeds."""
    backend: Literal["local", "ray", "inline"] = "local"
    """Where rollouts run: local worker processes, a Ray cluster, or this process."""
    workers: int = 2
    """Worker processes (local) or actors (ray)."""
    ray_address: str | None = None
    """Ray cluster address (``auto``, ``ray://host:port``); None starts a local Ray instance."""


def _load_into(model: FlowModel, params: Params) -> FlowModel:
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(params[name].to(p.dtype))
    return model


@dataclass
class RunState:
    """What a resumed run needs beyond the parameters."""

    iteration: int = 0
    env_steps: int = 0
    wall_s: float = 0.0
    best_reward: float = -math.inf
    rng_state: dict[str, Any] | None = None
    stats: dict[str, Any] | None = None


class ESRun:
    """One training run in ``out``: ``train()`` runs (or resumes) it; ``best_checkpoint()`` is what gets exported.

    ``command`` is recorded as the run's provenance: the command line as typed when the CLI starts the run; by
    default the configuration spelled as one (``trainer.provenance.command_line``).
    """

    def __init__(self, config: ESConfig, out: Path, *, command: str | None = None) -> None:
        self.config = config
        self.out = out
        defaults = None
        if config.protocol is not None:  # an unknown name fails here, before anything is built
            # the command line spells what differs from the protocol (--protocol itself always)
            defaults = dataclasses.replace(apply(get_protocol(config.protocol), ESConfig()), protocol=None)
        self.command = command or command_line("es", config, defaults=defaults, out=out)
        self.spec: EnvSpec = env_spec(config.env)
        self.bonus = self.spec.survival_bonus if config.survival_bonus is None else config.survival_bonus
        generator = torch.Generator().manual_seed(config.seed)
        self.model = build_model(
            config.arch, self.spec.obs_dim, self.spec.act_dim, hidden=config.hidden, steps=config.steps,
            generator=generator, dtype=torch.float64, **config.model_options,
        )  # fmt: skip
        self.params: Params = {n: p.detach().clone() for n, p in self.model.named_parameters()}
        self.stats = RunningStats(self.spec.obs_dim)
        self.state = RunState()
        self.rng = np.random.default_rng(config.seed)

    # -- persistence ----------------------------------------------------------------------------------------------

    def _checkpoint(self, params: Params, mean: np.ndarray, std: np.ndarray, metrics: dict[str, Any]) -> Checkpoint:
        model = _load_into(self.model, params)
        return Checkpoint.from_model(
            model,
            "policy",
            env_id=self.config.env,
            observation_space=self.spec.observation_space,
            action_space=self.spec.action_space,
            normalization=Normalization(tuple(mean.tolist()), tuple(std.tolist()), self.config.obs_clip),
            training=TrainingRecord(
                command=self.command,
                seed=self.config.seed,
                env=self.config.env,
                iterations=self.state.iteration,
                env_steps=self.state.env_steps,
                wall_s=round(self.state.wall_s, 1),
                metrics=metrics,
            ),
            extra={
                "es_config": dataclasses.asdict(self.config),
                "run_state": dataclasses.asdict(self.state),
            },
        )

    def _normalization(self) -> tuple[np.ndarray, np.ndarray]:
        if not self.config.normalize:
            return np.zeros(self.spec.obs_dim), np.ones(self.spec.obs_dim)
        return self.stats.mean.copy(), self.stats.std()

    def save(self) -> None:
        self.state.rng_state = dict(self.rng.bit_generator.state)
        self.state.stats = self.stats.state()
        mean, std = self._normalization()
        self._checkpoint(self.params, mean, std, {"best_eval_return": self.state.best_reward}).save(
            self.out / "checkpoint.pt"
        )

    RESUMABLE = ("iterations", "time_budget_s", "backend", "workers", "ray_address", "sigma", "step_size",
                 "step_decay")  # fmt: skip
    """Settings a resumed run takes from the new command line: how long, where, and the step schedule (a second,
    finer phase); never the task, the model or the seed. Every command of a run is kept in its provenance."""

    @classmethod
    def resume(cls, out: Path, overrides: ESConfig | None = None, command: str | None = None) -> ESRun:
        ckpt = Checkpoint.load(out / "checkpoint.pt")
        config = ESConfig(**ckpt.extra["es_config"])
        if overrides is not None:
            config = dataclasses.replace(config, **{k: getattr(overrides, k) for k in cls.RESUMABLE})
        history = ckpt.training.command or ""
        run = cls(config, out, command=f"{history} && {command}" if command and history else (command or history))
        run.params = {n: v.to(torch.float64) for n, v in ckpt.state_dict.items()}
        run.state = RunState(**ckpt.extra["run_state"])
        if run.state.stats is not None:
            run.stats = RunningStats.from_state(run.state.stats)
        if run.state.rng_state is not None:
            run.rng.bit_generator.state = run.state.rng_state
        return run

    def best_checkpoint(self) -> Checkpoint:
        return Checkpoint.load(self.out / "best.pt")

    # -- training -------------------------------------------------------------------------------------------------

    def record(self) -> dict[str, Any]:
        """What ``config.json`` holds: every resolved setting (the ``ESConfig``, its ``protocol`` included) and, for
        a run under a protocol, ``protocol_deviations``: each setting a flag changed, with the protocol's value."""
        record = dataclasses.asdict(self.config)
        if self.config.protocol is not None:
            record["protocol_deviations"] = deviations(self.config)
        return record

    def member_seeds(self) -> np.ndarray:
        """Episode seeds of the ``2 * directions`` perturbed members, in ``population`` order. With common random
        numbers both members of a pair share one; without, every member draws its own."""
        c = self.config
        if c.common_random_numbers:
            return np.repeat(self.rng.integers(0, EVALUATION_SEED_BASE, size=c.directions), 2)
        return self.rng.integers(0, EVALUATION_SEED_BASE, size=2 * c.directions)

    def iterate(self, backend: Backend) -> dict[str, Any]:
        """One ES iteration; returns its log record."""
        c = self.config
        started = time.perf_counter()
        evaluate = c.eval_every > 0 and self.state.iteration % c.eval_every == 0
        copies = c.eval_episodes if evaluate else 0
        directions = sample_directions(self.params, c.directions, self.rng)
        members = population(self.params, directions, c.sigma, copies)
        with torch.no_grad():
            program = self.model.program(members).map(lambda t: t.to(torch.float32).contiguous())
        seeds = [int(s) for s in self.member_seeds()] + [
            int(s) for s in self.rng.integers(0, EVALUATION_SEED_BASE, size=copies)
        ]  # evaluations get their own seeds
        mean, std = self._normalization()
        result = backend.evaluate(
            RolloutRequest(
                env_id=c.env, program=program, seeds=tuple(seeds), obs_mean=mean, obs_std=std, obs_clip=c.obs_clip,
                action_low=np.asarray(self.spec.action_low), action_high=np.asarray(self.spec.action_high),
                survival_bonus=self.bonus, max_steps=c.max_episode_steps, discrete=self.spec.discrete,
            )
        )  # fmt: skip
        n = 2 * c.directions
        shaped = shape_fitness(result.returns[0:n:2], result.returns[1:n:2], c.sigma, c.shaping, c.top_b)
        alpha = step_size(c.step_size, self.state.iteration, c.step_decay)
        evaluated_params = self.params
        gradient = estimate_gradient(directions, shaped)
        self.params = ascend(self.params, gradient, self.model.manifolds, alpha)
        if c.normalize:
            self.stats.merge(result.obs_count, result.obs_sum, result.obs_sumsq)
        elapsed = time.perf_counter() - started
        self.state.iteration += 1
        self.state.env_steps += result.steps
        self.state.wall_s += elapsed
        record: dict[str, Any] = {
            "iteration": self.state.iteration,
            "env_steps": self.state.env_steps,
            "wall_s": round(self.state.wall_s, 2),
            "reward_mean": float(result.raw_returns[:n].mean()),
            "reward_max": float(result.raw_returns[:n].max()),
            "steps_per_s": round(result.steps / elapsed, 1),
            "step_size": alpha,
            "sigma": c.sigma,
            # the size of the Euclidean estimate: with raw returns (shaping none) it scales with the task's rewards
            "gradient_norm": math.sqrt(sum(float((g**2).sum()) for g in gradient.values())),
        }
        if evaluate:
            eval_reward = float(result.raw_returns[n:].mean())
            record["eval_return"] = eval_reward
            if eval_reward > self.state.best_reward:
                self.state.best_reward = eval_reward
                metrics = {"eval_return": eval_reward, "eval_episodes": copies, "iteration": self.state.iteration - 1}
                self._checkpoint(evaluated_params, mean, std, metrics).save(self.out / "best.pt")
        record["best_eval_return"] = self.state.best_reward
        return record

    def train(self, backend: Backend | None = None, progress: bool = True) -> RunState:
        """Runs iterations until ``config.iterations`` (or the time budget), checkpointing after each; raises
        ``NotOnManifoldError`` if a constrained parameter ends off its manifold."""
        c = self.config
        # A run with progress (resumed, or trained before) continues in its directory; a fresh one refuses a directory
        # holding another run's files (ExistingRunError) rather than mixing its log and checkpoints into them.
        prepare_run_directory(self.out, resume=self.state.iteration > 0)
        (self.out / "config.json").write_text(json.dumps(self.record(), indent=2) + "\n")
        own = backend is None
        backend = backend or make_backend(c.backend, c.workers, c.ray_address)
        bar = tqdm(total=c.iterations, initial=self.state.iteration, disable=not progress, unit="it",
                   desc=f"{c.arch} {c.env}", dynamic_ncols=True)  # fmt: skip
        started = time.perf_counter()
        try:
            with (self.out / "log.jsonl").open("a") as log:
                while self.state.iteration < c.iterations:
                    if c.time_budget_s is not None and time.perf_counter() - started > c.time_budget_s:
                        break
                    record = self.iterate(backend)
                    log.write(json.dumps(record) + "\n")
                    log.flush()
                    self.save()
                    bar.update(1)
                    bar.set_postfix(
                        reward=f"{record.get('eval_return', record['reward_mean']):.1f}",
                        best=f"{self.state.best_reward:.1f}",
                        steps_s=f"{record['steps_per_s']:.0f}",
                    )
        finally:
            bar.close()
            if own:
                backend.close()
        self.check_manifolds()
        return self.state

    def check_manifolds(self, atol: float = 1e-5) -> None:
        """Raises ``NotOnManifoldError`` naming every Stiefel/orthogonal parameter farther than ``atol`` from its
        manifold (the Riemannian steps keep them on it up to rounding: one that left is a bug)."""
        off = off_manifolds(self.params, self.model.manifolds, atol)
        if off:
            errors = ", ".join(f"{name} (orthogonality error {error:.3g})" for name, error in off.items())
            raise NotOnManifoldError(f"parameters left their manifolds after iteration {self.state.iteration}: "
                                     f"{errors}; this is a bug")  # fmt: skip
