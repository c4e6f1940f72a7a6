"""The Kustomize and Helm renderings of deploy/, and the chart's own checks (``helm lint``, its grace guard).

A rendering is a command (``kubectl kustomize`` or ``helm template``) whose output is parsed into the Kubernetes
objects that the validation and the server agreement then read. The commands are built lazily, so that naming a
rendering needs no kubectl or helm; running one raises ``ToolMissingError`` when they cannot be had.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

import yaml

from .layout import CHART, DEPLOY, ROOT
from .tools import kube_tools


@dataclass(frozen=True)
class Rendering:
    """One rendering of deploy/: its name (as reported), the command that prints its objects as YAML, and which
    agreement check reads them: the server Deployment's (``server``) or, for KServe, the ServingRuntime's."""

    name: str
    command: Callable[[], list[str]]
    # For the server checks: True where the rendering holds the server Deployment.
    server: bool = True


def _kustomize(path: str) -> Callable[[], list[str]]:
    return lambda: [kube_tools()[0], "kustomize", str(DEPLOY / path)]


def _helm(*values: str) -> Callable[[], list[str]]:
    sets = [arg for v in values for arg in ("--set", v)]
    return lambda: [kube_tools()[1], "template", "odetoode", str(CHART), "--namespace", "odetoode", *sets]


RENDERINGS = (
    Rendering("kustomize overlays/cpu", _kustomize("overlays/cpu")),
    Rendering("kustomize overlays/gpu", _kustomize("overlays/gpu")),
    Rendering("kustomize kserve", _kustomize("kserve"), server=False),
    Rendering("helm defaults", _helm()),
    Rendering("helm gpu", _helm("gpu.enabled=true")),
    Rendering(
        "helm minimal",
        _helm(
            "autoscaling.enabled=false",
            "podDisruptionBudget.enabled=false",
            "serviceMonitor.enabled=false",
            "prometheusRule.enabled=false",
            "grafanaDashboard.enabled=false",
            "service.headless=false",
            "modelsVolume.persistentVolumeClaim.claimName=odetoode-models",
            "settings.drain_grace_s=20",
            "terminationGracePeriodSeconds=45",
            "settings.auth_token_file=/etc/odetoode/auth/tokens",
            "extraVolumes[0].name=auth",
            "extraVolumes[0].secret.secretName=odetoode-auth",
            "extraVolumeMounts[0].name=auth",
            "extraVolumeMounts[0].mountPath=/etc/odetoode/auth",
            "extraVolumeMounts[0].readOnly=true",
        ),
    ),
)


@cache
def render(name: str) -> tuple[dict[str, Any], ...]:
    """The objects of the rendering called ``name`` (cached: callers must copy before changing them).

    Raises ToolMissingError without kubectl/helm, RuntimeError with the tool's stderr when the rendering fails.
    """
    (rendering,) = [r for r in RENDERINGS if r.name == name]
    command = rendering.command()
    out = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {out.stderr.strip()}")
    return tuple(doc for doc in yaml.safe_load_all(out.stdout) if doc)


def run_helm_lint() -> list[str]:
    """``helm lint --strict`` with the default values and with the GPU switch on."""
    problems = []
    for values in ([], ["--set", "gpu.enabled=true"]):
        out = subprocess.run([kube_tools()[1], "lint", "--strict", str(CHART), *values], capture_output=True, text=True)
        if out.returncode != 0:
            problems += [line for line in out.stdout.splitlines() if "[ERROR]" in line or "[WARNING]" in line]
            problems.append(f"helm lint --strict {' '.join(values)} failed")
    return problems


def helm_refuses_short_grace() -> list[str]:
    """The chart must refuse a terminationGracePeriodSeconds that does not cover preStop + drain_grace_s."""
    command = _helm("terminationGracePeriodSeconds=15", "preStopSleepSeconds=5", "settings.drain_grace_s=10")()
    out = subprocess.run(command, capture_output=True, text=True)
    if out.returncode == 0 or "terminationGracePeriodSeconds" not in out.stderr:
        return ["helm template accepted terminationGracePeriodSeconds=15 with preStop 5 s + drain 10 s"]
    return []
