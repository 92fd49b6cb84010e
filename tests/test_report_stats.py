"""The report's statistics: a difference only when the raw samples support it, intervals that cover the
truth, and rank correlations with exact p-values."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import stats as sst

from dlas_host.report.stats import MIN_EFFECT, compare, fmt_p, spearman, statement
from reportrows import samples


def arr(ms: float, noise: float = 0.01, n: int = 10, seed: int = 0) -> np.ndarray:
    return np.asarray(samples(ms, noise, n, seed))


def test_ten_percent_faster_is_significant_and_its_interval_covers_the_truth():
    c = compare(arr(10.0, seed=1), arr(10.0 / 1.1, seed=2))
    assert c.verdict == "faster" and c.significant and c.p < 0.001
    assert c.low < 1.1 < c.high and c.low > 1.0
    slower = compare(arr(10.0 / 1.1, seed=2), arr(10.0, seed=1))
    assert slower.verdict == "slower" and slower.high < 1.0


def test_equal_configurations_are_never_called_different():
    """Same distribution, 200 seeds: no false 'faster' or 'slower' (the effect floor keeps noise out)."""
    verdicts = [compare(arr(10.0, 0.02, seed=s), arr(10.0, 0.02, seed=1000 + s)).verdict for s in range(200)]
    assert set(verdicts) == {"same"}


def test_small_but_real_differences_below_the_effect_floor_are_not_stated():
    c = compare(arr(10.0, 0.001, seed=1), arr(10.0 / (1 + MIN_EFFECT / 2), 0.001, seed=2))
    assert c.p < 0.001 and c.verdict == "same"


def test_too_few_or_no_samples_are_untested():
    few = compare(arr(10.0, n=2), arr(5.0, n=10))
    assert few.verdict == "untested" and "too few raw samples" in few.reason
    none = compare(np.zeros(0), np.zeros(0), 10.0, 5.0)
    assert none.verdict == "untested" and none.speedup == pytest.approx(2.0) and "no raw samples" in none.reason
    assert "no significant difference" in statement(none, "a", "b")


def test_identical_constant_samples_are_the_same():
    c = compare(np.full(10, 5.0), np.full(10, 5.0))
    assert c.verdict == "same" and c.p == 1.0


def test_statement_wording_follows_the_verdict():
    fast = compare(np.array([10.0, 10.1, 9.9, 10.0, 10.2]), np.array([5.0, 5.05, 4.95, 5.0, 5.1]))
    assert statement(fast, "spatial_pack", "direct").startswith("spatial_pack is 2.00x faster than direct (95 % CI")
    slow = compare(np.array([5.0, 5.05, 4.95, 5.0, 5.1]), np.array([10.0, 10.1, 9.9, 10.0, 10.2]))
    assert statement(slow, "direct", "spatial_pack").startswith("direct is 2.00x slower than spatial_pack")
    assert fmt_p(0.0001) == "p < 0.001" and fmt_p(0.0123) == "p = 0.01"


def test_spearman_exact_p_matches_brute_force():
    x = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    y = np.array([2.0, 1.0, 4.0, 3.0, 6.0, 5.0])
    c = spearman(x, y)
    rho = sst.spearmanr(x, y).statistic
    null = [sst.spearmanr(x, y[list(p)]).statistic for p in itertools.permutations(range(6))]
    assert c is not None and c.exact and c.rho == pytest.approx(rho)
    assert c.p == pytest.approx(np.mean(np.abs(null) >= abs(rho) - 1e-12))


def test_spearman_needs_points_and_variation():
    assert spearman(np.arange(4.0), np.arange(4.0)) is None
    assert spearman(np.ones(8), np.arange(8.0)) is None
    perfect = spearman(np.arange(5.0), np.arange(5.0) ** 2)
    assert perfect.rho == pytest.approx(1.0) and perfect.p == pytest.approx(2 / 120) and perfect.significant
    rng = np.random.default_rng(3)
    big = spearman(rng.random(40), rng.random(40))
    assert big is not None and not big.exact and 0 <= big.p <= 1
