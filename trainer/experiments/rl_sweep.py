"""Sizing the baselines of the RL comparison as the paper did: a width sweep per baseline and task.

The paper (Sec. 5.1): "the other architectures were scaled in such a way that they has similar (but not smaller)
number of parameters. The ablation studies were conducted for them across different sizes and those providing best
(in terms of the final reward) mean curves were chosen. No ablation studies were run on ODEtoODEs."

* **Candidates** (``candidate_widths``): for each factor ``f`` in ``SWEEP_FACTORS = (1, 1.5, 2, 3)``, the smallest
  width whose ambient parameter count reaches ``f`` times ISO-ODEtoODE's on the task -- so every candidate is "not
  smaller", from the matched width up to three times its count. Equal widths are merged: HyperNet at the paper's
  fixed h = 16 is already about 9x ISO-ODEtoODE's count, so it has a single candidate except on Humanoid (where
  h = 16 would be smaller than ISO-ODEtoODE at h = 64).
* **Selection runs**: one run per candidate under the comparison's protocol, a short budget, an evaluation every
  iteration, on seed ``SWEEP_SEED`` (1000), which no comparison run uses: a width is not chosen on the very seeds
  it is then scored on.
* **Rule** (``select_width``): the best score, where the score (``curve_score``) is, by default (``"final"``, the
  paper's "final reward"), the mean evaluation return over the final quarter of the curve (``FINAL_FRACTION``;
  averaging a few evaluations because one seed's last evaluation alone is noisy); ``"mean"`` scores the mean over
  the whole curve instead (area under the curve, favouring early progress). Ties (scores equal to 1e-9 relative)
  go to the fewest parameters, the candidate closest to ISO-ODEtoODE's count (the paper's "similar"), then to the
  narrowest. A score that is not a number (a diverged run) ranks last.
* **Record**: ``docs/results/rl_sweep/<protocol>/<task>.json`` (``write_record``) holds the protocol and its
  settings, the budget, the rule, ISO-ODEtoODE's counts, and per baseline every candidate's width, ambient and
  intrinsic counts, per-iteration returns (evaluation and perturbation mean), score and the selected width.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from odetoode.modelfile import Arch
from trainer.envs import env_spec
from trainer.experiments.rl_comparison import (
    BASELINES,
    REFERENCE_ARCH,
    REFERENCE_STEPS,
    Budget,
    Widths,
    intrinsic,
    matched_hidden,
    parameters,
    reference_hidden,
    reference_parameters,
    run_config,
    task_slug,
    train_run,
)
from trainer.plots import read_run
from trainer.protocols import get_protocol

SWEEP_FACTORS: tuple[float, ...] = (1.0, 1.5, 2.0, 3.0)
"""Candidate sizes as multiples of ISO-ODEtoODE's ambient parameter count (each candidate: the smallest width
reaching it)."""
SWEEP_SEED = 1000
"""The selection runs' seed, outside the comparison's seeds (0, 1, 2, ...)."""
SelectionRule = Literal["final", "mean"]
SELECTION_RULE: SelectionRule = "final"
"""The paper's: best "in terms of the final reward"."""
FINAL_FRACTION = 0.25
"""``final`` scores the mean of the last ``ceil(FINAL_FRACTION * n)`` of ``n`` evaluations."""
TIE_RTOL = 1e-9
"""Scores this close (relative) tie."""


@dataclass(frozen=True)
class Candidate:
    """One width of one baseline and the evaluation returns of its selection run, in order."""

    hidden: int
    parameters: int
    returns: tuple[float, ...]


def curve_score(returns: Sequence[float], rule: SelectionRule = SELECTION_RULE,
                final_fraction: float = FINAL_FRACTION) -> float:  # fmt: skip
    """``final``: the mean of the last ``ceil(final_fraction * n)`` returns; ``mean``: the mean of all ``n``. NaN
    for a curve holding a NaN; raises ``ValueError`` for an empty curve or an unknown rule."""
    if not returns:
        raise ValueError("a curve needs at least one evaluation return")
    if not 0 < final_fraction <= 1:
        raise ValueError(f"final_fraction must be in (0, 1], got {final_fraction}")
    if rule == "final":
        tail = returns[len(returns) - math.ceil(final_fraction * len(returns)) :]
    elif rule == "mean":
        tail = returns
    else:
        raise ValueError(f"unknown selection rule {rule!r}; expected 'final' or 'mean'")
    return math.fsum(tail) / len(tail)


def select_width(candidates: Sequence[Candidate], rule: SelectionRule = SELECTION_RULE,
                 final_fraction: float = FINAL_FRACTION) -> Candidate:  # fmt: skip
    """The candidate with the best ``curve_score``; ties (within ``TIE_RTOL``) go to the fewest parameters, then
    the narrowest; NaN scores rank last."""
    if not candidates:
        raise ValueError("no candidates to select from")
    scores = [curve_score(c.returns, rule, final_fraction) for c in candidates]
    scores = [-math.inf if math.isnan(s) else s for s in scores]
    best = max(scores)
    tied = [c for c, s in zip(candidates, scores, strict=True)
            if s == best or math.isclose(s, best, rel_tol=TIE_RTOL)]  # fmt: skip
    return min(tied, key=lambda c: (c.parameters, c.hidden))


def candidate_widths(arch: str, obs: int, act: int, target: int, factors: Sequence[float] = SWEEP_FACTORS,
                     **options: Any) -> list[int]:  # fmt: skip
    """The distinct widths reaching ``f * target`` parameters for each factor ``f``, narrowest first."""
    if any(f < 1 for f in factors):
        raise ValueError(f"factors below 1 would make a baseline smaller than the reference: {list(factors)}")
    return sorted({matched_hidden(arch, obs, act, f * target, **options) for f in factors})


def sweep_dir(runs: Path, task: str, arch: str, hidden: int, protocol: str) -> Path:
    return runs / "rl_sweep" / protocol / task_slug(task) / arch / f"h{hidden}"


def _curve(run: Path) -> dict[str, list[float]]:
    records = read_run(run)[1]
    evaluated = [r for r in records if "eval_return" in r]
    return {
        "eval_iteration": [int(r["iteration"]) for r in evaluated],
        "eval_return": [round(float(r["eval_return"]), 3) for r in evaluated],
        "iteration": [int(r["iteration"]) for r in records],
        "env_steps": [int(r["env_steps"]) for r in records],
        "reward_mean": [round(float(r["reward_mean"]), 3) for r in records],
    }


def record_header(
    task: str,
    budget: Budget,
    factors: Sequence[float] = SWEEP_FACTORS,
    seed: int = SWEEP_SEED,
    rule: SelectionRule = SELECTION_RULE,
    final_fraction: float = FINAL_FRACTION,
) -> dict[str, Any]:
    """What a sweep record states about how it was made: a committed record with the same header is the same sweep
    (``sweep`` reuses it instead of training again)."""
    spec = env_spec(task)
    protocol = get_protocol(budget.protocol)
    h_ref = reference_hidden(task)
    return {
        "task": task,
        "protocol": protocol.name,
        "protocol_settings": protocol.settings(),
        "protocol_deviations": dict(budget.settings),
        "budget": {
            "iterations": budget.iterations,
            "eval_every": budget.eval_every,
            "eval_episodes": budget.eval_episodes,
        },
        "seed": seed,
        "factors": list(factors),
        "rule": rule,
        "final_fraction": final_fraction,
        "tie_break": "fewest parameters, then narrowest",
        "reference": {
            "arch": REFERENCE_ARCH,
            "hidden": h_ref,
            "parameters": reference_parameters(task),
            "intrinsic": intrinsic(REFERENCE_ARCH, spec.obs_dim, spec.act_dim, h_ref, steps=REFERENCE_STEPS),
        },
    }


def committed_record(task: str, results: Path, budget: Budget, archs: Sequence[Arch] = BASELINES,
                     **options: Any) -> dict[str, Any] | None:  # fmt: skip
    """The sweep record of ``task`` under ``results`` if it was made exactly as asked (same header) and covers every
    baseline; None otherwise. Runs do not outlive a sitting, records do: this is how a sweep spans several."""
    path = record_path(results, budget.protocol, task)
    if not path.is_file():
        return None
    record: dict[str, Any] = json.loads(path.read_text())
    header = json.loads(json.dumps(record_header(task, budget, **options)))  # as JSON would round-trip it
    same = all(record.get(k) == v for k, v in header.items())
    return record if same and set(archs) <= set(record.get("baselines", {})) else None


def sweep_task(task: str, runs: Path, budget: Budget, *, archs: Sequence[Arch] = BASELINES,
               factors: Sequence[float] = SWEEP_FACTORS, seed: int = SWEEP_SEED, rule: SelectionRule = SELECTION_RULE,
               final_fraction: float = FINAL_FRACTION) -> dict[str, Any]:  # fmt: skip
    """Trains (or reuses, cached under ``runs/rl_sweep``) every candidate of every baseline on ``task`` and returns
    the sweep's record (see the module docstring), its choice under ``baselines.<arch>.selected``."""
    spec = env_spec(task)
    options: dict[str, Any] = {"steps": REFERENCE_STEPS}
    target = reference_parameters(task)
    protocol = get_protocol(budget.protocol)
    record: dict[str, Any] = {**record_header(task, budget, factors, seed, rule, final_fraction), "baselines": {}}
    for arch in archs:
        entries, candidates = [], []
        for hidden in candidate_widths(arch, spec.obs_dim, spec.act_dim, target, factors, **options):
            out = sweep_dir(runs, task, arch, hidden, protocol.name)
            train_run(run_config(task, arch, hidden, seed, budget), out)
            curve = _curve(out)
            count = parameters(arch, spec.obs_dim, spec.act_dim, hidden, **options)
            candidates.append(Candidate(hidden, count, tuple(curve["eval_return"])))
            entries.append({"hidden": hidden, "parameters": count, "parameter_ratio": round(count / target, 3),
                            "intrinsic": intrinsic(arch, spec.obs_dim, spec.act_dim, hidden, **options),
                            "score": curve_score(curve["eval_return"], rule, final_fraction), **curve})  # fmt: skip
        chosen = select_width(candidates, rule, final_fraction)
        record["baselines"][arch] = {"selected": chosen.hidden, "candidates": entries}
    return record


def record_path(results: Path, protocol: str, task: str) -> Path:
    return results / "rl_sweep" / protocol / f"{task_slug(task)}.json"


def write_record(record: Mapping[str, Any], results: Path) -> Path:
    """Writes a sweep's record to ``results/rl_sweep/<protocol>/<task>.json``."""
    path = record_path(results, str(record["protocol"]), str(record["task"]))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1) + "\n")
    return path


def selected_widths(record: Mapping[str, Any]) -> dict[str, int]:
    """``{arch: hidden}`` a sweep record selected."""
    return {arch: int(entry["selected"]) for arch, entry in record["baselines"].items()}


def sweep(tasks: Sequence[str], runs: Path, results: Path, budget: Budget, **options: Any) -> tuple[Widths, list[Path]]:
    """``sweep_task`` for every task whose record is not committed already (``committed_record``), each record
    written; returns the selected widths per task and the files written."""
    widths: dict[str, dict[str, int]] = {}
    paths = []
    for task in tasks:
        record = committed_record(task, results, budget, **options)
        if record is None:
            record = sweep_task(task, runs, budget, **options)
            paths.append(write_record(record, results))
        widths[task] = selected_widths(record)
    return widths, paths


def sweep_budget(budget: Budget, iterations: int) -> Budget:
    """The comparison's budget shortened to ``iterations``, evaluated every iteration (the selection curve)."""
    return dataclasses.replace(budget, iterations=iterations, eval_every=1)
