"""``python -m trainer <command>``: the trainer's command line.

One ``tyro`` CLI over ``COMMANDS``: each subcommand is a dataclass of ``trainer.commands``, its docstring the help
text, a docstring under every field, so ``--help`` shows every default and every choice. A command's ``run`` gets the
command line as typed, which training records as its provenance.

``main`` turns the errors a user can cause (``EXPECTED_ERRORS``: an unknown environment, a missing file, a run
directory already taken, a bad argument) into one line on stderr and a non-zero exit status; anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Callable, Sequence
from typing import Annotated, Any, Union

import tyro

from odetoode.modelfile import ModelFormatError
from trainer.checkpoint import CheckpointError
from trainer.commands import Command, UsageError, one_line
from trainer.commands.experiments import GradientsCommand, GridCommand, PlotCommand, ReproduceCommand, TableCommand
from trainer.commands.models import DescribePolicyCommand, EvaluateCommand, ExportCommand
from trainer.commands.training import ESCommand, SupervisedCommand
from trainer.envs import UnsupportedEnvironmentError
from trainer.provenance import PROG
from trainer.rundir import RunDirectoryError

EXPECTED_ERRORS: tuple[type[BaseException], ...] = (
    UsageError,
    UnsupportedEnvironmentError,  # unknown environment id, unsupported observation or action space
    RunDirectoryError,  # --out holds another run
    FileNotFoundError,
    CheckpointError,
    ModelFormatError,
)
"""What a user's input can cause: ``main`` prints these as one line. ``ExportError`` joins them where the export
module is imported (it pulls in ONNX)."""


COMMANDS: dict[str, Callable[..., Command]] = {
    "es": ESCommand,
    "export": ExportCommand,
    "supervised": SupervisedCommand,
    "evaluate": EvaluateCommand,
    "plot": PlotCommand,
    "table": TableCommand,
    "reproduce": ReproduceCommand,
    "gradients": GradientsCommand,
    "grid": GridCommand,
    "describe-policy": DescribePolicyCommand,
}


def parse(argv: Sequence[str]) -> Command:
    """The command ``argv`` (without the program name) asks for; exits with usage on bad arguments or --help.

    ``es`` is parsed twice: the first pass reads which defaults the command line selects (``ESCommand.defaults``:
    a protocol, or the saved run it resumes), the second parses it against them, so that only the flags given
    override them (and ``--help`` shows them)."""
    argv = list(argv)
    default = _es_defaults(argv) if argv[:1] == ["es"] else None
    return _parse(argv, es_default=default)


def _parse(argv: Sequence[str], *, es_default: ESCommand | None = None, console_outputs: bool = True) -> Command:
    """``tyro.extras.subcommand_cli_from_dict(COMMANDS)``, spelled out so that ``es`` can take a default instance."""
    choices: list[Any] = []
    for name, constructor in COMMANDS.items():
        if name == "es" and es_default is not None:
            marker = tyro.conf.subcommand(name=name, constructor=constructor, default=es_default)
        else:
            marker = tyro.conf.subcommand(name=name, constructor=constructor)
        choices.append(Annotated[Any, marker])
    command: Command = tyro.cli(
        Union[tuple(choices)],  # type: ignore[call-overload]  # noqa: UP007 - a union built at run time
        prog=PROG, description="odetoode trainer: train, export and evaluate ODEtoODE models.", args=list(argv),
        console_outputs=console_outputs,
    )  # fmt: skip
    return command


def _es_defaults(argv: Sequence[str]) -> ESCommand | None:
    """The defaults an ``es`` command line selects; None where it does not parse (the real parse reports why)."""
    try:
        first = _parse([word for word in argv if word not in ("-h", "--help")], console_outputs=False)
    except SystemExit:
        return None
    return first.defaults() if isinstance(first, ESCommand) else None


def main(argv: Sequence[str] | None = None) -> None:
    """Runs the command ``argv`` asks for and exits with its status. An expected error (``EXPECTED_ERRORS``, an
    ``ExportError``) exits with one line on stderr, ``python -m trainer <command>: <message>``: status 2 for a
    ``UsageError`` (as for arguments that do not parse), 1 otherwise."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = parse(argv)
    try:
        status = command.run(shlex.join([*PROG.split(), *argv]))
    except Exception as exc:
        if not isinstance(exc, _expected_errors()):
            raise
        print(f"{PROG} {argv[0]}: {one_line(exc)}", file=sys.stderr)
        sys.exit(2 if isinstance(exc, UsageError) else 1)
    sys.exit(status)


def _expected_errors() -> tuple[type[BaseException], ...]:
    export = sys.modules.get("trainer.export")  # imported by the commands that export; importing it here costs ONNX
    return EXPECTED_ERRORS if export is None else (*EXPECTED_ERRORS, export.ExportError)
