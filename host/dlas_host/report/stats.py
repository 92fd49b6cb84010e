"""The statistics behind every sentence of the report.

Two timings differ only when their raw samples say so: a two-sided Mann-Whitney U test (``scipy.stats``) at
``ALPHA``, a 95 % percentile-bootstrap interval of the ratio of medians that excludes 1, and an effect of at
least ``MIN_EFFECT`` (a shared machine does not reproduce smaller differences from one run to the next).
Anything else is "no significant difference". Correlations are Spearman's rank correlation with its p-value
(exact over all permutations for up to ``EXACT_UP_TO`` points).
"""

from __future__ import annotations

import itertools
import math
import warnings
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import stats as sst

ALPHA = 0.05
MIN_EFFECT = 0.03  # differences below 3 % are not stated, however small their p-value
MIN_SAMPLES = 4  # fewer on either side and Mann-Whitney cannot reach p < 0.05 (3 vs 3: p >= 0.1): not tested
BOOTSTRAP = 1000
CONFIDENCE = 0.95
MIN_POINTS = 5  # a correlation needs this many points
EXACT_UP_TO = 7


@dataclass(frozen=True)
class Comparison:
    """Candidate against baseline: ``speedup`` = baseline median / candidate median (> 1: candidate faster)."""

    speedup: float
    low: float  # 95 % bootstrap interval of the speedup
    high: float
    p: float  # Mann-Whitney U, two-sided (nan when not tested)
    n_base: int
    n_cand: int
    tested: bool
    significant: bool
    reason: str = ""  # why it was not tested

    @property
    def verdict(self) -> str:
        """``faster`` / ``slower`` (the candidate), ``same`` (no significant difference) or ``untested``."""
        if not self.tested:
            return "untested"
        if not self.significant:
            return "same"
        return "faster" if self.speedup > 1 else "slower"


def _medians(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Medians of BOOTSTRAP resamples of ``x`` (sorting small rows beats np.median's partition)."""
    s = np.sort(x[rng.integers(0, x.size, (BOOTSTRAP, x.size))], axis=1)
    mid = x.size // 2
    return s[:, mid] if x.size % 2 else 0.5 * (s[:, mid - 1] + s[:, mid])


def _bootstrap_ratio(base: np.ndarray, cand: np.ndarray) -> tuple[float, float]:
    rng = np.random.default_rng(20261203)  # fixed: the same rows give the same report
    ratios = _medians(base, rng) / _medians(cand, rng)
    tail = 100 * (1 - CONFIDENCE) / 2
    low, high = np.percentile(ratios, [tail, 100 - tail])
    return float(low), float(high)


@lru_cache(maxsize=1 << 16)
def _compare(base: tuple[float, ...], cand: tuple[float, ...]) -> Comparison:
    a, b = np.asarray(base), np.asarray(cand)
    speedup = float(np.median(a) / np.median(b))
    if a.size < MIN_SAMPLES or b.size < MIN_SAMPLES:
        return Comparison(speedup, math.nan, math.nan, math.nan, a.size, b.size, False, False,
                          f"too few raw samples ({a.size} and {b.size}; {MIN_SAMPLES} needed)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = float(sst.mannwhitneyu(a, b, alternative="two-sided").pvalue)
    if not math.isfinite(p):
        p = 1.0
    low, high = _bootstrap_ratio(a, b)
    big_enough = abs(math.log(speedup)) >= math.log1p(MIN_EFFECT)
    significant = p < ALPHA and (low > 1 or high < 1) and big_enough
    return Comparison(speedup, low, high, p, a.size, b.size, True, significant)


def compare(base: np.ndarray, cand: np.ndarray, base_median: float | None = None,
            cand_median: float | None = None) -> Comparison:
    """Compare two measurements by their raw samples (positive, finite). Without samples only the medians
    are known: the ratio is reported, untested."""
    if base.size and cand.size:
        return _compare(tuple(map(float, base)), tuple(map(float, cand)))
    bm = float(np.median(base)) if base.size else base_median
    cm = float(np.median(cand)) if cand.size else cand_median
    speedup = bm / cm if bm and cm else math.nan
    return Comparison(speedup, math.nan, math.nan, math.nan, int(base.size), int(cand.size), False, False,
                      "no raw samples stored")


@dataclass(frozen=True)
class Correlation:
    rho: float
    p: float
    n: int
    exact: bool

    @property
    def significant(self) -> bool:
        return self.p < ALPHA


def _ranks(x: np.ndarray) -> np.ndarray:
    return sst.rankdata(x)


@lru_cache(maxsize=16)
def _permutations(n: int) -> np.ndarray:
    return np.array(list(itertools.permutations(range(n))), dtype=np.int16)


def spearman(x: np.ndarray, y: np.ndarray) -> Correlation | None:
    """Spearman's rho and its two-sided p-value; None with fewer than MIN_POINTS points or a constant side."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    n = x.size
    if n < MIN_POINTS or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    rx, ry = _ranks(x), _ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denom = math.sqrt(float((rx**2).sum() * (ry**2).sum()))
    rho = float((rx * ry).sum() / denom)
    if n <= EXACT_UP_TO:
        perms = ry[_permutations(n)]
        null = (perms * rx).sum(axis=1) / denom
        p = float(np.mean(np.abs(null) >= abs(rho) - 1e-12))
        return Correlation(rho, p, n, True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = float(sst.spearmanr(x, y).pvalue)
    return Correlation(rho, p if math.isfinite(p) else 1.0, n, False)


def wilson(hits: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval of a proportion ``hits / n`` (95 % by default)."""
    if n <= 0:
        return 0.0, 1.0
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def proportion_drop(base_hits: int, base_n: int, hits: int, n: int) -> tuple[float, float, float]:
    """(drop, low, high): base accuracy minus candidate accuracy with Newcombe's 95 % interval (the hybrid
    Wilson score method for two proportions). Two builds scored on the same images are positively correlated,
    so this unpaired interval is conservative: a drop it excludes from 0 is real."""
    p1, p2 = base_hits / base_n, hits / n
    l1, u1 = wilson(base_hits, base_n)
    l2, u2 = wilson(hits, n)
    d = p1 - p2
    return d, d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2), d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)


# ------------------------------------------------------------------------------------------ wording
def fmt_ms(ms: float | None) -> str:
    if ms is None or not math.isfinite(ms):
        return "?"
    return f"{ms:.3g} ms" if ms < 0.01 else f"{ms:.2f} ms" if ms < 100 else f"{ms:.0f} ms"


def fmt_p(p: float) -> str:
    if not math.isfinite(p):
        return "p = n/a"
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}" if p < 0.01 else f"p = {p:.2f}"


def fmt_ratio(r: float) -> str:
    return f"{r:.2f}x" if math.isfinite(r) else "?x"


def effect(c: Comparison) -> str:
    """``1.45x, 95 % CI 1.40x-1.50x, p = 0.002``: the candidate's speedup with its interval and test."""
    if not c.tested:
        return f"{fmt_ratio(c.speedup)} by median; not tested: {c.reason}"
    return f"{fmt_ratio(c.speedup)}, 95 % CI {fmt_ratio(c.low)}-{fmt_ratio(c.high)}, {fmt_p(c.p)}"


def statement(c: Comparison, cand: str, base: str) -> str:
    """One clause that says what the samples support, and nothing more."""
    if c.verdict == "faster":
        return f"{cand} is {c.speedup:.2f}x faster than {base} (95 % CI {fmt_ratio(c.low)}-{fmt_ratio(c.high)}, " \
               f"{fmt_p(c.p)})"
    if c.verdict == "slower":
        return f"{cand} is {1 / c.speedup:.2f}x slower than {base} (speedup {fmt_ratio(c.speedup)}, 95 % CI " \
               f"{fmt_ratio(c.low)}-{fmt_ratio(c.high)}, {fmt_p(c.p)})"
    if not c.tested:
        return f"{cand} vs {base}: no significant difference can be stated ({fmt_ratio(c.speedup)} by median; {c.reason})"
    return f"{cand} vs {base}: no significant difference ({effect(c)})"
