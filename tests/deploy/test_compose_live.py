"""The Compose stack started for real (``make compose-test``; opt-in: RUN_COMPOSE=1).

docker/compose.yaml, unchanged, started by podman-compose (Debian's package; installed with apt-get when missing and
running as root) or by ``$COMPOSE`` (``docker compose``), under a project name of its own, with the images that
``make compose-test`` prepared: ``SERVE_IMAGE`` (``make image``) and ``PROMETHEUS_IMAGE`` (``make prometheus-image``:
the upstream image the file names where it can be pulled, else Debian's Prometheus on the local base). Only the
``server`` and ``prometheus`` services start: Grafana's image comes from a registry only (its dashboard's queries run
against a real Prometheus in ``make monitoring-test``). Every host port is left to the engine (the file's ``*_PORT``
variables set empty), so nothing else on the machine is in the way.

Asserted from outside the stack: the server answers ready on its published port, and through Prometheus's HTTP API
(docker/prometheus.yml as shipped: a 15 s scrape interval) that Prometheus scrapes the server by its name inside the
stack (target ``server:8002`` up, odetoode_* series from it: build info, readiness, the bundled models READY), that it
loaded every group and rule of deploy/monitoring/odetoode-rules.yaml and evaluates them without error, and that no
alert fires for this healthy stack. The seconds from ``up`` to the first scrape with data are recorded. Then the
stack stops with the file's ``stop_grace_period`` (30 s; podman-compose 1.0's ``down`` would give 1 s), the server
exits 0 (drained), and ``down`` plus the removal of its network leave nothing of the project behind.

``make compose-test`` sets COMPOSE_RESULTS=docs/results/compose.json, written after a complete run.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

pytestmark = pytest.mark.compose

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker" / "compose.yaml"
RULES = ROOT / "deploy" / "monitoring" / "odetoode-rules.yaml"
SERVICES = ("server", "prometheus")
"""The services started: Grafana stays out (no registry here to pull it from)."""
PORT_VARIABLES = ("HTTP_PORT", "GRPC_PORT", "METRICS_PORT", "PROMETHEUS_PORT", "GRAFANA_PORT")
"""docker/compose.yaml's host ports; empty: the engine picks a free one."""
TARGET = "server:8002"
"""The server as Prometheus scrapes it inside the stack (docker/prometheus.yml)."""
SCRAPED_WITHIN_S = 120.0
"""From ``up`` to data in Prometheus: the server's start, Prometheus's first target sync (~5 s), and a scrape that
found the server not yet listening (podman-compose starts both at once) repeated after the 15 s interval."""
STOP_GRACE_S = 30
BUNDLED = sorted(p.name for p in (ROOT / "models").iterdir() if p.is_dir())
"""The models the serve image carries (models/, copied to /models)."""
RESULTS = os.environ.get("COMPOSE_RESULTS")


# -- the engine ------------------------------------------------------------------------------------------------------


def run(
    command: list[str], timeout: float = 300, check: bool = True, **kwargs: Any
) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(command, capture_output=True, text=True, timeout=timeout, **kwargs)
    if check and out.returncode != 0:
        raise AssertionError(f"{shlex.join(command)}: rc {out.returncode}\n{(out.stderr or out.stdout)[-3000:]}")
    return out


def compose_tools() -> tuple[list[str], list[str]]:
    """(the compose command, the container engine): ``$COMPOSE`` (with docker) when set, else podman-compose with
    podman and docker/podman/containers.conf, podman-compose installed with apt-get when missing; skips with the
    reason when neither can be had."""
    if os.environ.get("COMPOSE"):
        return shlex.split(os.environ["COMPOSE"]), [os.environ.get("ENGINE", "docker")]
    os.environ.setdefault("CONTAINERS_CONF", str(ROOT / "docker" / "podman" / "containers.conf"))
    if shutil.which("podman") is None:
        pytest.skip("podman not installed: `make compose-test` installs it (through `make image`)")
    if shutil.which("podman-compose") is None:
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            pytest.skip("podman-compose not installed; as root with apt-get this test would install it")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for command in (["apt-get", "update", "-qq"],
                        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "podman-compose"]):  # fmt: skip
            out = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
            if out.returncode != 0:
                pytest.skip(f"{shlex.join(command)} failed: {(out.stderr or out.stdout).strip()[-500:]}")
    return ["podman-compose"], ["podman"]


@dataclass
class Stack:
    compose: list[str]
    engine: list[str]
    project: str
    env: dict[str, str]
    started: float
    containers: dict[str, str] = field(default_factory=dict)
    """service -> container id"""
    results: dict[str, Any] = field(default_factory=dict)

    def compose_run(self, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = [*self.compose, "-p", self.project, "-f", str(COMPOSE_FILE), *args]
        return run(command, timeout=timeout, check=check, env=self.env)

    def project_containers(self) -> dict[str, str]:
        """service -> container id, of every container of this project (running or not), from the labels both
        podman-compose and docker compose set."""
        out = run([*self.engine, "ps", "--all", "--filter", f"label=com.docker.compose.project={self.project}",
                   "--format", '{{.ID}} {{index .Labels "com.docker.compose.service"}}'])  # fmt: skip
        return {service: cid for cid, service in (line.split() for line in out.stdout.splitlines() if line.strip())}

    def published(self, service: str, port: int) -> str:
        """``http://host:port`` of a container port as published on this machine."""
        out = run([*self.engine, "port", self.containers[service], f"{port}/tcp"])
        host, _, host_port = out.stdout.splitlines()[0].strip().rpartition(":")
        return f"http://{host.replace('0.0.0.0', '127.0.0.1')}:{host_port}"

    def state(self, service: str) -> dict[str, Any]:
        out = run([*self.engine, "inspect", "--format", "{{json .State}}", self.containers[service]])
        return dict(json.loads(out.stdout))

    def logs(self) -> str:
        parts = []
        for service, cid in self.containers.items():
            out = run([*self.engine, "logs", "--tail", "40", cid], check=False)
            parts.append(f"--- {service} ---\n{out.stdout}{out.stderr}")
        return "\n".join(parts)


def image_present(engine: list[str], image: str) -> bool:
    return run([*engine, "image", "inspect", image], check=False).returncode == 0


def compose_version(compose: list[str]) -> str:
    """``podman-compose 1.0.3``, ``docker compose 2.29.1``: from the line of ``version`` that names it (podman-compose
    1.0 prints podman's version around its own, and misspells its name)."""
    out = run([*compose, "version"], check=False)
    found = re.search(r"compose\w*\s+version\s+v?(\S+)", out.stdout + out.stderr, flags=re.IGNORECASE)
    return f"{' '.join(compose)} {found.group(1) if found else '?'}"


def engine_version(engine: list[str]) -> str:
    return run([*engine, "--version"], check=False).stdout.strip() or "?"


# -- Prometheus's HTTP API --------------------------------------------------------------------------------------------


def api(base: str, path: str, **params: str) -> Any:
    body = httpx.get(f"{base}{path}", params=params, timeout=10).json()
    assert body.get("status") == "success", f"{path} {params}: {body}"
    return body["data"]


def query(base: str, expr: str) -> list[dict[str, Any]]:
    return list(api(base, "/api/v1/query", query=expr)["result"])


def wait_until(what: str, budget_s: float, probe: Any, interval_s: float = 0.25) -> Any:
    """Calls ``probe`` until it returns something true (HTTP errors count as not yet); fails after ``budget_s``."""
    deadline = time.monotonic() + budget_s
    last: Any = None
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError, AssertionError):
            last = probe()
            if last:
                return last
        time.sleep(interval_s)
    raise AssertionError(f"{what}: not within {budget_s:g} s (last: {last!r})")


# -- the stack -------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest) -> Iterator[Stack]:
    compose, engine = compose_tools()
    images = {
        "SERVE_IMAGE": os.environ.get("SERVE_IMAGE", ""),
        "PROMETHEUS_IMAGE": os.environ.get("PROMETHEUS_IMAGE", ""),
    }
    for variable, image in images.items():
        if not image or not image_present(engine, image):
            pytest.skip(f"{variable}={image!r} is not an image here: `make compose-test` builds both")
    env = {**os.environ, **images, **dict.fromkeys(PORT_VARIABLES, "")}
    project = f"odetoode-compose-test-{os.getpid()}"
    started = time.monotonic()
    running = Stack(compose, engine, project, env, started)
    try:
        running.compose_run("up", "-d", "--no-build", *SERVICES)
        running.containers = running.project_containers()
        assert sorted(running.containers) == sorted(SERVICES), running.containers
        running.results.update(
            what="make compose-test (tests/deploy/test_compose_live.py)",
            date=datetime.now(UTC).strftime("%Y-%m-%d"),
            machine=f"{platform.machine()}, {os.cpu_count()} CPUs",
            compose=compose_version(compose),
            engine=engine_version(engine),
            images=images,
            services=list(SERVICES),
            up_s=round(time.monotonic() - started, 2),
        )
        yield running
    finally:
        if request.session.testsfailed and running.containers:
            say(request, running.logs().splitlines())
        with contextlib.suppress(Exception):
            running.compose_run("down", timeout=120, check=False)
        # podman-compose 1.0 leaves the project's network behind
        run([*engine, "network", "rm", "-f", f"{project}_default"], check=False)


def test_the_server_answers_on_its_published_port(stack: Stack) -> None:
    base = stack.published("server", 8000)
    wait_until("server ready", SCRAPED_WITHIN_S, lambda: httpx.get(f"{base}/v2/health/ready", timeout=2).is_success)
    stack.results["start_to_server_ready_s"] = round(time.monotonic() - stack.started, 2)
    for model in BUNDLED:
        assert httpx.get(f"{base}/v2/models/{model}/ready", timeout=10).status_code == 200, model


def test_prometheus_scrapes_the_server_inside_the_stack(stack: Stack) -> None:
    base = stack.published("prometheus", 9090)
    wait_until("prometheus ready", SCRAPED_WITHIN_S, lambda: httpx.get(f"{base}/-/ready", timeout=2).status_code == 200)
    stack.results["start_to_prometheus_ready_s"] = round(time.monotonic() - stack.started, 2)
    build = api(base, "/api/v1/status/buildinfo")
    stack.results["prometheus"] = f"{build['version']} ({build.get('revision', '?')})"

    def scraped() -> list[dict[str, Any]]:
        targets = api(base, "/api/v1/targets")["activeTargets"]
        up = [t for t in targets if t["labels"].get("instance") == TARGET and t["health"] == "up"]
        return up and query(base, f'odetoode_build_info{{instance="{TARGET}"}}')

    wait_until(f"{TARGET} scraped", SCRAPED_WITHIN_S, scraped)
    stack.results["start_to_scraped_s"] = round(time.monotonic() - stack.started, 2)
    (target,) = [t for t in api(base, "/api/v1/targets")["activeTargets"] if t["labels"].get("instance") == TARGET]
    ups = query(base, f'up{{instance="{TARGET}"}}[5m]')
    samples = [float(v) for _, v in ups[0]["values"]] if ups else []
    stack.results["target"] = {
        "instance": TARGET,
        "job": target["labels"]["job"],
        "health": target["health"],
        "scrape_interval": target.get("scrapeInterval", "15s"),
        "scrapes_down_before_up": samples.index(1.0) if 1.0 in samples else None,
    }
    assert target["labels"]["job"] == "odetoode" and target["health"] == "up", target

    names = query(base, f'count by (__name__) ({{__name__=~"odetoode_.+", instance="{TARGET}"}})')
    families = sorted(n["metric"]["__name__"] for n in names)
    ready = query(base, f'odetoode_server_ready{{instance="{TARGET}"}}')
    models = query(base, f'odetoode_model_state{{instance="{TARGET}", state="READY"}} == 1')
    stack.results["series"] = {
        "odetoode_metric_names": len(families),
        "odetoode_server_ready": [float(r["value"][1]) for r in ready],
        "models_ready": sorted(r["metric"]["model"] for r in models),
    }
    assert "odetoode_build_info" in families and "odetoode_model_state" in families, families
    assert [float(r["value"][1]) for r in ready] == [1.0], ready
    assert sorted(r["metric"]["model"] for r in models) == BUNDLED, models


def test_the_shipped_rules_are_loaded_and_evaluated(stack: Stack) -> None:
    base = stack.published("prometheus", 9090)
    shipped = yaml.safe_load(RULES.read_text())["groups"]
    expected = {g["name"]: sorted(r.get("alert") or r["record"] for r in g["rules"]) for g in shipped}

    def evaluated() -> list[dict[str, Any]]:
        groups = api(base, "/api/v1/rules")["groups"]
        done = groups and all(r.get("health") == "ok" for g in groups for r in g["rules"])
        return groups if done else []

    # every rule evaluated once: within one evaluation interval (15 s) of Prometheus's start, plus slack
    groups = wait_until("every rule evaluated", SCRAPED_WITHIN_S, evaluated, interval_s=1.0)
    loaded = {g["name"]: sorted(r["name"] for r in g["rules"]) for g in groups}
    assert loaded == expected
    assert {g["file"] for g in groups} == {"/etc/prometheus/odetoode-rules.yaml"}, {g["file"] for g in groups}
    alerts = api(base, "/api/v1/alerts")["alerts"]
    firing = sorted(a["labels"]["alertname"] for a in alerts if a["state"] == "firing")
    stack.results["rules"] = {
        "file": groups[0]["file"],
        "groups": len(groups),
        "recording": sum(r["type"] == "recording" for g in groups for r in g["rules"]),
        "alerting": sum(r["type"] == "alerting" for g in groups for r in g["rules"]),
        "health": "ok",
        "firing": firing,
        "pending": sorted(a["labels"]["alertname"] for a in alerts if a["state"] == "pending"),
    }
    assert firing == [], alerts


def test_the_stack_stops_and_goes_away(stack: Stack, request: pytest.FixtureRequest) -> None:
    started = time.monotonic()
    run([*stack.engine, "stop", "--time", str(STOP_GRACE_S), *stack.containers.values()], timeout=STOP_GRACE_S + 60)
    stopped_s = time.monotonic() - started
    server = stack.state("server")
    stack.compose_run("down", timeout=120)
    run([*stack.engine, "network", "rm", "-f", f"{stack.project}_default"], check=False)
    left = stack.project_containers()
    stack.results["teardown"] = {"stop_s": round(stopped_s, 2), "server_exit_code": server.get("ExitCode"),
                                 "containers_left": len(left)}  # fmt: skip
    assert server.get("ExitCode") == 0, server
    assert left == {}, left
    results = stack.results
    lines = [
        f"compose: {results['compose']}; {results['engine']}; Prometheus {results.get('prometheus')}",
        f"after `up`: containers created {results['up_s']} s, server ready {results.get('start_to_server_ready_s')} s,"
        f" Prometheus ready {results.get('start_to_prometheus_ready_s')} s, {TARGET} scraped with data"
        f" {results.get('start_to_scraped_s')} s ({results.get('target', {}).get('scrapes_down_before_up')} scrape(s)"
        " down first)",
    ]
    complete = all(results.get(k) for k in ("start_to_scraped_s", "target", "series", "rules"))
    if RESULTS and complete:
        path = Path(RESULTS) if Path(RESULTS).is_absolute() else ROOT / RESULTS
        path.write_text(json.dumps(results, indent=2) + "\n")
        lines.append(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    say(request, lines)


def say(request: pytest.FixtureRequest, lines: list[str]) -> None:
    """Lines on the terminal even under capture (the figures of an opt-in run, the containers' logs on failure)."""
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or capture is None:
        return
    with capture.global_and_fixture_disabled():
        reporter.ensure_newline()
        for line in lines:
            reporter.write_line(line)
