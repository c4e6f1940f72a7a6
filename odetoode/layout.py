"""The model repository on disk: ``<repository>/<name>/<version>/model.onnx`` (plus its card and any extra files)
and ``<repository>/<name>/config.yaml``. The exporter writes versions this way and the test fixtures lay out
repositories this way; the server reads them (``service.repository``).

Versions are immutable and appear atomically: a version directory is staged beside its final place and renamed
into it, so a server polling the repository never sees half a version.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from odetoode.modelfile import MODEL_NAME, VERSION_NAME

MODEL_FILE = "model.onnx"


def versions(model_dir: Path) -> list[int]:
    """The version numbers in ``model_dir`` (its directories named by a version number, ``VERSION_NAME``),
    ascending; none for a missing one."""
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and VERSION_NAME.fullmatch(p.name))


def version_files(model_dir: Path) -> dict[int, Path]:
    """The versions of one model a server can load: version directories holding a ``model.onnx``, by number (none
    for a missing model directory)."""
    try:
        entries = list(model_dir.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return {}
    return {
        int(e.name): e / MODEL_FILE for e in entries if VERSION_NAME.fullmatch(e.name) and (e / MODEL_FILE).is_file()
    }


def model_names(root: Path) -> list[str]:
    """The model directories under ``root`` whose names are valid (``MODEL_NAME``: hidden and staging directories
    are not), sorted."""
    try:
        return sorted(p.name for p in root.iterdir() if p.is_dir() and MODEL_NAME.fullmatch(p.name))
    except FileNotFoundError:
        return []


def next_version(model_dir: Path) -> int:
    """One past the highest version in ``model_dir`` (1 for a new model)."""
    return max(versions(model_dir), default=0) + 1


def write_version(
    repository: str | Path,
    name: str,
    files: Mapping[str, bytes],
    version: int | None = None,
    *,
    serving_config: Mapping[str, Any] | None = None,
) -> Path:
    """Writes ``files`` (plain names; ``model.onnx`` among them) as ``<repository>/<name>/<version>/`` atomically and
    returns that directory. ``version`` defaults to one past the highest existing one; an existing version is never
    overwritten. ``serving_config`` (if given) replaces ``<name>/config.yaml``."""
    if not MODEL_NAME.fullmatch(name):
        raise ValueError(f"model name {name!r} must match {MODEL_NAME.pattern}")
    if MODEL_FILE not in files:
        raise ValueError(f"a version needs its {MODEL_FILE}")
    model_dir = Path(repository) / name
    model_dir.mkdir(parents=True, exist_ok=True)
    version = next_version(model_dir) if version is None else version
    if version < 1:
        raise ValueError(f"version must be >= 1, got {version}")
    target = model_dir / str(version)
    if target.exists():
        raise FileExistsError(f"{target} already exists; versions are immutable, export a new one")
    staging = Path(tempfile.mkdtemp(dir=model_dir, prefix=".staging-"))
    staging.chmod(0o755)  # mkdtemp makes it private; a server running as another user must read it
    try:
        for filename, content in files.items():
            if "/" in filename or filename.startswith("."):
                raise ValueError(f"file name {filename!r} is not a plain name")
            (staging / filename).write_bytes(content)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if serving_config is not None:
        config_path = model_dir / "config.yaml"
        tmp = config_path.with_name(".config.yaml.tmp")
        tmp.write_text(yaml.safe_dump(dict(serving_config), sort_keys=False))
        os.replace(tmp, config_path)
    return target
