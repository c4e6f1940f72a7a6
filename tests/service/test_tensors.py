"""``float32_all_finite`` against its oracle, ``np.isfinite(...).all()``, on both sides of its size threshold."""

from __future__ import annotations

import numpy as np
import pytest

from service.tensors import SMALL_OBSERVATION, float32_all_finite

SPECIALS = (np.nan, np.inf, -np.inf, 0.0, -0.0, np.finfo(np.float32).max, -np.finfo(np.float32).max,
            np.finfo(np.float32).smallest_subnormal)  # fmt: skip


@pytest.mark.parametrize("size", [1, 2, 17, SMALL_OBSERVATION, SMALL_OBSERVATION + 1, 4096])
def test_float32_all_finite_agrees_with_numpy(size: int) -> None:
    rng = np.random.default_rng(size)
    for trial in range(300):
        with np.errstate(over="ignore"):  # magnitudes up to 1e38: a cast may overflow to infinity, one more case
            values = (rng.normal(size=size) * 10.0 ** rng.integers(-40, 39)).astype(np.float32)
        # sprinkle special values: none, one, or several (a NaN among infinities, +inf with -inf, extremes everywhere)
        for _ in range(trial % 4):
            values[rng.integers(size)] = rng.choice(SPECIALS)
        if trial % 50 == 0:
            values[:] = np.float32(SPECIALS[5 + trial % 2])  # the largest finite magnitude in every slot
        assert float32_all_finite(values) == bool(np.isfinite(values).all()), (size, trial)


def test_float32_all_finite_takes_any_shape() -> None:
    rows = np.ones((3, 5), np.float32)
    assert float32_all_finite(rows)
    rows[2, 4] = np.inf
    assert not float32_all_finite(rows)
