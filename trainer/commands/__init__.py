"""The trainer's subcommands, one dataclass each (``trainer.cli`` composes them into one ``tyro`` CLI): the
dataclass's docstring is the command's help text and a docstring under every field its option's, so ``--help`` shows
every default and every choice.

* ``training``: ``es`` and ``supervised``, which train;
* ``models``: ``export``, ``evaluate`` and ``describe-policy``, which make, check and bring in servable models;
* ``experiments``: ``plot``, ``table``, ``reproduce``, ``gradients`` and ``grid``, which draw the paper's figures.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import tyro

Flattened = tyro.conf.arg(name="")
"""A nested configuration whose fields read as the command's own (``--env``, not ``--config.env``)."""

TRAINED_REPOSITORY = Path("runs/models")
"""Where ``--export`` and ``export`` write by default: beside the runs, not the bundled ``models/`` that ``make serve``
serves (a half-trained export must not go live by accident). Serve it with ``python -m service --repository
runs/models``."""


class UsageError(Exception):
    """Arguments that parse but do not make sense together; ``main`` prints the message as a usage error (exit 2)."""


class Command(Protocol):
    def run(self, command: str) -> int:
        """Does the work; ``command`` is the command line as typed. Returns the exit status."""
        ...


def one_line(error: BaseException) -> str:
    """The error's message on one line (a missing file as ``PATH: reason``)."""
    if isinstance(error, OSError) and error.filename is not None:
        return f"{error.filename}: {error.strerror}"
    return " ".join(str(error).split()) or type(error).__name__
