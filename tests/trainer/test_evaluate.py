"""The card's Evaluation section: written in one place, replacing only itself, on seeds training never drew, and the
same whether ``evaluate --card`` or the exporter writes it."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from odetoode.modelfile import Box, Normalization
from tests.trainer.recording import RecordingBackend
from trainer.checkpoint import Checkpoint
from trainer.cli import main, parse
from trainer.commands.models import EvaluateCommand
from trainer.es_training import ESConfig, ESRun
from trainer.evaluate import (
    EVALUATION_JSON,
    EVALUATION_PNG,
    EVALUATION_SEED_BASE,
    SECTION_HEADING,
    Evaluation,
    EvaluationReport,
    evaluate_onnx,
    replace_section,
)
from trainer.models import build_model
from trainer.publish import export_checkpoint

ROOT = Path(__file__).resolve().parents[2]
CARTPOLE = ROOT / "models" / "cartpole" / "1"

SAMPLE_CARD = """# sample (version 1)

A **iso-odetoode** policy.

## Provenance

- **command**: `"python -m trainer es --env Pendulum-v1"`

## Metrics

- **eval_return**: -150.0

## Evaluation

An old evaluation, with a block that looks like a heading:

```text
## not a heading inside a code block
```

## Learning curve

![learning curve](learning_curve.png)

## Configuration

```json
{"hidden": 16}
```
"""


def report(returns: tuple[float, ...], first_seed: int = EVALUATION_SEED_BASE, trained_here: bool = True
           ) -> EvaluationReport:  # fmt: skip
    seeds = tuple(first_seed + i for i in range(len(returns)))
    evaluation = Evaluation("Pendulum-v1", returns, (200,) * len(returns), seeds)
    return EvaluationReport(evaluation, "0" * 64, "python -m trainer evaluate m/1/model.onnx --episodes 3 --card",
                            trained_here)  # fmt: skip


def split_at_section(card: str) -> tuple[str, str, str]:
    """(before, the Evaluation section, after) of a card whose section is followed by ``## Learning curve``."""
    start = card.index(f"\n{SECTION_HEADING}\n") + 1
    end = card.index("\n## Learning curve\n") + 1
    return card[:start], card[start:end], card[end:]


# -- the section writer -----------------------------------------------------------------------------------------------


def test_the_section_writer_replaces_only_its_section() -> None:
    before, old, after = split_at_section(SAMPLE_CARD)
    new_section = report((-120.5, -130.25, -99.0)).section()
    card = replace_section(SAMPLE_CARD, new_section)
    new_before, written, new_after = split_at_section(card)
    assert (new_before, new_after) == (before, after)  # the rest of the card, byte for byte
    assert written == "\n".join(new_section) + "\n\n"
    assert "## not a heading inside a code block" not in card  # the old section went entirely, code block included
    assert replace_section(card, new_section) == card  # idempotent
    assert replace_section(card, old.rstrip("\n").splitlines()) == SAMPLE_CARD  # and back: a round trip


def test_a_card_without_the_section_gets_it_after_its_metrics_or_at_the_end() -> None:
    before, _, after = split_at_section(SAMPLE_CARD)
    section = report((1.0, 2.0)).section()
    without = before + after
    assert replace_section(without, section) == before + "\n".join(section) + "\n\n" + after
    bare = '# external\n\n## Provenance\n\n- **command**: `"sb3"`\n'
    assert replace_section(bare, section) == bare + "\n" + "\n".join(section) + "\n"


def test_the_section_states_the_figures_the_seeds_and_the_files_beside_it() -> None:
    returns = (-120.5, -130.25, -99.0)
    text = "\n".join(report(returns).section())
    assert f"mean return **{np.mean(returns):.1f}**" in text
    assert f"sample std {np.std(returns, ddof=1):.1f}" in text and f"min {min(returns):.1f}" in text
    assert f"5th percentile {np.percentile(returns, 5):.1f}" in text and f"max {max(returns):.1f}" in text
    assert f"{EVALUATION_SEED_BASE}..{EVALUATION_SEED_BASE + 2}" in text
    assert "None of them was used in training or in checkpoint selection" in text
    assert f"]({EVALUATION_PNG})" in text and f"]({EVALUATION_JSON})" in text
    # where the card cannot vouch for the seeds it says so instead
    assert "may have seen some of them" in "\n".join(report(returns, first_seed=0).section())
    assert "is not known" in "\n".join(report(returns, trained_here=False).section())


def test_the_histogram_is_a_small_png_and_the_same_returns_draw_the_same_bytes() -> None:
    png = report(tuple(float(v) for v in np.random.default_rng(0).normal(size=50))).histogram_png()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) < 100 * 1024
    assert png == report(tuple(float(v) for v in np.random.default_rng(0).normal(size=50))).histogram_png()


# -- the seeds --------------------------------------------------------------------------------------------------------


def test_evaluation_seeds_start_at_the_documented_base() -> None:
    command = parse(["evaluate", "model.onnx", "--card"])
    assert isinstance(command, EvaluateCommand) and command.seed == EVALUATION_SEED_BASE
    evaluation = evaluate_onnx(CARTPOLE / "model.onnx", episodes=2)
    assert evaluation.seeds == (EVALUATION_SEED_BASE, EVALUATION_SEED_BASE + 1)


class HighestDraws:
    """A generator whose ``integers`` always draws the highest value allowed, so that a seed drawn at or above
    ``EVALUATION_SEED_BASE`` would show whatever the luck of a real generator."""

    def __init__(self) -> None:
        self.rng = np.random.default_rng(0)
        self.highs: list[int] = []

    def integers(self, low: int, high: int, size: int) -> np.ndarray:
        self.highs.append(high)
        return np.full(size, high - 1, dtype=np.int64)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.rng, name)


@pytest.mark.parametrize("common_random_numbers", [True, False])
def test_training_and_checkpoint_selection_draw_their_seeds_below_the_base(
    tmp_path: Path, common_random_numbers: bool
) -> None:
    config = ESConfig(env="Pendulum-v1", directions=3, iterations=2, eval_episodes=2, backend="inline",
                      common_random_numbers=common_random_numbers)  # fmt: skip
    run = ESRun(config, tmp_path / "run")
    run.rng = HighestDraws()  # type: ignore[assignment]
    backend = RecordingBackend(run.spec.obs_dim)
    run.train(backend, progress=False)
    assert run.rng.highs and set(run.rng.highs) == {EVALUATION_SEED_BASE}  # type: ignore[attr-defined]
    for request in backend.requests:
        perturbed, selection = request.seeds[: 2 * config.directions], request.seeds[2 * config.directions :]
        assert len(selection) == config.eval_episodes  # the episodes whose mean picks best.pt
        assert max(perturbed) == max(selection) == EVALUATION_SEED_BASE - 1
    assert Checkpoint.load(tmp_path / "run" / "best.pt").training.metrics["eval_episodes"] == config.eval_episodes


# -- through the command ----------------------------------------------------------------------------------------------


def test_a_tiny_evaluation_through_the_command_rewrites_the_card_and_writes_its_files(tmp_path: Path) -> None:
    version = tmp_path / "cartpole" / "1"
    version.mkdir(parents=True)
    for name in ("model.onnx", "README.md"):
        shutil.copy(CARTPOLE / name, version / name)
    original = (version / "README.md").read_text()
    done = subprocess.run([sys.executable, "-m", "trainer", "evaluate", str(version / "model.onnx"), "--episodes", "2",
                           "--card"], capture_output=True, text=True, cwd=ROOT, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"wrote {version / 'README.md'}" in done.stdout
    record = json.loads((version / EVALUATION_JSON).read_text())
    assert record["seeds"] == [EVALUATION_SEED_BASE, EVALUATION_SEED_BASE + 1]
    assert record["returns"] == list(evaluate_onnx(CARTPOLE / "model.onnx", episodes=2).returns)
    assert record["model_sha256"] == hashlib.sha256((version / "model.onnx").read_bytes()).hexdigest()
    assert record["command"] == f"python -m trainer evaluate {version / 'model.onnx'} --episodes 2 --card"
    assert (version / EVALUATION_PNG).read_bytes()[:4] == b"\x89PNG"
    card = (version / "README.md").read_text()
    before, section, after = split_at_section(card)
    old_before, _, old_after = split_at_section(original)
    assert (before, after) == (old_before, old_after)
    assert "for 2 episodes of `CartPole-v1`" in section and record["command"] in section


def test_a_card_to_update_must_exist(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shutil.copy(CARTPOLE / "model.onnx", tmp_path / "model.onnx")
    with pytest.raises(SystemExit) as done:
        main(["evaluate", str(tmp_path / "model.onnx"), "--episodes", "1", "--card"])
    assert done.value.code == 1
    assert capsys.readouterr().err.strip().endswith(f"{tmp_path / 'README.md'}: No such file or directory")
    assert not (tmp_path / EVALUATION_JSON).exists()


def test_an_export_writes_the_section_the_card_command_writes(tmp_path: Path) -> None:
    """One writer: the card command a new export gives reproduces its section, JSON and histogram byte for byte,
    and the sha256 they state is the exported file's."""
    model = build_model("iso-odetoode", 3, 1, hidden=4, steps=3)
    checkpoint = Checkpoint.from_model(
        model, "policy", env_id="Pendulum-v1", observation_space=Box((3,), (-8.0,) * 3, (8.0,) * 3),
        action_space=Box((1,), (-2.0,), (2.0,)), normalization=Normalization((0.0,) * 3, (1.0,) * 3, 5.0),
    )  # fmt: skip
    published = export_checkpoint(checkpoint, "pendulum", tmp_path / "models", episodes=2)
    files = {name: (published.path / name).read_bytes() for name in ("README.md", EVALUATION_JSON, EVALUATION_PNG)}
    record = json.loads(files[EVALUATION_JSON])
    assert record["model_sha256"] == hashlib.sha256((published.path / "model.onnx").read_bytes()).hexdigest()
    metrics = published.exported.description.training.metrics
    assert metrics["onnx_eval_return_2_episodes"] == round(record["summary"]["mean"], 2)
    assert "## Evaluation" in files["README.md"].decode() and "## Learning curve" not in files["README.md"].decode()
    command = parse(record["command"].split()[3:])
    assert isinstance(command, EvaluateCommand) and command.card and command.episodes == 2
    assert command.model == published.path / "model.onnx"
    with pytest.raises(SystemExit) as done:
        main(record["command"].split()[3:])
    assert done.value.code == 0
    assert {name: (published.path / name).read_bytes() for name in files} == files
