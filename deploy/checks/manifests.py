"""Agreement of the rendered manifests with the server: the settings they give it, and what they expect of it.

Each check takes the objects of one rendering and returns one line per disagreement (``[]`` when they agree): ports,
probe paths and ports, drain timing (terminationGracePeriodSeconds > preStop sleep + ODETOODE_DRAIN_GRACE_S, with
``GRACE_MARGIN_S`` to spare), the settings ConfigMap (every key a ServerSettings field, the values parsed by
ServerSettings), the security context, and the Services, ServiceMonitor, PrometheusRule, HPA and PDB around the
Deployment.
"""

from __future__ import annotations

from typing import Any

from service.grpc_server import LIVENESS

from .containers import dockerfile_user
from .layout import DOCKER
from .rules import check_rendered_rules
from .server import GRACE_MARGIN_S, TELEMETRY_OFF, effective_settings

Objects = tuple[dict[str, Any], ...]


def _find(objects: Objects, kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o.get("kind") == kind]


def _container_env(container: dict[str, Any], objects: Objects) -> dict[str, str]:
    """The container's environment: its ConfigMaps (``envFrom``), then its literal ``env`` values over them.

    Raises ValueError for an ``envFrom`` ConfigMap that is not among ``objects``.
    """
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
    """Seconds the preStop hook waits (a ``sleep`` action or an ``exec`` of ``sleep N``); 0 without one."""
    pre_stop = container.get("lifecycle", {}).get("preStop", {})
    if "sleep" in pre_stop:
        return float(pre_stop["sleep"]["seconds"])
    command = pre_stop.get("exec", {}).get("command", [])
    if command[:1] == ["sleep"] and len(command) == 2:
        return float(command[1])
    return 0.0


def _port_number(port: int | str, container: dict[str, Any]) -> int:
    """A port number, or the number of the container's port of that name; ValueError for an unknown name."""
    if isinstance(port, int):
        return port
    by_name = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
    if port not in by_name:
        raise ValueError(f"port name {port!r} is not a container port ({sorted(by_name)})")
    return int(by_name[port])


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    # An empty selector would match every pod (a PDB) or none (a Service): neither is what a manifest here means.
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def check_server(objects: Objects) -> list[str]:
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
    if _find(objects, "ServiceMonitor") and not _find(objects, "PrometheusRule"):
        problems.append("a ServiceMonitor without the PrometheusRule: the server is scraped but nothing alerts")
    problems += check_rendered_rules(objects)
    return problems


def check_kserve(objects: Objects) -> list[str]:
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
