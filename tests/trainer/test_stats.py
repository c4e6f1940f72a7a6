"""The tables' statistics against independent oracles: scipy, numpy, textbook counts, a closed form, a simulation."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from trainer.experiments.stats import (
    mcnemar,
    mcnemar_p_value,
    mcnemar_power,
    mean_and_std,
    minimum_detectable_difference,
    verdict,
)


@pytest.mark.parametrize("values", [[0.91, 0.93, 0.92], [1.0, 2.0], [0.5, 0.5, 0.5, 0.7], list(range(10))])
def test_std_is_the_sample_std_of_numpy(values: list[float]) -> None:
    mean, std = mean_and_std(values)
    assert mean == pytest.approx(np.mean(values), abs=1e-15)
    assert std == pytest.approx(np.std(values, ddof=1), rel=1e-12)
    if len(values) == 3 and np.std(values) > 0:  # 3 seeds: ddof = 0 understates it by sqrt(2/3)
        assert np.std(values) / std == pytest.approx(math.sqrt(2 / 3))


def test_one_seed_has_no_spread_and_none_is_an_error() -> None:
    assert mean_and_std([0.9]) == (0.9, pytest.approx(math.nan, nan_ok=True))
    with pytest.raises(ValueError, match="at least one value"):
        mean_and_std([])


@pytest.mark.parametrize(("b", "c"), [(0, 1), (1, 9), (9, 1), (5, 5), (3, 12), (40, 20), (86, 150), (180, 181)])
def test_exact_p_value_is_scipys_binomial_test_on_the_discordant_pairs(b: int, c: int) -> None:
    expected = scipy_stats.binomtest(b, b + c, 0.5).pvalue
    assert mcnemar_p_value(b, c) == pytest.approx(expected, rel=1e-10)


def test_hand_checked_exact_p_values() -> None:
    # 1 vs 9 discordant: 2 (C(10,0) + C(10,1)) / 2^10 = 22 / 1024
    assert mcnemar_p_value(1, 9) == 22 / 1024
    assert mcnemar_p_value(0, 5) == 2 / 32  # five out of five discordant images: not significant at 0.05
    assert mcnemar_p_value(0, 6) == 2 / 64  # six is the fewest that can be
    assert mcnemar_p_value(4, 4) == 1.0
    assert mcnemar_p_value(0, 0) == 1.0


def test_continuity_corrected_chi_square_on_a_textbook_table() -> None:
    """Agresti, *Categorical Data Analysis*, Table 10.1 (presidential approval, two surveys of the same 1600 people):
    794 / 150 / 86 / 570. The discordant cells are 150 and 86; corrected statistic (|150 - 86| - 1)^2 / 236."""
    statistic = 63**2 / 236
    assert statistic == pytest.approx(16.818, abs=1e-3)
    assert mcnemar_p_value(150, 86, "chi2") == pytest.approx(scipy_stats.chi2.sf(statistic, df=1), rel=1e-10)
    assert mcnemar_p_value(150, 86, "exact") < 1e-4  # both agree this is far from chance
    assert mcnemar_p_value(7, 7, "chi2") == 1.0  # the correction never pushes an even split below p = 1
    with pytest.raises(ValueError, match="method must be one of"):
        mcnemar_p_value(1, 2, "z")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=">= 0"):
        mcnemar_p_value(-1, 2)


def test_mcnemar_counts_discordant_images_and_reduces_to_a_sign_test_over_seeds() -> None:
    a = np.array([1, 1, 1, 0, 0, 1, 1, 0], dtype=bool)
    b = np.array([1, 0, 0, 1, 0, 1, 0, 0], dtype=bool)
    test = mcnemar(a, b)
    assert (test.a_better, test.b_better, test.images, test.seeds) == (3, 1, 8, 1)
    assert test.p_value == mcnemar_p_value(3, 1) and test.discordance == 0.5
    # several seeds: per-image counts of correct seeds are compared, so an image counts once whatever the seeds do
    a2 = np.array([[1, 1, 0, 0], [1, 0, 0, 1], [1, 0, 1, 0]], dtype=bool)  # per image: 3, 1, 1, 1
    b2 = np.array([[0, 1, 0, 1], [0, 0, 1, 1], [1, 1, 0, 1]], dtype=bool)  # per image: 1, 2, 1, 3
    test2 = mcnemar(a2, b2)
    assert (test2.a_better, test2.b_better, test2.seeds) == (1, 2, 3)
    assert test2.p_value == pytest.approx(scipy_stats.binomtest(1, 3, 0.5).pvalue)
    with pytest.raises(ValueError, match="same images"):
        mcnemar(a, b[:5])
    with pytest.raises(ValueError, match="same number of seeds"):
        mcnemar(a2, b2[:2])


def test_verdicts() -> None:
    ones, zeros = np.ones(360, dtype=bool), np.zeros(360, dtype=bool)
    mostly = ones.copy()
    mostly[:30] = False
    assert mcnemar(ones, mostly).verdict() == "win"
    assert mcnemar(mostly, ones).verdict() == "loss"
    one_image = ones.copy()
    one_image[0] = False
    assert verdict(mcnemar(ones, one_image)) == "tie"  # one image of 360 (0.28 points) is no win
    assert verdict(mcnemar(zeros, zeros)) == "tie"
    assert verdict(mcnemar(ones, mostly), alpha=1e-12) == "tie"  # p = 2^-29 is not below 1e-12
    with pytest.raises(ValueError, match="alpha"):
        verdict(mcnemar(ones, mostly), alpha=0)


def test_power_agrees_with_a_simulation_of_whole_test_sets() -> None:
    """Draw the per-image outcomes of two models on 360 images (discordant with probability q, the discordant
    images favouring A with probability pi) and count how often the real test rejects."""
    rng = np.random.default_rng(0)
    n, trials = 360, 3000
    for q, d in ((0.05, 0.03), (0.2, 0.05), (0.1, 0.0)):
        p_a_only, p_b_only = (q + d) / 2, (q - d) / 2
        u = rng.random((trials, n))
        a_only, b_only = u < p_a_only, (u >= p_a_only) & (u < p_a_only + p_b_only)
        rejections = sum(mcnemar(a_only[t], b_only[t]).p_value <= 0.05 for t in range(trials))
        simulated, exact = rejections / trials, mcnemar_power(n, q, d)
        assert abs(simulated - exact) < 0.04, (q, d, simulated, exact)  # 3000 draws: MC std <= 0.009, m varies
    assert mcnemar_power(n, 0.1, 0.0) <= 0.05  # no difference: rejects at most alpha of the time (exact test)


@pytest.mark.parametrize("q", [0.05, 0.1, 0.2, 0.3])
def test_minimum_detectable_difference_matches_the_normal_closed_form(q: float) -> None:
    """Connor (1987): sqrt(n) d = z_{1-alpha/2} sqrt(q) + z_power sqrt(q - d^2), solved for d by fixed point."""
    n, alpha, power = 360, 0.05, 0.8
    z_a, z_b = scipy_stats.norm.ppf(1 - alpha / 2), scipy_stats.norm.ppf(power)
    d = 0.0
    for _ in range(100):
        d = (z_a * math.sqrt(q) + z_b * math.sqrt(q - d * d)) / math.sqrt(n)
    found = minimum_detectable_difference(n, q, alpha, power)
    assert found == pytest.approx(d, rel=0.12)
    assert mcnemar_power(n, q, found) >= power > mcnemar_power(n, q, found - 1e-3)
    assert 100 * found > 100 / 360  # one image is far below what the test can see


def test_power_grows_with_the_difference_and_a_few_discordant_images_detect_nothing() -> None:
    powers = [mcnemar_power(360, 0.1, d) for d in np.linspace(0, 0.1, 21)]
    assert all(later >= earlier - 1e-12 for earlier, later in itertools.pairwise(powers))
    assert minimum_detectable_difference(360, 5 / 360) == math.inf  # 5 discordant images can never reach p <= 0.05
    with pytest.raises(ValueError, match="cannot exceed"):
        mcnemar_power(360, 0.05, 0.1)
