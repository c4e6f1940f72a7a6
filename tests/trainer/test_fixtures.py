"""The committed fixture models are exactly what the exporter makes today (``python -m trainer.fixtures``)."""

from __future__ import annotations

import pytest

from odetoode.testing.models import FIXTURES
from trainer.fixtures import RECIPES


def test_every_committed_fixture_has_a_recipe() -> None:
    assert sorted(p.name for p in FIXTURES.glob("*.onnx")) == sorted(RECIPES)


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_a_committed_fixture_is_what_the_exporter_makes(name: str) -> None:
    made = RECIPES[name]()
    assert made == (FIXTURES / name).read_bytes(), f"{name} drifted from the exporter: run python -m trainer.fixtures"
