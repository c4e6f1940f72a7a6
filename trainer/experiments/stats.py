"""The statistics behind the supervised tables: spread over seeds, and a paired test between two classifiers.

Pure functions of counts and arrays (no I/O, no training), so every figure a table states can be recomputed from its
raw results file.

* ``mean_and_std``: mean and *sample* standard deviation (``ddof = 1``) over seeds. With 3 seeds the population
  formula (``ddof = 0``) understates the spread by a factor ``sqrt(2/3) = 0.82``.
* ``mcnemar``: McNemar's test between two models' predictions on the *same* test images, and ``verdict`` (win / tie /
  loss at level ``alpha``), which the tables use instead of "within one standard deviation". Two accuracies measured
  on the same 360 images are not independent samples: what tells the models apart is only the images on which they
  disagree, and McNemar's test looks at exactly those.
* ``mcnemar_power`` and ``minimum_detectable_difference``: how small a difference the test can see at all, so a table
  can print its floor beside its verdicts.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

Method = Literal["exact", "chi2"]
Verdict = Literal["win", "tie", "loss"]
METHODS: tuple[Method, ...] = ("exact", "chi2")


def mean_and_std(values: Sequence[float] | np.ndarray) -> tuple[float, float]:
    """Mean and sample standard deviation (``ddof = 1``) of ``values`` (e.g. one accuracy per seed).

    The standard deviation is NaN for a single value (one seed says nothing about the spread). Raises ``ValueError``
    for no values.
    """
    x = np.asarray(values, dtype=np.float64).ravel()
    if x.size == 0:
        raise ValueError("mean_and_std needs at least one value")
    mean = float(x.mean())
    if x.size == 1:
        return mean, math.nan
    return mean, float(math.sqrt(((x - mean) ** 2).sum() / (x.size - 1)))


def mcnemar_p_value(a_better: int, b_better: int, method: Method = "exact") -> float:
    """Two-sided p-value of McNemar's test from the discordant counts.

    ``a_better`` (McNemar's ``b``): images model A gets right and model B wrong; ``b_better`` (``c``): the reverse.
    Images both get right or both get wrong carry no information about which is better and do not enter.

    * ``"exact"``: under H0 (on a discordant image, either model is equally likely to be the one that is right) the
      split ``b`` of the ``m = b + c`` discordant images is ``Binomial(m, 1/2)``; the p-value is
      ``min(1, 2 P(X <= min(b, c)))``, which equals ``scipy.stats.binomtest(b, m, 0.5).pvalue`` (the binomial is
      symmetric). Computed in exact integer arithmetic.
    * ``"chi2"``: the continuity-corrected chi-square approximation ``(|b - c| - 1)^2 / (b + c)`` on 1 degree of
      freedom (Edwards 1948), for comparison with the literature; the correction is clipped at 0 so that ``b = c``
      gives ``p = 1``. It is poor below ~25 discordant images, where the exact test is the one to use.

    ``m = 0`` (the models agree everywhere) gives ``p = 1``. Raises ``ValueError`` for negative counts or an unknown
    method.
    """
    if a_better < 0 or b_better < 0:
        raise ValueError(f"discordant counts must be >= 0, got {a_better}, {b_better}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}")
    m = a_better + b_better
    if m == 0:
        return 1.0
    if method == "exact":
        k = min(a_better, b_better)
        tail = sum(math.comb(m, j) for j in range(k + 1))
        return min(1.0, 2 * tail / 2**m)
    statistic = max(abs(a_better - b_better) - 1, 0) ** 2 / m
    return math.erfc(math.sqrt(statistic / 2))  # the chi-square(1) survival function


@dataclass(frozen=True)
class PairedTest:
    """McNemar's test of model A against model B on the same test images (``mcnemar``)."""

    a_better: int
    """Images A gets right more often than B (over all seeds)."""
    b_better: int
    """Images B gets right more often than A."""
    images: int
    """Test images compared."""
    seeds: int
    """Seeds per model (1: McNemar's test proper; more: its sign-test form on per-image counts)."""
    p_value: float
    """Two-sided p-value."""
    method: Method

    @property
    def discordant(self) -> int:
        """Images on which the two models differ."""
        return self.a_better + self.b_better

    @property
    def discordance(self) -> float:
        """Fraction of the images on which the two models differ (the input of ``minimum_detectable_difference``)."""
        return self.discordant / self.images if self.images else 0.0

    def verdict(self, alpha: float = 0.05) -> Verdict:
        """A's verdict against B at level ``alpha`` (``verdict``)."""
        return verdict(self, alpha)


def mcnemar(
    correct_a: np.ndarray | Sequence[bool],
    correct_b: np.ndarray | Sequence[bool],
    method: Method = "exact",
) -> PairedTest:
    """McNemar's test between models A and B from their per-image correctness on the same test images.

    ``correct_a``, ``correct_b``: booleans, ``[images]`` for one trained model each, or ``[seeds, images]`` for
    several seeds of each (every row holds the same images in the same order; seed ``s`` of A is not paired with seed
    ``s`` of B, only images are).

    With one seed this is McNemar's test: ``a_better`` = images only A classifies correctly, ``b_better`` = images
    only B does, and ``mcnemar_p_value`` of the two. With several seeds each image's number of correct seeds is
    compared (``k_A(i)`` against ``k_B(i)``, each ``0..seeds``), and ``a_better`` / ``b_better`` count the images where
    A's / B's is larger: the sign test on per-image differences, of which McNemar's test is the one-seed case. The
    image, not the (image, seed) pair, is the unit, because the seeds of one model see the same images and are
    not independent evidence.

    Assumptions: the test images are an independent sample from the distribution the claim is about (true of
    digits-C's stratified split; each corruption's images are corrupted independently), and H0 is that on each image
    the two models' outcomes are exchangeable. It tests differences over test images for these trained models; the
    spread over training seeds is what ``mean_and_std`` reports, and 3 seeds are too few to test it.

    Power: only discordant images carry information, so what the test can resolve depends on how often the models
    disagree, not on the accuracy itself; ``minimum_detectable_difference`` computes the smallest accuracy difference
    it detects. For n = 360 images at alpha = 0.05 with 80% power that is about 3.4 points (12 images) when the models
    disagree on 5% of the images and about 6.8 points (24 images) at 20%, far above the one image (0.28 points) that
    separates many best-versus-second cells of the tables. With several seeds the same figure bounds the net share of
    images favouring one model, ``(a_better - b_better) / images``, rather than the mean accuracy difference.

    Raises ``ValueError`` for mismatched shapes or more than two dimensions.
    """
    a = np.asarray(correct_a, dtype=bool)
    b = np.asarray(correct_b, dtype=bool)
    if a.ndim == 1:
        a = a[None]
    if b.ndim == 1:
        b = b[None]
    if a.ndim != 2 or b.ndim != 2:
        raise ValueError(f"expected [images] or [seeds, images] arrays, got shapes {a.shape}, {b.shape}")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"the two models must be tested on the same images, got {a.shape[1]} and {b.shape[1]}")
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"the two models need the same number of seeds, got {a.shape[0]} and {b.shape[0]}")
    difference = a.sum(axis=0, dtype=np.int64) - b.sum(axis=0, dtype=np.int64)
    a_better, b_better = int((difference > 0).sum()), int((difference < 0).sum())
    return PairedTest(
        a_better=a_better,
        b_better=b_better,
        images=int(a.shape[1]),
        seeds=int(a.shape[0]),
        p_value=mcnemar_p_value(a_better, b_better, method),
        method=method,
    )


def verdict(test: PairedTest, alpha: float = 0.05) -> Verdict:
    """``"win"`` when A is significantly better than B at level ``alpha`` (``p <= alpha`` and more images favour A),
    ``"loss"`` when B is significantly better, ``"tie"`` otherwise -- including every difference too small to tell
    from chance, however the means compare.

    One verdict per table row: over 16 rows about ``16 alpha`` (0.8 at 0.05) false wins or losses are expected by
    chance even where no model differs. Raises ``ValueError`` unless ``0 < alpha < 1``.
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    if test.p_value > alpha or test.a_better == test.b_better:
        return "tie"
    return "win" if test.a_better > test.b_better else "loss"


def _binomial_pmf(m: int, j: int, pi: float) -> float:
    if pi <= 0.0 or pi >= 1.0:
        return float(j == (0 if pi <= 0.0 else m))
    log = math.lgamma(m + 1) - math.lgamma(j + 1) - math.lgamma(m - j + 1)
    return math.exp(log + j * math.log(pi) + (m - j) * math.log1p(-pi))


@functools.lru_cache(maxsize=4096)
def critical_count(discordant: int, alpha: float) -> int:
    """The largest ``k`` for which a ``k`` / ``discordant - k`` split is significant at ``alpha`` (exact test), or -1
    when none is: the test rejects exactly when ``min(b, c) <= critical_count(b + c, alpha)``."""
    tail, k = 0, -1
    while 2 * (k + 1) < discordant:
        tail += math.comb(discordant, k + 1)
        if 2 * tail / 2**discordant > alpha:
            break
        k += 1
    return k


def mcnemar_power(images: int, discordance: float, difference: float, alpha: float = 0.05) -> float:
    """Power of the exact test (``mcnemar_p_value(..., "exact")``) at level ``alpha`` on ``images`` test images.

    The alternative: each image is independently one that only A gets right with probability ``(q + d) / 2``, one
    that only B gets right with probability ``(q - d) / 2``, and one they agree on otherwise -- so the models disagree
    on a fraction ``discordance`` (``q``) of the images and A's accuracy exceeds B's by ``difference`` (``d``, a
    fraction, ``|d| <= q``). Given ``m`` discordant images, A's share is ``Binomial(m, pi)``, ``pi = (1 + d/q) / 2``,
    and the test rejects when ``min(b, c) <= critical_count(m, alpha)``; the power averages that over
    ``m ~ Binomial(images, q)`` (terms below 1e-13 are dropped). Exact up to floating point; the tests check it
    against a simulation of whole test sets.

    Raises ``ValueError`` for ``images < 1``, ``q`` outside ``[0, 1]``, ``|d| > q`` or ``alpha`` outside ``(0, 1)``.
    """
    if images < 1:
        raise ValueError(f"images must be >= 1, got {images}")
    if not 0.0 <= discordance <= 1.0:
        raise ValueError(f"discordance must lie in [0, 1], got {discordance}")
    if abs(difference) > discordance + 1e-12:
        raise ValueError(f"|difference| cannot exceed the discordance, got {difference} > {discordance}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    if discordance == 0.0:
        return 0.0
    pi = min(max((1.0 + difference / discordance) / 2.0, 0.0), 1.0)
    total = 0.0
    for m in range(images + 1):
        weight = _binomial_pmf(images, m, discordance)
        if weight < 1e-13:
            continue
        k = critical_count(m, alpha)
        if k >= 0:
            rejected = sum(_binomial_pmf(m, j, pi) + _binomial_pmf(m, m - j, pi) for j in range(k + 1))
            total += weight * rejected
    return min(total, 1.0)


def minimum_detectable_difference(images: int, discordance: float, alpha: float = 0.05, power: float = 0.8) -> float:
    """The smallest accuracy difference (a fraction; x100 for points) that the exact test detects at level ``alpha``
    with probability ``power``, on ``images`` test images on which two models disagree a fraction ``discordance`` of
    the time (``mcnemar_power``; the power grows with the difference, so this bisects on it).

    ``inf`` when no difference can reach that power: too few discordant images for a split to be significant often
    enough (at alpha = 0.05 the exact test needs at least 6). For example, n = 360 at alpha 0.05 and 80% power:
    about 0.034 at ``discordance = 0.05`` and 0.068 at 0.2, within a few percent of the normal approximation
    ``sqrt(n) d = z_{1 - alpha/2} sqrt(q) + z_{power} sqrt(q - d^2)`` (Connor 1987). Raises ``ValueError`` as
    ``mcnemar_power`` does, or unless ``0 < power < 1``.
    """
    if not 0 < power < 1:
        raise ValueError(f"power must lie in (0, 1), got {power}")
    if mcnemar_power(images, discordance, discordance, alpha) < power:
        return math.inf
    low, high = 0.0, discordance
    for _ in range(40):  # to 1e-12 of q
        mid = (low + high) / 2
        if mcnemar_power(images, discordance, mid, alpha) >= power:
            high = mid
        else:
            low = mid
    return high
