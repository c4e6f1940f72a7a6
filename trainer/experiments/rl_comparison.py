"""Fig. 2 of the paper at a budget this machine affords: ISO-ODEtoODE against the baselines, trained by the same ES.

Every run of a comparison follows one named protocol (``trainer.protocols``: ``paper`` or ``tuned``), applied
identically to every architecture and task and recorded in each run's ``config.json``; ``Budget`` says only how long
runs train and how they are measured. ISO-ODEtoODE runs at the paper's width (h = 16, N = 25; h = 64 for Humanoid).
Each baseline runs at the width its sweep selected (``trainer.experiments.rl_sweep``: widths whose parameter counts
are similar to and not smaller than ISO-ODEtoODE's, the best by the paper's rule), or, without a sweep, at the
smallest width reaching ISO-ODEtoODE's parameter count (``matched_hidden``). ``python -m trainer reproduce rl`` sweeps,
trains what is missing (runs are resumable and cached per protocol), then draws mean +- std curves per task and
writes the parameter-count table, ambient and intrinsic (``trainer.models.counting``).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Container, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from odetoode.modelfile import Arch
from trainer.checkpoint import Checkpoint
from trainer.envs import env_spec
from trainer.es_training import ESConfig, ESRun
from trainer.models import build_model
from trainer.models.counting import intrinsic_parameters
from trainer.protocols import ProtocolName, apply

TASKS = ("Swimmer-v5", "HalfCheetah-v5", "Hopper-v5", "dmc:swimmer/swimmer15", "Humanoid-v5")
ARCHS: tuple[Arch, ...] = ("iso-odetoode", "deepnet", "deepresnet", "baseode", "nanode", "hypernet")
REFERENCE_ARCH, REFERENCE_HIDDEN, REFERENCE_STEPS = "iso-odetoode", 16, 25
BASELINES: tuple[Arch, ...] = tuple(a for a in ARCHS if a != REFERENCE_ARCH)
WIDER = {"Humanoid-v5": 64}  # the paper's reference width for Humanoid

Widths = Mapping[str, Mapping[str, int]]
"""``{task: {arch: hidden}}``: the baselines' widths where a sweep chose them."""


@dataclass(frozen=True)
class Budget:
    """How long every run trains and how it is measured, the same for every architecture and task; the ES settings
    are the protocol's."""

    protocol: ProtocolName = "tuned"
    """The named protocol every run follows (``trainer.protocols``)."""
    iterations: int = 20
    """ES iterations per run."""
    eval_every: int = 2
    """Evaluate the current policy every this many iterations."""
    eval_episodes: int = 3
    """Episodes per evaluation."""
    workers: int = 2
    """Rollout worker processes."""
    settings: Mapping[str, Any] = field(default_factory=dict)
    """``ESConfig`` settings that deviate from the protocol (tests, cheap checks); every run records them as
    ``protocol_deviations`` in its ``config.json``."""


class CachedRunMismatchError(ValueError):
    """A cached run directory holds a run of another configuration than the one asked for."""


def parameters(arch: str, obs: int, act: int, hidden: int, **options: Any) -> int:
    """Ambient parameter count: every number ES perturbs."""
    return build_model(arch, obs, act, hidden=hidden, **options).num_parameters()


def intrinsic(arch: str, obs: int, act: int, hidden: int, **options: Any) -> int:
    """Intrinsic parameter count: the dimension of the parameter manifold (``trainer.models.counting``)."""
    return intrinsic_parameters(build_model(arch, obs, act, hidden=hidden, **options))


def matched_hidden(arch: str, obs: int, act: int, target: float, **options: Any) -> int:
    """The smallest width whose parameter count reaches ``target`` (the paper's "similar but not smaller")."""
    if arch == "hypernet" and parameters(arch, obs, act, 16, **options) >= target:
        return 16  # the paper: h = 16 for HyperNet, even where that makes it larger than the others
    for hidden in range(2, 257):
        if parameters(arch, obs, act, hidden, **options) >= target:
            return hidden
    raise ValueError(f"{arch} cannot reach {target} parameters")


def reference_hidden(task: str) -> int:
    return WIDER.get(task, REFERENCE_HIDDEN)


def reference_parameters(task: str) -> int:
    """ISO-ODEtoODE's ambient parameter count on ``task``: the floor of every baseline's."""
    spec = env_spec(task)
    return parameters(REFERENCE_ARCH, spec.obs_dim, spec.act_dim, reference_hidden(task), steps=REFERENCE_STEPS)


def task_configs(task: str, widths: Mapping[str, int] | None = None) -> dict[str, dict[str, Any]]:
    """Per architecture, the reference first: ``hidden`` (``widths``' where given, else the matched width),
    ``steps``, and the ``parameters`` (ambient) and ``intrinsic`` counts."""
    spec = env_spec(task)
    target = reference_parameters(task)
    configs: dict[str, dict[str, Any]] = {}
    for arch in ARCHS:
        options: dict[str, Any] = {"steps": REFERENCE_STEPS}
        if arch == REFERENCE_ARCH:
            hidden = reference_hidden(task)
        elif widths is not None and arch in widths:
            hidden = widths[arch]
        else:
            hidden = matched_hidden(arch, spec.obs_dim, spec.act_dim, target, **options)
        configs[arch] = {"hidden": hidden, **options,
                         "parameters": parameters(arch, spec.obs_dim, spec.act_dim, hidden, **options),
                         "intrinsic": intrinsic(arch, spec.obs_dim, spec.act_dim, hidden, **options)}  # fmt: skip
    return configs


def task_slug(task: str) -> str:
    """``dmc:swimmer/swimmer15`` -> ``dmc_swimmer_swimmer15``: a task as a file name."""
    return task.replace(":", "_").replace("/", "_")


def run_dir(runs: Path, task: str, arch: str, seed: int, protocol: str = "tuned") -> Path:
    return runs / "rl" / protocol / task_slug(task) / arch / f"seed{seed}"


def run_config(task: str, arch: Arch, hidden: int, seed: int, budget: Budget, steps: int = REFERENCE_STEPS
               ) -> ESConfig:  # fmt: skip
    """The configuration of one run: the budget's protocol, then its deviations."""
    config = ESConfig(env=task, arch=arch, hidden=hidden, steps=steps, iterations=budget.iterations,
                      eval_every=budget.eval_every, eval_episodes=budget.eval_episodes, seed=seed,
                      workers=budget.workers)  # fmt: skip
    return dataclasses.replace(apply(budget.protocol, config), **budget.settings)


WHERE_AND_HOW_LONG = ("iterations", "time_budget_s", "backend", "workers", "ray_address")
"""Settings a cached run may differ in and still be continued: how long it trains and where, not what."""


def train_run(config: ESConfig, out: Path) -> ESRun:
    """Trains the run of ``config`` in ``out`` up to ``config.iterations``, continuing a cached one; raises
    ``CachedRunMismatchError`` if ``out`` holds a run of another configuration (delete it to retrain)."""
    if (out / "checkpoint.pt").is_file():
        saved = ESConfig(**Checkpoint.load(out / "checkpoint.pt").extra["es_config"])
        fields = [f.name for f in dataclasses.fields(ESConfig) if f.name not in WHERE_AND_HOW_LONG]
        differ = [name for name in fields if getattr(saved, name) != getattr(config, name)]
        if differ:
            raise CachedRunMismatchError(f"{out} holds a run with other {', '.join(differ)} than asked for: delete "
                                         "it to retrain")  # fmt: skip
        run = ESRun.resume(out, config)
    else:
        run = ESRun(config, out)
    if run.state.iteration < config.iterations:
        run.train()
    return run


def train_all(runs: Path, seeds: Sequence[int], budget: Budget, tasks: Sequence[str] = TASKS,
              archs: Sequence[Arch] = ARCHS, widths: Widths | None = None,
              skip: Container[tuple[str, str, int]] = ()) -> None:  # fmt: skip
    """Every (task, architecture, seed) run of the comparison but those in ``skip`` (recorded already); baselines
    at ``widths[task]`` where given."""
    for task in tasks:
        configs = task_configs(task, (widths or {}).get(task))
        for arch, seed in itertools.product(archs, seeds):
            if (task, arch, seed) in skip:
                continue
            c = configs[arch]
            train_run(run_config(task, arch, c["hidden"], seed, budget, c["steps"]),
                      run_dir(runs, task, arch, seed, budget.protocol))  # fmt: skip


def parameter_table(tasks: Sequence[str] = TASKS, widths: Widths | None = None) -> str:
    """Markdown: per architecture and task, the width ``h``, the ambient parameter count and the intrinsic one
    (the manifold dimension: smaller than the ambient count only for ISO-ODEtoODE's constrained parameters)."""
    rows = {task: task_configs(task, (widths or {}).get(task)) for task in tasks}
    header = "| architecture | " + " | ".join(f"{t} (h / params / intrinsic)" for t in tasks) + " |"
    lines = [header, "|---|" + "---|" * len(tasks)]
    for arch in ARCHS:
        cells = [f"{c['hidden']} / {c['parameters']} / {c['intrinsic']}" for t in tasks for c in (rows[t][arch],)]
        lines.append(f"| {arch} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
