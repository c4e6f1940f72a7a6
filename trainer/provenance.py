"""Where a model came from: the ``python -m trainer`` command line that reproduces a training configuration.

A run started from the shell records the command as typed (the CLI passes it down); a run started from code (a
reproduction script, a test) records ``command_line(...)``, the same configuration spelled as flags, so every
``TrainingRecord.command`` can be pasted back into a shell.
"""

from __future__ import annotations

import dataclasses
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any

PROG = "python -m trainer"


def command_line(subcommand: str, config: Any, *, defaults: Any = None, **options: Any) -> str:
    """``python -m trainer <subcommand>`` with a flag for each field of the dataclass ``config`` that differs from
    its default, then one for each of ``options`` (e.g. ``out=Path("runs/x")``), spelled as the CLI parses them.

    ``defaults``: an instance of ``config``'s class holding the defaults the command line will be parsed against
    (``es --protocol NAME`` parses against the protocol's settings); None: the fields' own defaults."""
    words = [*PROG.split(), subcommand]
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if defaults is not None:
            default: Any = getattr(defaults, f.name)
        elif f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = dataclasses.MISSING
        if value != default:
            words += _flag(f.name, value)
    for name, value in options.items():
        words += _flag(name, value)
    return shlex.join(words)


def _flag(name: str, value: Any) -> list[str]:
    flag = "--" + name.replace("_", "-")
    if isinstance(value, bool):
        return [flag] if value else ["--no-" + name.replace("_", "-")]
    if value is None:
        return [flag, "None"]
    if isinstance(value, Mapping):
        return [flag, *(str(item) for pair in value.items() for item in pair)]
    if isinstance(value, list | tuple):
        return [flag, *(str(v) for v in value)]
    return [flag, str(value) if not isinstance(value, Path) else value.as_posix()]
