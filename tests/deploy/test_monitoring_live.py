"""The monitoring that ships, run for real (``make monitoring-test``; opt-in: RUN_MONITORING=1).

Three real servers (``python -m service`` on ephemeral ports) and a real Prometheus (Debian's, installed with apt-get
when ``prometheus``/``promtool`` are missing; the test skips and says why when it cannot be had):

* ``main`` serves a repository made to trip every alert but one: ``policy`` (healthy), ``fragile`` (fails at run
  time on half of its requests: error ratio), ``slow`` (a 200 ms batching delay: p99 over the 100 ms objective),
  ``queued`` (a 300 ms delay and ``max_queue_size: 8``, kept full by 8 clients: queue near its bound), ``fallback``
  (``providers: [cuda]`` with ``allow_cpu_fallback: true`` on this CPU-only build), ``broken`` (not an ONNX file:
  failed load) and ``tampered`` (a weight changed: golden self-check);
* ``empty`` has an empty repository (no ready model);
* ``auth`` has authentication covering metrics (``--auth-open-metrics false``): scraped on REST /metrics with a
  bearer token, as deploy/monitoring/prometheus-auth.yml shows.

Prometheus runs deploy/monitoring/prometheus.yml and prometheus-auth.yml's scrape jobs with their targets replaced by
the servers' ports, scraping and evaluating every ``SCRAPE_S`` (1 s) instead of 15 s. The shipped rules are loaded
with every ``for`` scaled by the same ratio (1/15: 5m -> 20 s, 2m -> 8 s, 1m -> 4 s); thresholds and rate windows are
the shipped ones. Asserted through Prometheus's HTTP API: every target up; every panel query of the Grafana dashboard
(variables at "All", ``$__rate_interval`` as Grafana computes it for a 1 s scrape) returns data; every recording rule
records series and every rule evaluates without error; every alert reaches ``firing`` within its scaled ``for`` plus
two evaluation intervals of becoming pending, and within that plus the scrapes it needs (``DETECT_S``) of what
triggered it (the server's first scrape for states -- Prometheus scrapes first about 5 s after it starts, when its
target discovery first syncs --, traffic start, the server's exit for the target-down alert), and none fires for the
healthy model. ``promtool check rules`` and ``promtool test rules`` pass on the shipped, unscaled files.

``make monitoring-test`` sets MONITORING_RESULTS=docs/results/monitoring.json: the figures (seconds to firing per
alert, panels and rules checked) are written there after a complete run, and printed as a table either way.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import re
import shutil
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from odetoode.testing.clients import observation_json
from odetoode.testing.models import add_garbage, add_policy, add_runtime_failure
from odetoode.testing.servers import ServerProcess, server_process

pytestmark = pytest.mark.monitoring

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "deploy" / "monitoring"
DASHBOARD = ROOT / "deploy" / "grafana" / "odetoode-dashboard.json"
SCRAPE_S = 1.0
"""Scrape and rule-evaluation interval here."""
SHIPPED_S = 15.0
"""The shipped configuration's (deploy/monitoring/prometheus.yml, the ServiceMonitor)."""
FOR_SCALE = SCRAPE_S / SHIPPED_S
RATE_INTERVAL = "16s"
"""Grafana's ``$__rate_interval``: max(``$__interval`` + scrape interval, 4 x scrape interval), with a 1 s scrape
interval on the data source and the 15 s ``$__interval`` of a 1 h panel."""
POLL_S = 0.25
"""How often the alerts are read from Prometheus."""
DETECT_S = 3 * SCRAPE_S
"""From a trigger to its condition holding in Prometheus: the scrapes a rate needs (two samples after the change)."""
TOKEN = "monitoring-test-token"
RESULTS = os.environ.get("MONITORING_RESULTS")

SLOW_DELAY_US, QUEUED_DELAY_US, QUEUE_BOUND = 200_000, 300_000, 8


# -- tools ----------------------------------------------------------------------------------------------------------


def _found(name: str) -> str | None:
    override = os.environ.get(name.upper())
    return override if override and Path(override).is_file() else shutil.which(name)


def prometheus_tools() -> tuple[str, str]:
    """(prometheus, promtool): found ($PROMETHEUS/$PROMTOOL, PATH), else installed from Debian (apt-get install
    prometheus); skips the module with the reason when neither works."""
    prometheus, promtool = _found("prometheus"), _found("promtool")
    if prometheus and promtool:
        return prometheus, promtool
    if shutil.which("apt-get") is None:
        pytest.skip("prometheus/promtool not installed, and no apt-get to install them (Debian package: prometheus)")
    if os.geteuid() != 0:
        pytest.skip("prometheus/promtool not installed; as root, this test would apt-get install prometheus")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update"], ["apt-get", "install", "-y", "--no-install-recommends", "prometheus"]):
        out = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
        if out.returncode != 0:
            pytest.skip(f"{' '.join(command)} failed: {(out.stderr or out.stdout).strip()[-500:]}")
    prometheus, promtool = _found("prometheus"), _found("promtool")
    if not (prometheus and promtool):
        pytest.skip("apt-get install prometheus did not provide prometheus and promtool")
    return prometheus, promtool


def seconds(duration: str) -> float:
    """A Prometheus duration (``5m``, ``90s``, ``1h30m``) in seconds."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
    parts = re.findall(r"(\d+)(ms|s|m|h|d)", duration)
    if not parts or "".join(n + u for n, u in parts) != duration:
        raise ValueError(f"not a duration: {duration!r}")
    return sum(int(n) * units[u] for n, u in parts)


def scaled_rules(target: Path) -> dict[str, tuple[str, float]]:
    """Writes the shipped rules with every ``for`` scaled by FOR_SCALE (whole seconds, at least one evaluation) to
    ``target``; returns {alert: (shipped for, scaled seconds)}."""
    rules = yaml.safe_load((MONITORING / "odetoode-rules.yaml").read_text())
    fors = {}
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "alert" in rule:
                shipped = rule.get("for", "0s")
                scaled = max(SCRAPE_S, math.ceil(seconds(shipped) * FOR_SCALE))
                rule["for"] = f"{scaled:g}s"
                fors[rule["alert"]] = (shipped, scaled)
    target.write_text(yaml.safe_dump(rules, sort_keys=False))
    return fors


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- the repository -------------------------------------------------------------------------------------------------


def tampered_policy(repository: Path, name: str) -> None:
    """A policy whose weights changed after export: it loads, and fails its golden self-check."""
    import onnx
    from onnx import numpy_helper

    path = add_policy(repository, name, 1)
    model = onnx.load(str(path))
    weight = next(t for t in model.graph.initializer if t.name.endswith("weight_t"))
    weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight) * 1.5, weight.name))
    onnx.save_model(model, str(path))


def alerting_repository(root: Path) -> Path:
    add_policy(root, "policy", 1, seed=0)
    add_runtime_failure(root, "fragile")
    add_policy(root, "slow", 1, seed=1, serving_config={"max_queue_delay_us": SLOW_DELAY_US})
    add_policy(root, "queued", 1, seed=2,
               serving_config={"max_queue_delay_us": QUEUED_DELAY_US, "max_queue_size": QUEUE_BOUND})  # fmt: skip
    add_policy(root, "fallback", 1, seed=3, serving_config={"providers": ["cuda"], "allow_cpu_fallback": True})
    add_garbage(root, "broken")
    tampered_policy(root, "tampered")
    return root


# -- Prometheus ------------------------------------------------------------------------------------------------------


@dataclass
class Prometheus:
    process: subprocess.Popen[bytes]
    url: str
    version: str

    def get(self, path: str, **params: Any) -> Any:
        response = httpx.get(f"{self.url}{path}", params=params, timeout=10)
        body = response.json()
        assert body.get("status") == "success", f"{path} {params}: {body}"
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.get("/api/v1/query", query=expr)
        assert data["resultType"] == "vector", expr
        return list(data["result"])


def start_prometheus(binary: str, config: Path, data: Path, log: Path) -> Prometheus:
    port = free_port()
    version = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    with log.open("wb") as out:
        process = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={data}", "--storage.tsdb.retention.time=1h",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"prometheus exited {process.returncode}:\n{log.read_text()[-3000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/-/ready", timeout=1).status_code == 200:
                return Prometheus(process, url, version)
        time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"prometheus not ready within 30 s:\n{log.read_text()[-3000:]}")


@dataclass
class AlertSeen:
    """One alert (name and labels) as first seen pending and firing, in wall-clock seconds."""

    labels: dict[str, str]
    active_at: float
    pending_seen: float | None = None
    firing_seen: float | None = None


class AlertWatch:
    """Reads /api/v1/alerts every POLL_S in a thread and keeps when each alert was first seen in each state."""

    def __init__(self, prometheus: Prometheus) -> None:
        self.prometheus = prometheus
        self.seen: dict[tuple[str, frozenset[tuple[str, str]]], AlertSeen] = {}
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.errors: list[str] = []
        self.thread = threading.Thread(target=self._run, name="alert-watch", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.wait(POLL_S):
            try:
                alerts = self.prometheus.get("/api/v1/alerts")["alerts"]
            except Exception as e:  # reported by the tests, never lost in the thread
                self.errors.append(repr(e))
                continue
            now = time.time()
            with self.lock:
                for alert in alerts:
                    labels = dict(alert["labels"])
                    key = (labels["alertname"], frozenset(labels.items()))
                    entry = self.seen.setdefault(key, AlertSeen(labels, _epoch(alert["activeAt"])))
                    if alert["state"] == "pending" and entry.pending_seen is None:
                        entry.pending_seen = now
                    if alert["state"] == "firing" and entry.firing_seen is None:
                        entry.firing_seen = now

    def first_firing(self, name: str, match: dict[str, str]) -> AlertSeen | None:
        with self.lock:
            fired = [e for (n, _), e in self.seen.items() if n == name and e.firing_seen is not None
                     and all(e.labels.get(k) == v for k, v in match.items())]  # fmt: skip
        return min(fired, key=lambda e: e.firing_seen or 0.0, default=None)

    def firing(self) -> list[AlertSeen]:
        with self.lock:
            return [e for e in self.seen.values() if e.firing_seen is not None]

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)


def _epoch(rfc3339: str) -> float:
    # Prometheus writes nanoseconds; datetime takes microseconds
    text = re.sub(r"(\.\d{6})\d*", r"\1", rfc3339.replace("Z", "+00:00"))
    return datetime.fromisoformat(text).timestamp()


# -- traffic ---------------------------------------------------------------------------------------------------------


class Traffic:
    """Clients in threads, each calling one model over REST in a loop until stopped; statuses counted per model."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.stop = threading.Event()
        self.statuses: Counter[tuple[str, int]] = Counter()
        self.lock = threading.Lock()
        self.threads: list[threading.Thread] = []

    def add(self, model: str, clients: int, pause_s: float, values: Callable[[int], float]) -> None:
        for c in range(clients):
            thread = threading.Thread(target=self._client, args=(model, pause_s, values), name=f"{model}-{c}")
            self.threads.append(thread)

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def _client(self, model: str, pause_s: float, values: Callable[[int], float]) -> None:
        with httpx.Client(base_url=self.base, timeout=10) as client:
            i = 0
            while not self.stop.is_set():
                try:
                    body = observation_json(value=values(i))
                    status = client.post(f"/v2/models/{model}/infer", json=body).status_code
                except httpx.HTTPError:
                    status = 0
                with self.lock:
                    self.statuses[model, status] += 1
                i += 1
                self.stop.wait(pause_s)

    def close(self) -> None:
        self.stop.set()
        for thread in self.threads:
            if thread.ident is not None:  # started
                thread.join(15)

    def summary(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        with self.lock:
            for (model, status), n in sorted(self.statuses.items()):
                out.setdefault(model, {})[str(status)] = n
        return out


# -- the stack -------------------------------------------------------------------------------------------------------


@dataclass
class Stack:
    tools: tuple[str, str]
    servers: dict[str, ServerProcess]
    prometheus: Prometheus
    watch: AlertWatch
    traffic: Traffic
    fors: dict[str, tuple[str, float]]
    triggers: dict[str, float]
    instances: dict[str, str]
    results: dict[str, Any] = field(default_factory=dict)

    def named(self, labels: dict[str, str]) -> dict[str, str]:
        """``labels`` with an ``instance`` (an ephemeral port) given as the server's name (main, empty, auth)."""
        roles = {instance: role for role, instance in self.instances.items()}
        return {k: f"{roles.get(v, v)} server" if k == "instance" else v for k, v in labels.items()}


@pytest.fixture(scope="module")
def tools() -> tuple[str, str]:
    return prometheus_tools()


@pytest.fixture(scope="module")
def stack(tools: tuple[str, str], tmp_path_factory: pytest.TempPathFactory,
          request: pytest.FixtureRequest) -> Iterator[Stack]:  # fmt: skip
    tmp = tmp_path_factory.mktemp("monitoring")
    repository = alerting_repository(tmp / "models")
    empty = tmp / "empty"
    empty.mkdir()
    auth_repository = tmp / "auth-models"
    add_policy(auth_repository, "policy", 1)
    tokens = tmp / "tokens"
    tokens.write_text(f"{TOKEN}\n")
    common = (
        "--model-control-mode",
        "none",
        "--bulk-workers",
        "1",
    )  # INFO: server_process reads the ports from the log

    with contextlib.ExitStack() as exits:
        servers = {
            "main": exits.enter_context(server_process(repository, *common)),
            "empty": exits.enter_context(server_process(empty, *common)),
            "auth": exits.enter_context(server_process(
                auth_repository, *common, "--auth-token-file", str(tokens), "--auth-open-metrics", "false")),
        }  # fmt: skip
        instances = {
            "main": f"127.0.0.1:{servers['main'].metrics_port}",
            "empty": f"127.0.0.1:{servers['empty'].metrics_port}",
            "auth": f"127.0.0.1:{servers['auth'].http_port}",
        }
        fors = scaled_rules(tmp / "odetoode-rules.yaml")
        config = prometheus_config(instances, tmp / "odetoode-rules.yaml", tokens)
        (tmp / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
        prometheus = start_prometheus(tools[0], tmp / "prometheus.yml", tmp / "data", tmp / "prometheus.log")
        exits.callback(_stop, prometheus.process)
        triggers = {"prometheus start": time.time()}
        watch = AlertWatch(prometheus)
        exits.callback(watch.close)
        traffic = Traffic(servers["main"].http)
        traffic.add("policy", 1, 0.05, lambda i: 0.1)
        traffic.add("fragile", 1, 0.1, lambda i: 25.0 if i % 2 else 0.1)  # every other request fails
        traffic.add("slow", 4, 0.0, lambda i: 0.1)
        traffic.add("queued", QUEUE_BOUND, 0.0, lambda i: 0.1)
        exits.callback(traffic.close)
        running = Stack(tools, servers, prometheus, watch, traffic, fors, triggers, instances)
        running.results.update(
            prometheus=prometheus.version,
            scrape_interval_s=SCRAPE_S,
            evaluation_interval_s=SCRAPE_S,
            for_scale=f"1/{SHIPPED_S / SCRAPE_S:g}",
            rate_interval=RATE_INTERVAL,
            machine=f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        )
        yield running
        running.results["traffic"] = traffic.summary()
        report(request, running)


def prometheus_config(instances: dict[str, str], rules: Path, tokens: Path) -> dict[str, Any]:
    """deploy/monitoring/prometheus.yml with the servers as targets, every SCRAPE_S, the scaled rules; and the job of
    prometheus-auth.yml, renamed ``odetoode-auth``, for the server whose metrics need a token."""
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    interval = f"{SCRAPE_S:g}s"
    config["global"].update(scrape_interval=interval, scrape_timeout=interval, evaluation_interval=interval)
    config["rule_files"] = [str(rules)]
    (job,) = config["scrape_configs"]
    job["static_configs"] = [{"targets": [instances["main"], instances["empty"]]}]
    (auth_job,) = yaml.safe_load((MONITORING / "prometheus-auth.yml").read_text())["scrape_configs"]
    auth_job["job_name"] = "odetoode-auth"
    auth_job["authorization"]["credentials_file"] = str(tokens)
    auth_job["static_configs"] = [{"targets": [instances["auth"]]}]
    config["scrape_configs"].append(auth_job)
    return config


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def expected_alerts(stack: Stack) -> dict[str, tuple[str, dict[str, str]]]:
    """alert -> (what triggers it, the labels it must fire with). Every shipped alert is here."""
    main, empty = stack.instances["main"], stack.instances["empty"]
    return {
        "OdetoodeModelLoadFailed": ("first scrape", {"instance": main, "model": "broken", "reason": "invalid_model"}),
        "OdetoodeModelGoldenCheckFailed": ("first scrape", {"instance": main, "model": "tampered"}),
        "OdetoodeCPUFallback": ("first scrape", {"instance": main, "model": "fallback"}),
        "OdetoodeNoReadyModel": ("first scrape", {"instance": empty}),
        "OdetoodeHighErrorRatio": ("traffic", {"model": "fragile"}),
        "OdetoodeLatencyP99High": ("traffic", {"model": "slow"}),
        "OdetoodeQueueNearBound": ("traffic", {"instance": main, "model": "queued"}),
        "OdetoodeTargetDown": ("server stopped", {"instance": main}),
    }


def wait_for_alerts(stack: Stack, names: list[str], budget_s: float) -> None:
    """Records each alert of ``names`` in ``stack.results["alerts"]`` once it fires (or after ``budget_s``)."""
    expected = expected_alerts(stack)
    deadline = time.monotonic() + budget_s
    pending = list(names)
    while pending and time.monotonic() < deadline:
        for name in list(pending):
            trigger, labels = expected[name]
            seen = stack.watch.first_firing(name, labels)
            if seen is not None and seen.firing_seen is not None:
                shipped, scaled = stack.fors[name]
                stack.results.setdefault("alerts", {})[name] = {
                    "labels": stack.named(
                        {k: v for k, v in seen.labels.items() if k in ("model", "instance", "reason")}
                    ),
                    "for": shipped,
                    "for_scaled_s": scaled,
                    "trigger": trigger,
                    "fired_after_trigger_s": round(seen.firing_seen - stack.triggers[trigger], 2),
                    "pending_to_firing_s": round(seen.firing_seen - seen.active_at, 2),
                    "bound_s": scaled + 2 * SCRAPE_S + DETECT_S + POLL_S,
                }
                pending.remove(name)
        time.sleep(POLL_S)


# -- tests -----------------------------------------------------------------------------------------------------------


def test_promtool_passes_on_the_shipped_rules(tools: tuple[str, str], tmp_path: Path) -> None:
    """``promtool check rules`` on the rules file and on the PrometheusRule's groups; ``promtool test rules`` on the
    unit tests of the shipped (unscaled) rules."""
    promtool = tools[1]
    manifest = yaml.safe_load((ROOT / "deploy" / "components" / "monitoring" / "prometheusrule.yaml").read_text())
    operator_groups = tmp_path / "prometheusrule-groups.yaml"
    operator_groups.write_text(yaml.safe_dump(manifest["spec"]))
    check = subprocess.run([promtool, "check", "rules", "odetoode-rules.yaml", str(operator_groups)],
                           capture_output=True, text=True, cwd=MONITORING)  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr
    found = [int(n) for n in re.findall(r"SUCCESS: (\d+) rules found", check.stdout)]
    unit = subprocess.run([promtool, "test", "rules", "odetoode-rules.test.yaml"], capture_output=True, text=True,
                          cwd=MONITORING)  # fmt: skip
    assert unit.returncode == 0, unit.stdout + unit.stderr
    tests = yaml.safe_load((MONITORING / "odetoode-rules.test.yaml").read_text())["tests"]
    assert len(found) == 2 and found[0] == found[1] > 0
    PROMTOOL.update(check_rules=f"SUCCESS, {found[0]} rules (rules file and PrometheusRule)",
                    test_rules=f"SUCCESS, {len(tests)} test groups")  # fmt: skip


PROMTOOL: dict[str, str] = {}
"""What the promtool test found, for the results (it runs before the stack exists)."""


def test_every_target_is_up_including_the_one_behind_a_token(stack: Stack) -> None:
    deadline = time.monotonic() + 20
    targets: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        targets = stack.prometheus.get("/api/v1/targets", state="active")["activeTargets"]
        if len(targets) == 3 and all(t["health"] == "up" for t in targets):
            break
        time.sleep(POLL_S)
    # the state alerts count from here: the first scrape that saw the servers (polled every POLL_S, so this is it or
    # the one after)
    stack.triggers["first scrape"] = max(_epoch(t["lastScrape"]) for t in targets)
    health = {t["labels"]["instance"]: (t["labels"]["job"], t["health"], t["lastError"]) for t in targets}
    assert health == {
        stack.instances["main"]: ("odetoode", "up", ""),
        stack.instances["empty"]: ("odetoode", "up", ""),
        stack.instances["auth"]: ("odetoode-auth", "up", ""),
    }
    # the token is what lets Prometheus in: REST /metrics refuses a scrape without it
    assert httpx.get(f"{stack.servers['auth'].http}/metrics", timeout=5).status_code == 401
    info = stack.prometheus.query('odetoode_build_info{job="odetoode-auth"}')
    assert len(info) == 1 and info[0]["metric"]["version"]
    stack.results["targets"] = [
        {"job": job, **stack.named({"instance": instance}), "health": h} for instance, (job, h, _) in health.items()
    ]
    stack.results["auth_scrape"] = "REST /metrics with a bearer token: up; 401 without it"
    stack.results["promtool"] = dict(PROMTOOL)
    first_scrape_s = stack.triggers["first scrape"] - stack.triggers["prometheus start"]
    stack.results["prometheus_start_to_first_scrape_s"] = round(first_scrape_s, 2)
    stack.traffic.start()
    stack.triggers["traffic"] = time.time()


def test_every_alert_fires_within_its_for_plus_two_evaluations(stack: Stack) -> None:
    expected = expected_alerts(stack)
    assert set(expected) == set(stack.fors), "every shipped alert must be triggered here"
    live = [name for name, (trigger, _) in expected.items() if trigger != "server stopped"]
    budget = max(stack.fors[name][1] for name in live) + 2 * SCRAPE_S + DETECT_S + 30
    wait_for_alerts(stack, live, budget)
    assert stack.watch.errors == []
    assert sorted(stack.results.get("alerts", {})) == sorted(live), "did not fire (in time)"
    for name in live:
        figures = stack.results["alerts"][name]
        scaled = figures["for_scaled_s"]
        assert figures["pending_to_firing_s"] <= scaled + 2 * SCRAPE_S + POLL_S, (name, figures)
        assert figures["fired_after_trigger_s"] <= figures["bound_s"], (name, figures)
    # nothing about the healthy model, and the servers with a ready model are not said to have none
    firing = stack.watch.firing()
    assert [a.labels for a in firing if a.labels.get("model") == "policy"] == []
    no_ready = {a.labels["instance"] for a in firing if a.labels["alertname"] == "OdetoodeNoReadyModel"}
    assert no_ready == {stack.instances["empty"]}
    stack.results["also_firing"] = sorted(
        {f"{a.labels['alertname']} {a.labels.get('model', a.labels.get('instance', ''))}" for a in firing}
        - {f"{name} {labels.get('model', labels.get('instance', ''))}" for name, (_, labels) in expected.items()}
    )


def test_every_dashboard_panel_query_returns_data(stack: Stack) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    substitutions = {"$__rate_interval": RATE_INTERVAL, "$model": ".*", "$protocol": ".*"}
    panels, empty = [], []
    for panel in dashboard["panels"]:
        counts = []
        for target in panel.get("targets", []):
            expr = target["expr"]
            for variable, value in substitutions.items():
                expr = expr.replace(variable, value)
            assert "$" not in expr, expr
            counts.append(len(stack.prometheus.query(expr)))
            if counts[-1] == 0:
                empty.append(f"{panel['title']}: {expr}")
        panels.append({"title": panel["title"], "series": counts})
    variables = {}
    for variable in dashboard["templating"]["list"]:
        query = re.fullmatch(r"label_values\((\w+), (\w+)\)", variable.get("definition", ""))
        if query:
            values = stack.prometheus.get(f"/api/v1/label/{query[2]}/values", **{"match[]": query[1]})
            variables[variable["name"]] = sorted(values)
            if not values:
                empty.append(f"variable {variable['name']}: {variable['definition']}")
    assert empty == []
    assert all(counts for counts in (p["series"] for p in panels)), "a panel without a query"
    stack.results["panels"] = panels
    stack.results["variables"] = variables


def test_every_recording_rule_records_and_every_rule_is_healthy(stack: Stack) -> None:
    groups = stack.prometheus.get("/api/v1/rules")["groups"]
    rules = [r for g in groups for r in g["rules"]]
    unhealthy = [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"]
    assert unhealthy == []
    recorded = {r["name"]: len(stack.prometheus.query(r["name"])) for r in rules if r["type"] == "recording"}
    assert recorded and all(recorded.values()), recorded
    shipped = yaml.safe_load((MONITORING / "odetoode-rules.yaml").read_text())["groups"]
    assert sorted(g["name"] for g in groups) == sorted(g["name"] for g in shipped)
    assert len(rules) == sum(len(g["rules"]) for g in shipped)
    stack.results["rules"] = {
        "groups": len(groups),
        "recording": len(recorded),
        "alerting": sum(r["type"] == "alerting" for r in rules),
        "health": unhealthy or "ok",
    }
    stack.results["recording_rules"] = recorded


def test_target_down_fires_when_the_server_stops(stack: Stack) -> None:
    stack.traffic.close()
    assert stack.servers["main"].terminate() == 0
    stack.triggers["server stopped"] = time.time()
    name = "OdetoodeTargetDown"
    wait_for_alerts(stack, [name], stack.fors[name][1] + 2 * SCRAPE_S + DETECT_S + 30)
    figures = stack.results.get("alerts", {}).get(name)
    assert figures is not None, f"{name} did not fire"
    assert figures["pending_to_firing_s"] <= figures["for_scaled_s"] + 2 * SCRAPE_S + POLL_S, figures
    assert figures["fired_after_trigger_s"] <= figures["bound_s"], figures


# -- results ---------------------------------------------------------------------------------------------------------

SECTIONS = ("targets", "alerts", "panels", "recording_rules", "rules", "promtool")


def report(request: pytest.FixtureRequest, stack: Stack) -> None:
    """Prints the summary table; writes MONITORING_RESULTS when every section is there (a complete run)."""
    results = stack.results
    alerts = results.get("alerts", {})
    lines = [
        f"monitoring: {results['prometheus']}, scrape/evaluation every {SCRAPE_S:g} s, `for` x {results['for_scale']}",
        f"{'alert':<32} {'for':>4} {'scaled':>7} {'trigger':<15} {'to firing':>10} {'pending->firing':>16} "
        f"{'bound':>6}",
    ]
    for name in sorted(alerts, key=lambda n: alerts[n]["fired_after_trigger_s"]):
        a = alerts[name]
        lines.append(
            f"{name:<32} {a['for']:>4} {a['for_scaled_s']:>6g}s {a['trigger']:<15} {a['fired_after_trigger_s']:>9.2f}s "
            f"{a['pending_to_firing_s']:>15.2f}s {a['bound_s']:>5g}s"
        )
    if "panels" in results:
        queries = sum(len(p["series"]) for p in results["panels"])
        lines.append(f"dashboard: {len(results['panels'])} panels, {queries} queries, all with data; "
                     f"variables {sorted(results.get('variables', {}))}")  # fmt: skip
    if "rules" in results:
        r = results["rules"]
        lines.append(f"rules: {r['groups']} groups, {r['recording']} recording (series: "
                     f"{results['recording_rules']}), {r['alerting']} alerting, health {r['health']}")  # fmt: skip
    if "promtool" in results:
        lines.append(f"promtool: check rules {results['promtool'].get('check_rules')}; "
                     f"test rules {results['promtool'].get('test_rules')}")  # fmt: skip
    lines += [
        f"traffic (model: HTTP status counts): {results.get('traffic')}",
        f"also firing: {results.get('also_firing')}",
    ]
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():  # a module fixture's teardown is captured otherwise
            reporter.ensure_newline()
            for line in lines:
                reporter.write_line(line)
    if RESULTS and all(results.get(s) for s in SECTIONS) and len(alerts) == len(stack.fors):
        path = Path(RESULTS) if Path(RESULTS).is_absolute() else ROOT / RESULTS
        payload = {"what": "make monitoring-test (tests/deploy/test_monitoring_live.py)",
                   "date": datetime.now(UTC).strftime("%Y-%m-%d"), **results}  # fmt: skip
        path.write_text(json.dumps(payload, indent=2) + "\n")
        if reporter is not None and capture is not None:
            with capture.global_and_fixture_disabled():
                reporter.write_line(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
