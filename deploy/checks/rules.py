"""The Prometheus rules (deploy/monitoring/rules.py and the files it writes) against themselves and the server.

* the generated files (the rules file, the Kustomize PrometheusRule, the alert reference in docs/deploy.md) are what
  the source gives today;
* every metric a rule reads is one ``service.metrics.ServerMetrics`` exports, every alert has a severity the
  routing knows, a summary and a first response, and the promtool unit tests make every alert fire at least once;
* every rendered PrometheusRule (Kustomize, Helm) holds exactly the generated groups, with the labels of the
  ServiceMonitor beside it (a Prometheus whose selectors pick one must pick the other);
* ``promtool check rules`` and ``promtool test rules``, where promtool is installed (``tools.promtool``).
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

from .dashboard import exported_samples
from .layout import ROOT, RULES_SOURCE, RULES_TESTS
from .tools import promtool

SOURCE_MODULE = "odetoode_rules"
SEVERITIES = ("warning", "critical")


def rules_source() -> ModuleType:
    """deploy/monitoring/rules.py, imported by file location once per process (deploy/ is not a package)."""
    if SOURCE_MODULE in sys.modules:
        return sys.modules[SOURCE_MODULE]
    spec = importlib.util.spec_from_file_location(SOURCE_MODULE, RULES_SOURCE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[SOURCE_MODULE] = module  # dataclasses look their module up while the class is made
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[SOURCE_MODULE]
        raise
    return module


def check_rules() -> list[str]:
    """The generated files are up to date; the rules read exported metrics; each alert is complete and tested."""
    source = rules_source()
    problems = [
        f"{path.relative_to(ROOT)} is stale: run `make rules` (python deploy/monitoring/rules.py)"
        for path in source.stale()
    ]
    exported = exported_samples()
    for name in sorted(source.metric_names() - exported):
        problems.append(f"a rule reads {name}, which the server does not export")
    fired = _alerts_fired_in_unit_tests()
    for alert in source.ALERTS:
        if alert.severity not in SEVERITIES:
            problems.append(f"{alert.name}: severity {alert.severity!r} is not one of {SEVERITIES}")
        if not alert.summary or not alert.meaning or not alert.runbook:
            problems.append(f"{alert.name}: no summary, meaning or first response")
        if alert.name not in fired:
            problems.append(f"{alert.name}: no test in {RULES_TESTS.name} expects it to fire")
    return problems


def _alerts_fired_in_unit_tests() -> set[str]:
    tests = yaml.safe_load(RULES_TESTS.read_text())["tests"]
    return {t["alertname"] for group in tests for t in group.get("alert_rule_test", []) if t.get("exp_alerts")}


def check_rendered_rules(objects: tuple[dict[str, Any], ...]) -> list[str]:
    """Each PrometheusRule of one rendering holds the generated groups and the ServiceMonitor's labels."""
    problems: list[str] = []
    groups = rules_source().rule_groups()
    monitors = [o for o in objects if o.get("kind") == "ServiceMonitor"]
    for rule in (o for o in objects if o.get("kind") == "PrometheusRule"):
        name = rule["metadata"]["name"]
        if rule["spec"].get("groups") != groups:
            problems.append(f"PrometheusRule {name}: its groups are not those of deploy/monitoring/rules.py")
        labels = rule["metadata"].get("labels", {})
        for monitor in monitors:
            if monitor["metadata"].get("labels", {}) != labels:
                problems.append(
                    f"PrometheusRule {name} labels {labels} != ServiceMonitor {monitor['metadata']['name']} labels "
                    f"{monitor['metadata'].get('labels', {})}: a Prometheus selecting one would miss the other"
                )
    return problems


def run_promtool() -> list[str]:
    """``promtool check rules`` on the rules file and on the Kustomize PrometheusRule's groups, and ``promtool test
    rules`` on the unit tests; ToolMissingError without promtool."""
    tool = promtool()
    source = rules_source()
    problems: list[str] = []
    manifest = yaml.safe_load(source.PROMETHEUS_RULE.read_text())
    with tempfile.TemporaryDirectory() as tmp:
        operator_groups = Path(tmp) / "prometheusrule-groups.yaml"
        operator_groups.write_text(yaml.safe_dump(manifest["spec"]))
        runs = (["check", "rules", str(source.RULES_FILE), str(operator_groups)], ["test", "rules", RULES_TESTS.name])
        for args in runs:
            out = subprocess.run([tool, *args], capture_output=True, text=True, cwd=RULES_TESTS.parent)
            if out.returncode != 0:
                problems.append(f"promtool {' '.join(args[:2])} failed:")
                problems += [line for line in (out.stdout + out.stderr).splitlines() if line.strip()]
    return problems
