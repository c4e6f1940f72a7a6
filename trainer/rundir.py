"""Run directories: a training run owns its ``--out`` directory, and a second run never writes into it by accident.

Every command that trains (``es``, ``supervised``) creates its run directory through ``prepare_run_directory``, so
the rule lives here once: a directory that holds any file of a run (``RUN_FILES``) belongs to that run. A new run
refuses it (``ExistingRunError``) unless told to continue the run there (``es --resume``) or to replace it
(``--overwrite``, which deletes the run's files first and leaves anything else in the directory alone).
"""

from __future__ import annotations

from pathlib import Path

RUN_FILES = ("config.json", "log.jsonl", "checkpoint.pt", "best.pt", "result.json")
"""What a run writes into its directory: ES runs all but ``result.json``; supervised runs ``result.json`` and
``checkpoint.pt``. Only these count as (and, with ``overwrite``, are deleted as) a run."""


class RunDirectoryError(Exception):
    """A run directory cannot be used as asked; the message is one line naming the directory and what to do."""


class ExistingRunError(RunDirectoryError, FileExistsError):
    """The run directory already holds another run's files and neither continuing nor replacing it was asked for."""


def run_files(out: Path) -> list[str]:
    """The names of ``RUN_FILES`` present in ``out`` (none when it does not exist)."""
    return [name for name in RUN_FILES if (out / name).exists()]


def prepare_run_directory(out: Path, *, resume: bool = False, overwrite: bool = False, resumable: bool = True) -> Path:
    """Creates ``out`` (with its parents) for a run and returns it.

    A directory without run files is used as it is. One holding a run is kept as it is with ``resume`` (the run
    continues there), emptied of its ``RUN_FILES`` with ``overwrite`` (other files stay), and otherwise refused with
    ``ExistingRunError``, whose message offers ``--resume`` only when the command is ``resumable``. Raises
    ``RunDirectoryError`` when ``out`` is a file, or when both ``resume`` and ``overwrite`` are given.
    """
    if resume and overwrite:
        raise RunDirectoryError(f"{out}: give at most one of --resume and --overwrite")
    if out.exists() and not out.is_dir():
        raise RunDirectoryError(f"{out}: not a directory; --out names the run's directory")
    found = run_files(out)
    if found and not resume:
        if not overwrite:
            remedy = ("--resume to continue it or " if resumable else "") + "--overwrite to replace it"
            raise ExistingRunError(f"{out} already holds a run ({', '.join(found)}): give {remedy}, or another --out")
        for name in found:
            (out / name).unlink()
    out.mkdir(parents=True, exist_ok=True)
    return out
