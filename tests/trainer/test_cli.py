"""The one command line: every subcommand parses, shows its defaults and choices, and every command the docs give
parses to what it says."""

from __future__ import annotations

import json
import shlex
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path

import pytest

from odetoode.modelfile import ARCHS
from trainer.checkpoint import Checkpoint
from trainer.cli import COMMANDS, main, parse
from trainer.commands.experiments import GridCommand
from trainer.commands.models import ExportCommand
from trainer.commands.training import ESCommand, SupervisedCommand
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
    assert (command.out, command.export, command.repository) == (Path("runs/tour"), "cheetah", Path("runs/models"))
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


def test_arguments_that_do_not_fit_together_are_one_line_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    for argv, message in [
        (["export", "--name", "x", "--init", "nanode", "--checkpoint", "ckpt.pt"],
         "python -m trainer export: give exactly one of --checkpoint and --init"),
        (["es", "--resume", "--overwrite"], "python -m trainer es: give at most one of --resume and --overwrite"),
        (["supervised", "--model", "resnet-3"],
         "python -m trainer supervised: --model 'resnet-3': unknown model family"),
    ]:  # fmt: skip
        with pytest.raises(SystemExit) as done:
            main(argv)
        assert done.value.code == 2, argv
        (line,) = capsys.readouterr().err.splitlines()
        assert line.startswith(message)


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
    """``python -m trainer.evaluate``, the older spelling, is the ``evaluate`` subcommand."""
    out = subprocess.run([sys.executable, "-m", "trainer.evaluate", "--help"], capture_output=True, text=True,
                         cwd=ROOT, check=True)  # fmt: skip
    assert "usage: python -m trainer evaluate" in out.stdout


def test_no_module_parses_arguments_on_its_own() -> None:
    offenders = [p.relative_to(ROOT) for p in (ROOT / "trainer").rglob("*.py") if "argparse" in p.read_text()]
    assert offenders == []


def one_line_help(name: str, capsys: pytest.CaptureFixture[str]) -> str:
    """``<name> --help`` with the box drawing and the line breaks of its layout taken out."""
    with pytest.raises(SystemExit) as done:
        parse([name, "--help"])
    assert done.value.code == 0
    return " ".join(capsys.readouterr().out.replace("│", " ").split())


def test_es_help_lists_the_architectures_as_choices(capsys: pytest.CaptureFixture[str]) -> None:
    text = one_line_help("es", capsys)
    choices = text[text.index("--arch {") : text.index("}", text.index("--arch {")) + 1].replace(" ", "")
    assert choices == "--arch{" + ",".join(ARCHS) + "}"
    assert "(default: iso-odetoode)" in text
    assert "--overwrite, --no-overwrite Replace the run in --out" in text


def test_supervised_help_shows_defaults_and_what_a_model_name_means(capsys: pytest.CaptureFixture[str]) -> None:
    text = one_line_help("supervised", capsys)
    for flag, default in [("--model STR", "odetoode-1"), ("--width INT", "128"), ("--epochs INT", "20"),
                          ("--out PATH", "runs/supervised"), ("--repository PATH", "runs/models"),
                          ("--overwrite, --no-overwrite", "False")]:  # fmt: skip
        described = text[text.index(flag) :]
        assert described[described.index("(default: ") :].startswith(f"(default: {default})"), flag
    assert "odetoode-k (gated-ODEtoODE, k gates)" in text
    assert "odetoode-1 with the defaults: gated-ODEtoODE, one gate, h = 128, N = 100" in text


@pytest.mark.parametrize("name", ["es", "supervised", "export"])
def test_trained_models_go_to_a_repository_that_is_not_served(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    argv = [name, "--name", "x", "--init", "nanode"] if name == "export" else [name]
    command = parse(argv)
    assert command.repository == Path("runs/models")  # type: ignore[attr-defined]
    assert "python -m service --repository runs/models" in one_line_help(name, capsys)


@pytest.fixture
def sigterm_kept() -> Iterator[None]:
    """``es`` turns SIGTERM into KeyboardInterrupt for its run; the test process gets its own handler back."""
    handler = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, handler)


ES_TINY = ["es", "--env", "Pendulum-v1", "--directions", "2", "--max-episode-steps", "10", "--eval-episodes", "1",
           "--backend", "inline"]  # fmt: skip


def es(out: Path, *args: str) -> int | str | None:
    with pytest.raises(SystemExit) as done:
        main([*ES_TINY, "--out", str(out), *args])
    return done.value.code


def iterations(run: Path) -> list[int]:
    return [json.loads(line)["iteration"] for line in (run / "log.jsonl").read_text().splitlines()]


@pytest.mark.usefixtures("sigterm_kept")
def test_es_refuses_an_existing_run_unless_told_to_resume_or_overwrite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    assert es(run, "--iterations", "1") == 0
    first = (run / "best.pt").read_bytes()
    capsys.readouterr()
    assert es(run, "--iterations", "1") == 1  # the same --out again: refused, nothing touched
    (line,) = capsys.readouterr().err.splitlines()
    found = "config.json, log.jsonl, checkpoint.pt, best.pt"
    remedy = "give --resume to continue it or --overwrite to replace it, or another --out"
    assert line == f"python -m trainer es: {run} already holds a run ({found}): {remedy}"
    assert iterations(run) == [1] and (run / "best.pt").read_bytes() == first
    assert es(run, "--iterations", "2", "--resume") == 0  # continues: one log, iterations 1 and 2
    assert iterations(run) == [1, 2]
    (run / "notes.txt").write_text("mine")
    assert es(run, "--iterations", "1", "--overwrite", "--seed", "3") == 0  # replaces: a new run's files only
    assert iterations(run) == [1] and json.loads((run / "config.json").read_text())["seed"] == 3
    assert Checkpoint.load(run / "checkpoint.pt").extra["run_state"]["iteration"] == 1
    assert (run / "notes.txt").read_text() == "mine"


@pytest.mark.usefixtures("sigterm_kept")
def test_es_resume_without_a_checkpoint_refuses_rather_than_mixing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "log.jsonl").write_text('{"iteration": 1}\n')
    assert es(tmp_path, "--iterations", "1", "--resume") == 1
    assert "holds no checkpoint.pt to resume from (log.jsonl): give --overwrite" in capsys.readouterr().err
    assert iterations(tmp_path) == [1]


@pytest.mark.usefixtures("sigterm_kept")
def test_an_unknown_environment_deletes_nothing_even_with_overwrite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "best.pt").write_bytes(b"the old run")
    with pytest.raises(SystemExit) as done:
        main(["es", "--env", "NoSuchEnv-v0", "--out", str(tmp_path), "--overwrite"])
    assert done.value.code == 1 and "unknown environment 'NoSuchEnv-v0'" in capsys.readouterr().err
    assert (tmp_path / "best.pt").read_bytes() == b"the old run"


def test_supervised_refuses_an_existing_run_and_overwrite_replaces_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "result.json").write_text('{"old": true}')
    tiny = ["supervised", "--model", "dense-1", "--width", "8", "--epochs", "1", "--out", str(tmp_path)]
    with pytest.raises(SystemExit) as done:
        main(tiny)
    assert done.value.code == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert line == (f"python -m trainer supervised: {tmp_path} already holds a run (result.json): give --overwrite "
                    "to replace it, or another --out")  # fmt: skip
    assert json.loads((tmp_path / "result.json").read_text()) == {"old": True}
    with pytest.raises(SystemExit) as done:
        main([*tiny, "--overwrite"])
    assert done.value.code == 0
    assert json.loads((tmp_path / "result.json").read_text())["config"]["model"] == "dense-1"
    assert Checkpoint.load(tmp_path / "checkpoint.pt").arch == "dense"


def test_an_unknown_environment_is_one_line_without_a_traceback(tmp_path: Path) -> None:
    """The real entry point, as a user runs it."""
    done = subprocess.run([sys.executable, "-m", "trainer", "es", "--env", "NoSuchEnv-v0", "--out",
                           str(tmp_path / "run")], capture_output=True, text=True, cwd=ROOT, timeout=120)  # fmt: skip
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    (line,) = done.stderr.splitlines()
    assert line.startswith("python -m trainer es: unknown environment 'NoSuchEnv-v0'")
    assert not (tmp_path / "run").exists()


def test_a_missing_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for argv, missing in [
        (["evaluate", str(tmp_path / "model.onnx")], tmp_path / "model.onnx"),
        (["plot", str(tmp_path), "--out", str(tmp_path / "x.png")], tmp_path / "config.json"),
        (["export", "--checkpoint", str(tmp_path / "nope.pt"), "--name", "x"], tmp_path / "nope.pt"),
    ]:
        with pytest.raises(SystemExit) as done:
            main(argv)
        assert done.value.code == 1, argv
        (line,) = capsys.readouterr().err.splitlines()
        assert line == f"python -m trainer {argv[0]}: {missing}: No such file or directory"


def test_an_unexpected_error_keeps_its_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(self: object, command: str) -> int:
        raise KeyError("a bug")

    monkeypatch.setattr(GridCommand, "run", broken)
    with pytest.raises(KeyError, match="a bug"):
        main(["grid"])
