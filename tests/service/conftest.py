from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from odetoode.testing.models import add_classifier, add_policy
from odetoode.testing.servers import RunningServer, running_server


@pytest.fixture(scope="session")
def model_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A read-only repository: ``policy`` (versions 1 and 2) and ``digits`` (version 1). Do not modify."""
    root = tmp_path_factory.mktemp("models")
    add_policy(root, "policy", 1, seed=1, serving_config={"version_policy": {"all": True}})
    add_policy(root, "policy", 2, seed=2)
    add_classifier(root, "digits", 1)
    return root


@pytest.fixture(scope="session")
def server(model_repo: Path) -> Iterator[RunningServer]:
    """A shared server over ``model_repo`` with the repository API on; tests must not change its state."""
    with running_server(model_repo, repository_api=True) as running:
        yield running
