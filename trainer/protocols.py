"""Named ES protocols: every setting of the optimizer and of the episodes it scores, in one recorded place.

A protocol is applied identically to every architecture; a run records the protocol's name and every resolved
setting (``config.json``: the ``ESConfig`` with ``protocol`` set, plus ``protocol_deviations`` for any setting a flag
changed). Two protocols:

* ``paper`` -- Sec. 5.1 of the paper as stated: sigma 0.1, step 0.01, k = 200 perturbations, the vanilla Monte
  Carlo estimator, full episodes; ``PAPER`` says what the paper leaves open and what is chosen here;
* ``tuned`` -- the settings the RL comparison used before protocols existed (ARS-style: top-b shaping, a smaller
  sigma, a larger step, 20 pairs, episodes capped at 500 steps), kept so its results stay reproducible.

``apply(protocol, config)`` sets a configuration's protocol settings; ``python -m trainer es --protocol paper``
does the same on the command line, where flags given explicitly still override the protocol.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, get_args

from trainer.es import Shaping

if TYPE_CHECKING:
    from trainer.es_training import ESConfig

ProtocolName = Literal["paper", "tuned"]


class UnknownProtocolError(ValueError):
    """A protocol name that is not a key of ``PROTOCOLS``."""


@dataclass(frozen=True)
class Protocol:
    """The ES settings of a protocol; each field is the ``ESConfig`` field of the same name."""

    name: ProtocolName
    """Registry key, recorded as ``ESConfig.protocol``."""
    summary: str
    """One line for tables and logs."""
    directions: int
    """Antithetic pairs per iteration (``2 * directions`` perturbed policies)."""
    sigma: float
    """Perturbation standard deviation."""
    step_size: float
    """Step size alpha."""
    step_decay: Literal["constant", "sqrt"]
    """Step schedule."""
    shaping: Shaping
    """Fitness shaping (``none``: the vanilla Monte Carlo estimator on raw returns)."""
    top_b: int | None
    """Directions ``top-b`` keeps."""
    normalize: bool
    """Observation normalization with running statistics."""
    obs_clip: float
    """Clip of normalized observations."""
    survival_bonus: float | None
    """Per-step reward subtracted during training; None: the task's default (ARS's shift)."""
    max_episode_steps: int | None
    """Episode cap during training and evaluation; None: the task's own limit."""
    common_random_numbers: bool
    """Both members of an antithetic pair run on the same episode seed."""

    def settings(self) -> dict[str, Any]:
        """The ``ESConfig`` fields this protocol sets, by name."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("name", "summary")}


PAPER = Protocol(
    name="paper",
    summary="Sec. 5.1: sigma 0.1, step 0.01, k = 200 perturbations, Monte Carlo estimator (standardized returns), "
    "full episodes",
    directions=100,
    sigma=0.1,
    step_size=0.01,
    step_decay="constant",
    shaping="standardized",
    top_b=None,
    normalize=True,
    obs_clip=5.0,
    survival_bonus=0.0,
    max_episode_steps=None,
    common_random_numbers=False,
)
"""The paper's Sec. 5.1, as stated, and a stated choice wherever it says nothing.

Stated by the paper: "stddev = 0.1 of the Gaussian noise defining ES perturbations, ES-gradient step size
delta = 0.01", "k = 200 perturbations per iteration", gradients "computed via standard Monte Carlo procedure" (the
estimator ``1/(sigma v) sum_w F(theta + sigma eps_w) eps_w`` of Sec. 4.2) and Riemannian steps with the exact
exponential map for the Stiefel/orthogonal parameters.

* **k = 200 perturbations = 100 antithetic pairs.** A perturbation is a perturbed policy ``theta + sigma eps``
  scored by one episode; an antithetic pair is two of them, ``theta +- sigma eps_j``. 100 pairs therefore evaluate
  exactly the paper's 200 perturbed policies per iteration (the same environment steps and the same ``v = 200`` in
  the estimator's ``1/(sigma v)``); 200 pairs would double the paper's per-iteration cost. The antithetic form of
  the Monte Carlo estimator (``trainer.es.antithetic_differences``) is the paper's estimator averaged over each pair
  (unbiased for the same gradient, lower variance); the paper does not say whether its samples were antithetic.
* **Estimator: ``shaping="standardized"``.** The Monte Carlo estimator on the iteration's returns standardized
  (``(F - mean) / std``): no ranks, no top-b. The paper does not say how ``F`` is scaled. Taken literally, on raw
  returns (``--shaping none``), the step ``0.01 g`` grows with the task's returns: the first two iterations of
  ``python -m trainer es --env HalfCheetah-v5 --protocol paper --shaping none --iterations 2 --eval-every 0
  --seed 0`` log gradient norms of 3,895 and 5,440 (steps of 39 and 54 in parameter norm; standardized, the same
  command without ``--shaping none`` logs 25.3 and 27.1), so
  ``delta = 0.01`` cannot have meant raw returns on tasks paying thousands per episode. The ES library of the
  authors' group standardizes function values before its Monte Carlo step (``normalize_fvalues``; see
  ``trainer.es.shape_fitness``), which makes one step size mean the same on every task; that reading is taken here.
* **Step schedule: constant.** Sec. 5.1 states one step size; Theorem 1's ``tau^-0.5`` is the analysis's schedule.
* **Episodes: the task's own limit** (``max_episode_steps=None``: 1,000 steps on the MuJoCo tasks).

Not stated by the paper; chosen here:

* **Observation normalization: on** (running mean/std, frozen within an iteration, clipped at +-5), the practice
  of the ES policy-search work the paper builds on and cites for its setup (ARS [38]); ISO-ODEtoODE's input
  projection is a Stiefel matrix with no bias and no scale, so without normalization its inputs would stay in the
  simulator's units. Applied to every architecture alike. ``--no-normalize`` turns it off.
* **Survival bonus: none** (``0.0``). ARS's shift of the per-step reward is a trick of ARS, not of the paper;
  ``F`` is the task's "obtained reward". ``--survival-bonus`` sets one.
* **Common random numbers: off.** The Monte Carlo estimator assumes independently scored perturbations, and the
  paper mentions no shared episode seeds; each perturbed policy draws its own seed.
"""

TUNED = Protocol(
    name="tuned",
    summary="ARS-style settings of the earlier RL comparison: top-10 of 20 pairs, sigma 0.05, step 0.02",
    directions=20,
    sigma=0.05,
    step_size=0.02,
    step_decay="constant",
    shaping="top-b",
    top_b=10,
    normalize=True,
    obs_clip=5.0,
    survival_bonus=None,
    max_episode_steps=500,
    common_random_numbers=True,
)
"""The settings of the RL comparison before protocols: ARS v2-t (Mania et al. 2018) on a small budget.

20 antithetic pairs (40 perturbed policies, a fifth of the paper's k = 200), the best 10 directions by
``max(F+, F-)`` scaled by their returns' std, sigma 0.05, constant step 0.02, episodes capped at 500 steps,
observation normalization, ARS's survival-bonus shift on the tasks that pay for staying alive (Hopper, Walker2d,
Ant 1 per step, Humanoid 5), and common random numbers (both members of a pair run the same episode seed). Chosen
to learn something in tens of iterations on two CPU cores, not taken from the paper.
"""

PROTOCOLS: dict[str, Protocol] = {p.name: p for p in (PAPER, TUNED)}
"""Every named protocol; the keys are ``ProtocolName``'s values."""
if set(PROTOCOLS) != set(get_args(ProtocolName)):
    raise ImportError(f"PROTOCOLS and ProtocolName disagree on {sorted(set(PROTOCOLS) ^ set(get_args(ProtocolName)))}")


def get_protocol(protocol: Protocol | str) -> Protocol:
    """The protocol named ``protocol`` (a ``Protocol`` is returned as is); raises ``UnknownProtocolError``."""
    if isinstance(protocol, Protocol):
        return protocol
    try:
        return PROTOCOLS[protocol]
    except KeyError:
        raise UnknownProtocolError(f"unknown protocol {protocol!r}; expected one of {sorted(PROTOCOLS)}") from None


def apply(protocol: Protocol | str, config: ESConfig) -> ESConfig:
    """``config`` with every setting of ``protocol`` and ``config.protocol`` set to its name."""
    p = get_protocol(protocol)
    return dataclasses.replace(config, protocol=p.name, **p.settings())


def deviations(config: ESConfig) -> dict[str, dict[str, Any]]:
    """The settings in which ``config`` differs from its protocol, ``{field: {"protocol": ..., "run": ...}}``
    (empty when it follows the protocol exactly or names none)."""
    if config.protocol is None:
        return {}
    expected = get_protocol(config.protocol).settings()
    return {
        name: {"protocol": value, "run": getattr(config, name)}
        for name, value in expected.items()
        if getattr(config, name) != value
    }


ROWS: tuple[tuple[str, str], ...] = (
    ("directions", "antithetic pairs per iteration"),
    ("sigma", "perturbation std sigma"),
    ("step_size", "step size alpha"),
    ("step_decay", "step schedule"),
    ("shaping", "fitness shaping"),
    ("top_b", "directions kept (top-b)"),
    ("normalize", "observation normalization"),
    ("obs_clip", "normalized-observation clip"),
    ("survival_bonus", "survival bonus subtracted"),
    ("max_episode_steps", "episode cap (steps)"),
    ("common_random_numbers", "same episode seed within a pair"),
)
"""The rows of ``protocol_table``: every setting of ``Protocol``, with a label."""


def _cell(name: str, value: Any) -> str:
    if value is None:
        return {"top_b": "-", "survival_bonus": "task default", "max_episode_steps": "task limit"}.get(name, "-")
    if isinstance(value, bool):
        return "yes" if value else "no"
    if name == "shaping":
        return {"none": "none (raw returns, MC)", "standardized": "MC on standardized returns", "top-b": "ARS top-b",
                "centered-ranks": "centered ranks"}[value]  # fmt: skip
    return str(value)


def protocol_table(protocols: tuple[Protocol, ...] = tuple(PROTOCOLS.values())) -> str:
    """A markdown table of the protocols' settings, side by side, with the ``--flag`` each one sets."""
    lines = ["| setting | flag | " + " | ".join(f"`{p.name}`" for p in protocols) + " |",
             "|---|---|" + "---|" * len(protocols)]  # fmt: skip
    for name, label in ROWS:
        cells = " | ".join(_cell(name, getattr(p, name)) for p in protocols)
        lines.append(f"| {label} | `--{name.replace('_', '-')}` | {cells} |")
    return "\n".join(lines)
