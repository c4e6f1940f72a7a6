"""The Docker side: the image Dockerfiles, and Compose with its Prometheus and Grafana provisioning.

Each check returns one line per disagreement with the server (``[]`` when they agree). The server's ports and drain
come from ServerSettings' defaults, which are what an image runs with unless told otherwise.
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath

import yaml

from service.settings import ServerSettings

from .layout import CHART, DASHBOARD, DOCKER, ROOT, RULES_FILE, dockerfiles
from .server import GRACE_MARGIN_S, TELEMETRY_OFF


def dockerfile_user(path: Path) -> str:
    """The last ``USER`` of the Dockerfile at ``path`` (the final stage's), ``""`` if it has none."""
    users = re.findall(r"^USER\s+(\S+)", path.read_text(), flags=re.M)
    return users[-1] if users else ""


def check_dockerfiles() -> list[str]:
    """Every image: a numeric non-root USER, its base a build argument; each image of ours (the ones that pip install
    this project, with ONNX Runtime) turns ONNX Runtime's telemetry off; each serve image EXPOSEs the server's ports
    and has a HEALTHCHECK on readiness."""
    problems: list[str] = []
    defaults = ServerSettings()
    ports = {str(defaults.http_port), str(defaults.grpc_port), str(defaults.metrics_port)}
    for path in dockerfiles():
        text = path.read_text()
        user = dockerfile_user(path)
        if not re.fullmatch(r"[1-9][0-9]*(:[0-9]+)?", user):
            problems.append(f"{path.name}: USER {user!r} is not a numeric non-root user")
        if "pip install" in text and text.count("=".join(TELEMETRY_OFF)) < 2:
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
    defaults = ServerSettings()
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
    # Prometheus runs docker/prometheus.yml, and the rules it loads (relative to that file's directory) are the
    # generated ones.
    service = compose["services"]["prometheus"]
    mounted = {PurePosixPath(m.split(":")[1]): (DOCKER / m.split(":")[0]).resolve() for m in service["volumes"]}
    config = PurePosixPath(next((c.split("=", 1)[1] for c in service["command"] if c.startswith("--config.file=")),
                                "/etc/prometheus/prometheus.yml"))  # fmt: skip
    if mounted.get(config) != (DOCKER / "prometheus.yml").resolve():
        problems.append(f"compose prometheus does not run docker/prometheus.yml as {config}")
    for rule_file in prometheus.get("rule_files", []):
        source = mounted.get(config.parent / rule_file)
        if source != RULES_FILE:
            problems.append(
                f"prometheus.yml loads {rule_file}, which compose does not mount from {RULES_FILE.relative_to(ROOT)}"
            )
    if not prometheus.get("rule_files"):
        problems.append("prometheus.yml loads no rules")
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
