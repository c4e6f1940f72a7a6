"""The one command line: every subcommand parses, shows its defaults and choices, and every command the docs give
parses to what it says."""

from __future__ import annotations

import shlex
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

from odetoode.modelfile import ARCHS
from trainer.cli import COMMANDS, ESCommand, ExportCommand, SupervisedCommand, main, parse
from trainer.provenance import command_line
from trainer.supervised import SupervisedConfig

ROOT = Path(__file__).resolve().parents[2]


def documented_commands() -> list[tuple[str, list[str]]]:
    """``(where, argv)`` of every ``python -m trainer ...`` line in a code block of README.md and docs/*.md
    (continuation lines joined, comments cut)."""
    found = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        lines, in_block, i = path.read_text().splitlines(), False, 0
        while i < len(lines):
            text = lines[i].strip()
            if text.startswith("```"):
                in_block = not in_block
            elif in_block and " -m trainer " in f" {text} " and text.split()[0].endswith("python"):
                where = f"{path.name}:{i + 1}"
                while text.endswith("\\"):
                    i += 1
                    text = text[:-1] + " " + lines[i].strip()
                words = shlex.split(text, comments=True)
                found.append((where, words[words.index("trainer") + 1 :]))
            i += 1
    return found


def test_the_docs_give_commands_of_every_kind() -> None:
    kinds = {argv[0] for _, argv in documented_commands()}
    assert {"es", "export", "supervised", "evaluate", "plot", "table", "reproduce"} <= kinds


@pytest.mark.parametrize("argv", [pytest.param(argv, id=where) for where, argv in documented_commands()])
def test_every_documented_command_parses(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    if "--help" in argv:
        with pytest.raises(SystemExit) as done:
            parse(argv)
        assert done.value.code == 0
        assert f"usage: python -m trainer {argv[0]}" in capsys.readouterr().out
        return
    assert isinstance(parse(argv), COMMANDS[argv[0]])  # type: ignore[arg-type]


def test_the_readme_tour_means_what_it_says() -> None:
    (argv,) = [argv for where, argv in documented_commands() if where.startswith("README") and "--export" in argv]
    command = parse(argv)
    assert isinstance(command, ESCommand)
    c = command.config
    assert (c.env, c.sigma, c.step_size, c.shaping, c.top_b, c.iterations) == ("HalfCheetah-v5", 0.05, 0.02, "top-b",
                                                                              20, 20)  # fmt: skip
    assert (command.out, command.export, command.repository) == (Path("runs/tour"), "cheetah",
                                                                 Path("/tmp/odetoode-models"))  # fmt: skip
    assert command.export_episodes == 20 and not command.resume


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_help_shows_every_option_with_its_default(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        parse([name, "--help"])
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert f"usage: python -m trainer {name}" in text
    assert "(default:" in text or "(required)" in text
    if name in ("es", "export", "gradients"):  # --arch / --init list the contract's architectures
        assert all(arch in text for arch in ARCHS)


def test_flags_are_plain_and_mistakes_are_usage_errors() -> None:
    command = parse(["es", "--resume", "--no-normalize"])
    assert isinstance(command, ESCommand) and command.resume and not command.config.normalize
    for argv in (["es", "--resume", "True"], ["es", "--arch", "resnet"], ["export"], ["nonsense"]):
        with pytest.raises(SystemExit) as done:
            parse(argv)
        assert done.value.code == 2, argv
    with pytest.raises(SystemExit, match="exactly one of --checkpoint and --init"):
        main(["export", "--name", "x", "--init", "nanode", "--checkpoint", "ckpt.pt"])


def test_export_defaults_come_from_one_place() -> None:
    command = parse(["export", "--name", "n", "--init", "nanode"])
    assert isinstance(command, ExportCommand) and command.init == "nanode"
    assert (command.untrained.kind, command.untrained.observation_dim, command.untrained.action_dim) == (
        "policy",
        17,
        6,
    )


def test_a_supervised_configuration_spelled_as_a_command_parses_back() -> None:
    config = SupervisedConfig(model="hypernet-4", width=32, dropout=0.1, step=0.05, seed=3)
    words = shlex.split(command_line("supervised", config, out=Path("runs/x y")))
    command = parse(words[3:])
    assert isinstance(command, SupervisedCommand)
    assert command.config == config and command.out == Path("runs/x y")
    assert "--epochs" not in words  # defaults are left out
    assert {f.name for f in fields(SupervisedConfig)} >= {"model", "width", "dropout", "step", "seed"}


def test_gradients_prints_the_band(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["gradients", "--arch", "iso-odetoode", "--steps", "10", "--instances", "1"])
    assert done.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("band [1/e, e]") and lines[-1].split()[:2] == ["iso-odetoode", "10"]
    assert lines[-1].endswith("yes")


def test_the_evaluate_module_runs_the_cli_command() -> None:
    """``python -m trainer.evaluate``, the spelling in the bundled models' cards, is the ``evaluate`` subcommand."""
    out = subprocess.run([sys.executable, "-m", "trainer.evaluate", "--help"], capture_output=True, text=True,
                         cwd=ROOT, check=True)  # fmt: skip
    assert "usage: python -m trainer evaluate" in out.stdout


def test_no_module_parses_arguments_on_its_own() -> None:
    offenders = [p.relative_to(ROOT) for p in (ROOT / "trainer").rglob("*.py") if "argparse" in p.read_text()]
    assert offenders == []
