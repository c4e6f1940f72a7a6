"""The Prometheus rules: generated from deploy/monitoring/rules.py and committed, so the files must be what the source
gives today (as the dashboard is checked against the server); the checks must notice when they are not; promtool,
where installed, accepts the rules and passes their unit tests. The live run is tests/deploy/test_monitoring_live.py.
"""

from __future__ import annotations

import copy
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def _checks() -> ModuleType:
    """deploy/checks/, loaded as deploy/check.py loads it (one shared copy of its modules)."""
    spec = importlib.util.spec_from_file_location("deploy_check", ROOT / "deploy" / "check.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["deploy_check"] = module
    spec.loader.exec_module(module)
    return module.load_checks()


checks = _checks()
rules, tools, renderings = checks.rules, checks.tools, checks.renderings
source = rules.rules_source()


def test_generated_files_are_up_to_date_and_read_exported_metrics() -> None:
    assert rules.check_rules() == []
    # what the alerts need the server to say is there, as states (increase() would miss a first failure)
    names = source.metric_names()
    assert {"odetoode_model_load_failed", "odetoode_model_cpu_fallback", "odetoode_server_ready"} <= names
    assert not any("increase(" in a.expr for a in source.ALERTS)


def test_the_check_notices_a_stale_file_and_an_unknown_metric(monkeypatch: pytest.MonkeyPatch) -> None:
    extra = source.Alert("OdetoodeMadeUp", "odetoode_no_such_metric > 0", "1m", "page", "s", "m", ("r",))
    alerts = (*source.ALERTS, extra)
    monkeypatch.setattr(source, "ALERTS", alerts)
    monkeypatch.setattr(source, "GROUPS", (source.GROUPS[0], ("odetoode.alerts", alerts)))
    problems = " | ".join(rules.check_rules())
    assert "odetoode-rules.yaml is stale" in problems
    assert "prometheusrule.yaml is stale" in problems
    assert "deploy.md is stale" in problems
    assert "odetoode_no_such_metric, which the server does not export" in problems
    assert "OdetoodeMadeUp: severity 'page'" in problems
    assert "OdetoodeMadeUp: no test in odetoode-rules.test.yaml expects it to fire" in problems


def test_rendered_prometheus_rules_hold_the_generated_groups_with_the_servicemonitor_labels() -> None:
    try:
        objects = copy.deepcopy(renderings.render("kustomize overlays/cpu"))
    except tools.ToolMissingError as e:
        pytest.skip(str(e))
    (rule,) = [o for o in objects if o["kind"] == "PrometheusRule"]
    assert rules.check_rendered_rules(objects) == []
    rule["spec"]["groups"][1]["rules"][0]["for"] = "10m"
    rule["metadata"]["labels"]["release"] = "prometheus"
    problems = " | ".join(rules.check_rendered_rules(objects))
    assert "its groups are not those of deploy/monitoring/rules.py" in problems
    assert "a Prometheus selecting one would miss the other" in problems


def test_the_rules_file_is_what_the_chart_and_the_component_ship() -> None:
    shipped = yaml.safe_load(source.RULES_FILE.read_text())
    component = yaml.safe_load(source.PROMETHEUS_RULE.read_text())
    assert shipped == {"groups": source.rule_groups()} == component["spec"]
    chart_copy = ROOT / "deploy" / "helm" / "odetoode" / "rules" / "odetoode-rules.yaml"
    assert chart_copy.is_symlink() and chart_copy.resolve() == source.RULES_FILE


def test_promtool_checks_the_rules_and_passes_their_unit_tests() -> None:
    try:
        tools.promtool()
    except tools.ToolMissingError as e:
        pytest.skip(str(e))
    assert rules.run_promtool() == []
