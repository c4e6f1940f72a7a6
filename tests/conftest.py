"""Suite-wide options: slow tests run only with RUN_SLOW=1 (``make test-slow``); the live monitoring test (a real
Prometheus, installed from Debian when missing) only with RUN_MONITORING=1 (``make monitoring-test``); the Compose
stack test (containers) only with RUN_COMPOSE=1 (``make compose-test``)."""

from __future__ import annotations

import os

import pytest

import odetoode.telemetry_off  # noqa: F401  (turns ONNX Runtime's telemetry off before any test module imports it)

OPT_IN = {
    "slow": ("RUN_SLOW", "slow: set RUN_SLOW=1 (make test-slow)"),
    "monitoring": ("RUN_MONITORING", "live monitoring: set RUN_MONITORING=1 (make monitoring-test)"),
    "compose": ("RUN_COMPOSE", "the Compose stack: set RUN_COMPOSE=1 (make compose-test)"),
}
"""marker -> (the environment variable that must be 1 to run its tests, the reason given when they are skipped)."""


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "monitoring: real servers scraped by a real Prometheus, alerts made to fire; opt-in with "
        "`make monitoring-test` (RUN_MONITORING=1)",
    )
    config.addinivalue_line(
        "markers",
        "compose: docker/compose.yaml started with podman-compose and scraped inside the stack; opt-in with "
        "`make compose-test` (RUN_COMPOSE=1)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for marker, (variable, reason) in OPT_IN.items():
        if os.environ.get(variable) == "1":
            continue
        skip = pytest.mark.skip(reason=reason)
        for item in items:
            if marker in item.keywords:
                item.add_marker(skip)
