"""Evaluating an exported policy in its environment with ONNX Runtime alone (no PyTorch), and reporting it in the
model's card.

This is the check a user can run on a bundled model: the file, ONNX Runtime and the environment, nothing of the
trainer; ``Box`` policies and discrete ones (whose ``action`` output is the index the environment takes) alike.
Evaluation seeds start at ``EVALUATION_SEED_BASE``; training draws its episode seeds below it, so the two never
overlap. On the command line: ``python -m trainer evaluate model.onnx --episodes 50 --card``.

The card's ``## Evaluation`` section is written here and only here (``EvaluationReport``): by ``--card`` for a file
already in a repository, and by the exporter (``trainer.publish``) for a new version, so both say the same thing. Beside
the card go ``evaluation.json`` (every seed, return and length, the file's sha256, the command) and ``evaluation.png``
(the histogram of the returns).
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from odetoode.modelfile import ARCHS, POLICY_INPUT, POLICY_OUTPUT, PREFIX
from trainer.envs import make_env

EVALUATION_SEED_BASE = 1_000_000_000
"""Training episode seeds are drawn from ``[0, EVALUATION_SEED_BASE)``; evaluation uses seeds from here up."""
CARD_FILE = "README.md"
EVALUATION_JSON = "evaluation.json"
EVALUATION_PNG = "evaluation.png"
SECTION_HEADING = "## Evaluation"
RETURNS_PER_ROW = 10
"""The card lists every return, this many to a row of a text block."""
RECORDED_VERSIONS = ("onnxruntime", "gymnasium", "mujoco", "numpy")
"""Packages whose versions ``evaluation.json`` records: a MuJoCo release may change the returns, the seeds cannot."""


@dataclass(frozen=True)
class Evaluation:
    """Episodes of one policy: ``returns[i]`` and ``lengths[i]`` (steps) of the episode reset with ``seeds[i]``."""

    env_id: str
    returns: tuple[float, ...]
    lengths: tuple[int, ...]
    seeds: tuple[int, ...]

    @property
    def mean(self) -> float:
        return float(np.mean(self.returns))

    @property
    def std(self) -> float:
        """The sample standard deviation (``n - 1`` in the denominator); 0 for a single episode."""
        return float(np.std(self.returns, ddof=1)) if len(self.returns) > 1 else 0.0

    @property
    def p5(self) -> float:
        """The 5th percentile of the returns (numpy's default, linear interpolation between order statistics)."""
        return float(np.percentile(self.returns, 5))

    def summary(self) -> dict[str, float]:
        """The figures the card states: mean, sample std, min, 5th percentile, max."""
        r = self.returns
        return {"mean": self.mean, "std": self.std, "min": float(min(r)), "p5": self.p5, "max": float(max(r))}


def policy_session(path: str | Path | bytes) -> ort.InferenceSession:
    """A one-thread CPU session of the ONNX file at ``path`` (or of the file's bytes)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    model = path if isinstance(path, bytes) else str(path)
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


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


def evaluate_onnx(path: str | Path | bytes, env_id: str | None = None, episodes: int = 20,
                  seed: int = EVALUATION_SEED_BASE) -> Evaluation:  # fmt: skip
    """Returns of the ONNX policy at ``path`` (or in these bytes) over ``episodes`` episodes with seeds ``seed,
    seed+1, ...``; ``env_id`` defaults to the model's ``odetoode.env_id``. Raises ``ValueError`` when there is
    neither, or when ``episodes < 1``."""
    if episodes < 1:
        raise ValueError(f"episodes must be at least 1, got {episodes}")
    session = policy_session(path)
    env_id = env_id or session.get_modelmeta().custom_metadata_map.get(PREFIX + "env_id")
    if not env_id:
        where = "the model" if isinstance(path, bytes) else path
        raise ValueError(f"{where}: no odetoode.env_id in the model; pass the environment id")
    seeds = tuple(seed + i for i in range(episodes))
    results = [run_episode(session, env_id, s) for s in seeds]
    return Evaluation(env_id, tuple(r for r, _ in results), tuple(n for _, n in results), seeds)


# -- the card's section -----------------------------------------------------------------------------------------------


def evaluation_command(model: Path, episodes: int, seed: int = EVALUATION_SEED_BASE, env: str | None = None) -> str:
    """The command that evaluates ``model`` again and rewrites its card: the path relative to the working directory
    where it lies below it (the project root, for the bundled models), flags only where they are not the defaults."""
    try:
        shown = model.resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        shown = model.resolve().as_posix()
    words = ["python", "-m", "trainer", "evaluate", shown, "--episodes", str(episodes)]
    words += ["--seed", str(seed)] if seed != EVALUATION_SEED_BASE else []
    words += ["--env", env] if env else []
    return shlex.join([*words, "--card"])


@dataclass(frozen=True)
class EvaluationReport:
    """An evaluation as the model card reports it: the figures, the file they were measured on (its sha256), the
    command that reproduces them, and whether this project trained the policy (only then can the card vouch that
    training never saw the seeds)."""

    evaluation: Evaluation
    model_sha256: str
    command: str
    trained_here: bool = True

    def record(self) -> dict[str, Any]:
        """What ``evaluation.json`` holds."""
        e = self.evaluation
        return {
            "env_id": e.env_id,
            "episodes": len(e.seeds),
            "seeds": list(e.seeds),
            "returns": list(e.returns),
            "lengths": list(e.lengths),
            "summary": e.summary(),
            "model_sha256": self.model_sha256,
            "command": self.command,
            "versions": _versions(),
        }

    def seed_statement(self) -> str:
        """Which seeds, and why training and checkpoint selection never used them (or why that is not known)."""
        seeds = self.evaluation.seeds
        n, first, last = len(seeds), seeds[0], seeds[-1]
        which = (f"the {n} fixed seeds {first}..{last} (`EVALUATION_SEED_BASE` + 0..{n - 1})"
                 if first == EVALUATION_SEED_BASE else f"the {n} seeds {first}..{last}")  # fmt: skip
        if min(seeds) < EVALUATION_SEED_BASE:
            return (f"Episodes were reset with {which}, below `EVALUATION_SEED_BASE` = {EVALUATION_SEED_BASE}: "
                    "training draws its episode seeds from that range, so it may have seen some of them.")  # fmt: skip
        if not self.trained_here:
            return (f"Episodes were reset with {which}. The policy was trained elsewhere, so whether its training "
                    "saw these seeds is not known.")  # fmt: skip
        return (
            f"Episodes were reset with {which}. None of them was used in training or in checkpoint selection: "
            "training by evolution strategies draws the episode seed of every perturbed policy, and of every "
            "evaluation episode whose mean return picks the exported checkpoint (`best.pt`), from "
            f"[0, {EVALUATION_SEED_BASE}) (`ESRun.member_seeds` and `ESRun.iterate` in `trainer/es_training.py`)."
        )

    def section(self) -> list[str]:
        """The card's ``## Evaluation`` section, as lines (``evaluation.json`` and ``evaluation.png`` beside it)."""
        e = self.evaluation
        s = e.summary()
        n = len(e.returns)
        lengths = (f"every episode ran {e.lengths[0]} steps" if len(set(e.lengths)) == 1
                   else f"episodes ran {min(e.lengths)} to {max(e.lengths)} steps")  # fmt: skip
        width = max(len(f"{r:.1f}") for r in e.returns)
        rows = [
            f"+{i:<4d}" + " ".join(f"{r:>{width}.1f}" for r in e.returns[i : i + RETURNS_PER_ROW])
            for i in range(0, n, RETURNS_PER_ROW)
        ]
        return [
            SECTION_HEADING,
            "",
            f"ONNX Runtime alone ran `model.onnx` (sha256 `{self.model_sha256}`) for {n} episode{'s' if n > 1 else ''}"
            f" of `{e.env_id}`. {self.seed_statement()}",
            "",
            f"Over the {n} episodes: mean return **{s['mean']:.1f}**, sample std {s['std']:.1f}, min {s['min']:.1f}, "
            f"5th percentile {s['p5']:.1f}, max {s['max']:.1f}; {lengths}.",
            "",
            f"![histogram of the {n} returns]({EVALUATION_PNG})",
            "",
            f"Every return, in seed order ({RETURNS_PER_ROW} to a row; row `+k` starts at seed {e.seeds[0]} + k):",
            "",
            "```text",
            *rows,
            "```",
            "",
            f"Seeds, returns and lengths: [{EVALUATION_JSON}]({EVALUATION_JSON}). Reproduce (it rewrites this "
            "section, the JSON and the histogram):",
            "",
            "```sh",
            self.command,
            "```",
        ]

    def histogram_png(self) -> bytes:
        """The returns' histogram with the mean and the 5th percentile marked, as a small PNG (no timestamp in it, so
        the same returns draw the same bytes)."""
        import io

        import matplotlib

        matplotlib.use("Agg")  # files only; no display
        import matplotlib.pyplot as plt

        e, s = self.evaluation, self.evaluation.summary()
        fig, ax = plt.subplots(figsize=(6, 3.2), dpi=80)
        low, high = s["min"], s["max"]
        # equal returns (a policy that always reaches the time limit) get one narrow bar centred on them
        bins = 20 if high > low else [low - 0.5, high + 0.5]
        ax.hist(e.returns, bins=bins, color="#4c72b0", edgecolor="white")
        if high == low:
            ax.set_xlim(low - 10, high + 10)
        ax.axvline(s["mean"], color="black", linestyle="-", label=f"mean {s['mean']:.1f}")
        ax.axvline(s["p5"], color="#c44e52", linestyle="--", label=f"5th percentile {s['p5']:.1f}")
        ax.set_xlabel("episode return")
        ax.set_ylabel("episodes")
        ax.set_title(f"{e.env_id}: {len(e.seeds)} episodes, seeds {e.seeds[0]}..{e.seeds[-1]}", fontsize=10)
        ax.legend(fontsize=8, loc="best")
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", metadata={"Software": None})
        plt.close(fig)
        return buffer.getvalue()

    def files(self) -> dict[str, bytes]:
        """The files that go beside the card: ``evaluation.json`` and ``evaluation.png``."""
        return {
            EVALUATION_JSON: _json_one_key_a_line(self.record()).encode(),
            EVALUATION_PNG: self.histogram_png(),
        }


def _json_one_key_a_line(record: dict[str, Any]) -> str:
    """A JSON object with one key to a line and each value compact (50 returns on one line, not 50 lines)."""
    return "{\n" + ",\n".join(f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in record.items()) + "\n}\n"


def _versions() -> dict[str, str]:
    found = {}
    for package in RECORDED_VERSIONS:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return found


def replace_section(card: str, section: Sequence[str], heading: str = SECTION_HEADING) -> str:
    """``card`` with its ``heading`` section (the heading line up to the next ``#``/``##`` heading outside a code
    block, or the end) replaced by ``section``; everything else is kept byte for byte. A card without one gets it
    after its ``## Metrics`` section, or at the end when it has none."""
    lines = card.splitlines()
    headings = _headings(lines)
    starts = [i for i in headings if lines[i].rstrip() == heading]
    if starts:
        start = starts[0]
        end = next((i for i in headings if i > start), len(lines))
    else:
        metrics = next((i for i in headings if lines[i].rstrip() == "## Metrics"), None)
        start = end = len(lines) if metrics is None else next((i for i in headings if i > metrics), len(lines))
    before, after = lines[:start], lines[end:]
    while before and not before[-1].strip():
        before.pop()
    while after and not after[0].strip():
        after.pop(0)
    joined = [*before, *([""] if before else []), *section, *(["", *after] if after else [])]
    return "\n".join(joined) + "\n"


def _headings(lines: Sequence[str]) -> list[int]:
    """Indices of the level-1 and level-2 heading lines outside fenced code blocks."""
    found, fenced = [], False
    for i, line in enumerate(lines):
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced and (line.startswith("# ") or line.startswith("## ")):
            found.append(i)
    return found


def write_card_evaluation(version_dir: Path, report: EvaluationReport) -> list[Path]:
    """Writes the report beside a model: ``evaluation.json``, ``evaluation.png``, then the card's section (last, so
    the card never links a file not yet there). Each file is replaced atomically. Raises ``FileNotFoundError`` when
    there is no card to update."""
    card_path = version_dir / CARD_FILE
    card = card_path.read_text()
    written = []
    for name, content in [*report.files().items(), (CARD_FILE, replace_section(card, report.section()).encode())]:
        target = version_dir / name
        staged = version_dir / f".{name}.tmp"
        staged.write_bytes(content)
        os.replace(staged, target)
        written.append(target)
    return written


def evaluate_to_card(model: Path, episodes: int, seed: int = EVALUATION_SEED_BASE, env: str | None = None
                     ) -> tuple[EvaluationReport, list[Path]]:  # fmt: skip
    """Evaluates the ONNX file ``model`` and writes the report into its card and beside it (``--card``). The sha256
    is of the bytes ONNX Runtime ran; only a model of an architecture this project trains (``odetoode.arch`` in
    ``ARCHS``) is said to have never seen the seeds."""
    content = model.read_bytes()
    evaluation = evaluate_onnx(content, env, episodes, seed)
    arch = policy_session(content).get_modelmeta().custom_metadata_map.get(PREFIX + "arch")
    report = EvaluationReport(evaluation, hashlib.sha256(content).hexdigest(),
                              evaluation_command(model, episodes, seed, env), trained_here=arch in ARCHS)  # fmt: skip
    return report, write_card_evaluation(model.parent, report)


if __name__ == "__main__":  # the spelling cards written before ``--card`` gave; the CLI does the work
    import sys

    from trainer.cli import main

    main(["evaluate", *sys.argv[1:]])
