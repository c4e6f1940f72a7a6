"""Suite-wide options: slow tests run only with RUN_SLOW=1 (``make test-slow``)."""

from __future__ import annotations

import os

import pytest

import odetoode.telemetry_off  # noqa: F401  (turns ONNX Runtime's telemetry off before any test module imports it)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("RUN_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow: set RUN_SLOW=1 (make test-slow)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
