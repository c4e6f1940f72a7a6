"""Where the deployment files are, and which of them the linters cover.

Paths are computed from this file's location (deploy/checks/), never from the working directory, so that the checks
give the same answer wherever they are started from.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DOCKER = ROOT / "docker"
CHART = DEPLOY / "helm" / "odetoode"
DASHBOARD = DEPLOY / "grafana" / "odetoode-dashboard.json"
MONITORING = DEPLOY / "monitoring"
RULES_SOURCE = MONITORING / "rules.py"
RULES_FILE = MONITORING / "odetoode-rules.yaml"
RULES_TESTS = MONITORING / "odetoode-rules.test.yaml"
YAMLLINT_CONFIG = DEPLOY / "yamllint.yaml"


def dockerfiles() -> list[Path]:
    """Every image's Dockerfile (``docker/*.Dockerfile``), sorted by name."""
    return sorted(DOCKER.glob("*.Dockerfile"))


def yaml_files() -> list[Path]:
    """The YAML of deploy/ and docker/, sorted; Helm templates excluded (they are not YAML before rendering)."""
    files = [*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml"), *DOCKER.rglob("*.yaml"), *DOCKER.rglob("*.yml")]
    templates = CHART / "templates"
    return sorted(p for p in set(files) if templates not in p.parents)
