"""hadolint on the Dockerfiles and yamllint on the YAML of deploy/ and docker/.

Each returns the linter's non-blank output lines when it reports problems, ``[]`` when the files are clean, and
raises ``ToolMissingError`` when the linter is not installed.
"""

from __future__ import annotations

import subprocess

from .layout import ROOT, YAMLLINT_CONFIG, dockerfiles, yaml_files
from .tools import hadolint, yamllint


def run_hadolint() -> list[str]:
    """hadolint on every ``docker/*.Dockerfile``."""
    out = subprocess.run([hadolint(), "--no-color", *map(str, dockerfiles())], capture_output=True, text=True, cwd=ROOT)
    return [line for line in (out.stdout + out.stderr).splitlines() if line.strip()] if out.returncode else []


def run_yamllint() -> list[str]:
    """yamllint --strict with deploy/yamllint.yaml on ``yaml_files()`` (paths reported relative to the root)."""
    files = [str(p.relative_to(ROOT)) for p in yaml_files()]
    out = subprocess.run(
        [yamllint(), "--strict", "--format", "parsable", "--config-file", str(YAMLLINT_CONFIG), *files],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    return [line for line in (out.stdout + out.stderr).splitlines() if line.strip()] if out.returncode else []
