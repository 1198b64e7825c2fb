"""Statistics for comparing runs across seeds: paired tests, corrections, effect sizes, intervals,
correlations and rank agreement. Thin, documented wrappers over scipy.stats that return small
frozen dataclasses, so that analyses and reports read one set of names.

Conventions: ``level`` is a confidence level (0.95); p-values are two-sided; NaN inputs are an
error (drop missing values before calling) so that an ``n`` printed in a report is the ``n`` tested.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

# Exact sign-flip enumeration of the signed-rank statistic with ties or zeros costs 2**n.
_MAX_EXACT_WITH_TIES = 16


@dataclass(frozen=True)
class Estimate:
    """A point estimate with a confidence interval: ``low``/``high`` are NaN when n is too small."""

    value: float
    low: float
    high: float
    n: int
    level: float = 0.95

    def __str__(self) -> str:
        if math.isnan(self.low):
            return f"{_fmt(self.value)} (n={self.n})"
        return f"{_fmt(self.value)} [{_fmt(self.low)}, {_fmt(self.high)}]"


@dataclass(frozen=True)
class TestResult:
    """One hypothesis test: its statistic, two-sided p-value, sample size and the variant used."""

    __test__ = False  # not a pytest test class, despite its name

    statistic: float
    p: float
    n: int
    method: str


@dataclass(frozen=True)
class PairedComparison:
    """Everything a report needs to state one paired claim ``a`` vs ``b`` (differences a - b)."""

    n: int
    mean_a: float
    mean_b: float
    diff: Estimate
    t_test: TestResult
    wilcoxon: TestResult
    cohens_dz: float


@dataclass(frozen=True)
class Correlation:
    """A correlation coefficient with its p-value, sample size and confidence interval."""

    r: float
    p: float
    n: int
    low: float
    high: float
    method: str


def _fmt(x: float) -> str:
    return f"{x:.3g}"


def _vector(x: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    if np.isnan(arr).any():
        raise ValueError(f"{name} contains NaN; drop missing values before testing")
    return arr


def _pair(a, b) -> tuple[np.ndarray, np.ndarray]:
    x, y = _vector(a, "a"), _vector(b, "b")
    if x.shape != y.shape:
        raise ValueError(f"paired samples must have equal length, got {x.size} and {y.size}")
    return x, y


def mean_ci(x: Sequence[float] | np.ndarray, level: float = 0.95) -> Estimate:
    """Mean with a Student-t interval, mean +- t_{(1+level)/2, n-1} * s / sqrt(n).

    n = 1 gives a NaN interval; n = 0 a NaN mean.
    """
    arr = _vector(x, "x")
    n = arr.size
    if n == 0:
        return Estimate(math.nan, math.nan, math.nan, 0, level)
    mean = float(arr.mean())
    if n == 1:
        return Estimate(mean, math.nan, math.nan, 1, level)
    half = stats.t.ppf((1 + level) / 2, n - 1) * arr.std(ddof=1) / math.sqrt(n)
    return Estimate(mean, mean - half, mean + half, n, level)


def bootstrap_ci(
    x: Sequence[float] | np.ndarray,
    statistic: Callable[..., np.ndarray] = np.mean,
    level: float = 0.95,
    n_resamples: int = 9999,
    seed: int = 0,
    batch: int | None = None,
) -> Estimate:
    """Bias-corrected and accelerated (BCa) bootstrap interval of ``statistic(x)``, reproducible
    for a given ``seed`` (scipy.stats.bootstrap). ``statistic`` is a numpy-style reduction taking
    ``axis`` (np.mean, np.median, ...). Constant data gives a zero-width interval. ``batch``:
    resamples (and jackknife samples) held at once; without it scipy holds them all, n_resamples
    x n and n x n values, too many for thousands of examples."""
    arr = _vector(x, "x")
    value = float(statistic(arr))
    if arr.size < 2:
        return Estimate(value, math.nan, math.nan, arr.size, level)
    if np.all(arr == arr[0]):
        return Estimate(value, value, value, arr.size, level)
    res = stats.bootstrap(
        (arr,),
        statistic,
        confidence_level=level,
        n_resamples=n_resamples,
        method="BCa",
        rng=np.random.default_rng(seed),
        batch=batch,
    )
    ci = res.confidence_interval
    return Estimate(value, float(ci.low), float(ci.high), arr.size, level)


def paired_t_test(a, b) -> TestResult:
    """Paired Student t-test of mean(a - b) = 0, df = n - 1. Identical samples give t = 0, p = 1
    (scipy returns NaN there); a constant non-zero difference gives |t| = inf, p = 0."""
    x, y = _pair(a, b)
    n = x.size
    if n < 2:
        return TestResult(math.nan, math.nan, n, "paired t")
    d = x - y
    if np.all(d == 0):
        return TestResult(0.0, 1.0, n, "paired t")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        res = stats.ttest_rel(x, y)
    return TestResult(float(res.statistic), float(res.pvalue), n, "paired t")


def wilcoxon_signed_rank(a, b) -> TestResult:
    """Wilcoxon signed-rank test of the differences a - b (zero differences dropped, Wilcoxon 1945).

    Exact null distribution for n <= 50 without ties; with ties or zeros, exact enumeration of all
    2**n sign flips up to n = 16, the normal approximation beyond. With the exact test the
    smallest two-sided p-value is 2 / 2**n (0.0625 at n = 5): see :func:`wilcoxon_min_p`.
    """
    x, y = _pair(a, b)
    d = x - y
    nonzero = d[d != 0]
    n = nonzero.size
    if d.size == 0:
        return TestResult(math.nan, math.nan, 0, "wilcoxon")
    if n == 0:
        return TestResult(0.0, 1.0, d.size, "wilcoxon exact")
    if n == 1:
        # One non-zero difference: both of its sign flips are as extreme, so p = 1.
        return TestResult(0.0, 1.0, d.size, "wilcoxon exact")
    ties = np.unique(np.abs(nonzero)).size < n
    zeros = n < d.size
    if n <= 50 and not (ties or zeros):
        method, name = "exact", "wilcoxon exact"
    elif n <= _MAX_EXACT_WITH_TIES:
        method, name = stats.PermutationMethod(n_resamples=np.inf), "wilcoxon exact (sign flips)"
    else:
        method, name = "approx", "wilcoxon normal approx."
    res = stats.wilcoxon(nonzero, method=method)
    return TestResult(float(res.statistic), float(res.pvalue), d.size, name)


def wilcoxon_min_p(n: int) -> float:
    """Smallest attainable two-sided p-value of the exact signed-rank test with n non-zero pairs."""
    return min(1.0, 2.0 / 2**n)


def cohens_dz(a, b) -> float:
    """Cohen's d for paired samples, d_z = mean(a - b) / sd(a - b) (sd with ddof = 1; Cohen 1988).

    NaN for n < 2; +-inf for a constant non-zero difference; 0 for identical samples.
    """
    x, y = _pair(a, b)
    d = x - y
    if d.size < 2:
        return math.nan
    mean, sd = float(d.mean()), float(d.std(ddof=1))
    if sd == 0:
        return 0.0 if mean == 0 else math.copysign(math.inf, mean)
    return mean / sd


def compare_paired(a, b, level: float = 0.95) -> PairedComparison:
    """Paired t-test, Wilcoxon signed-rank, d_z and the t-interval of the mean difference a - b."""
    x, y = _pair(a, b)
    return PairedComparison(
        n=x.size,
        mean_a=float(x.mean()) if x.size else math.nan,
        mean_b=float(y.mean()) if y.size else math.nan,
        diff=mean_ci(x - y, level),
        t_test=paired_t_test(x, y),
        wilcoxon=wilcoxon_signed_rank(x, y),
        cohens_dz=cohens_dz(x, y),
    )


def holm(pvalues: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (Holm 1979): step-down, monotone, capped at 1.

    With m tests sorted p_(1) <= ... <= p_(m): p~_(i) = max_{j <= i} min(1, (m - j + 1) p_(j)).
    Reject H_(i) at level alpha iff p~_(i) <= alpha. NaN entries (untestable) stay NaN and do not
    count towards m.
    """
    p = np.asarray(pvalues, dtype=np.float64)
    if p.ndim != 1:
        raise ValueError(f"pvalues must be one-dimensional, got shape {p.shape}")
    valid = ~np.isnan(p)
    if ((p[valid] < 0) | (p[valid] > 1)).any():
        raise ValueError(f"p-values must lie in [0, 1], got {p[valid].tolist()}")
    out = np.full_like(p, np.nan)
    idx = np.flatnonzero(valid)
    m = idx.size
    order = idx[np.argsort(p[idx], kind="stable")]
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    out[order] = np.maximum.accumulate(scaled)
    return out


def pearson(x, y, level: float = 0.95) -> Correlation:
    """Pearson r with its two-sided p-value and Fisher-z interval (scipy.stats.pearsonr)."""
    a, b = _pair(x, y)
    if a.size < 3 or np.all(a == a[0]) or np.all(b == b[0]):
        return Correlation(math.nan, math.nan, a.size, math.nan, math.nan, "pearson")
    res = stats.pearsonr(a, b)
    ci = res.confidence_interval(level) if a.size > 3 else None
    low, high = (float(ci.low), float(ci.high)) if ci is not None else (math.nan, math.nan)
    return Correlation(float(res.statistic), float(res.pvalue), a.size, low, high, "pearson")


def spearman(x, y, level: float = 0.95, seed: int = 0) -> Correlation:
    """Spearman rho with its two-sided p-value (t approximation, scipy.stats.spearmanr) and a
    seeded BCa bootstrap interval over (x, y) pairs."""
    a, b = _pair(x, y)
    if a.size < 3 or np.all(a == a[0]) or np.all(b == b[0]):
        return Correlation(math.nan, math.nan, a.size, math.nan, math.nan, "spearman")
    res = stats.spearmanr(a, b)
    with warnings.catch_warnings():
        # Resamples with constant ranks give NaN rho; scipy warns and the interval may be NaN.
        warnings.simplefilter("ignore")
        boot = stats.bootstrap(
            (a, b),
            lambda u, v, axis: _spearman_along(u, v, axis),
            paired=True,
            confidence_level=level,
            n_resamples=1999,
            method="percentile",
            rng=np.random.default_rng(seed),
        )
    ci = boot.confidence_interval
    return Correlation(
        float(res.statistic), float(res.pvalue), a.size, float(ci.low), float(ci.high), "spearman"
    )


def _spearman_along(u: np.ndarray, v: np.ndarray, axis: int) -> np.ndarray:
    ru = stats.rankdata(u, axis=axis)
    rv = stats.rankdata(v, axis=axis)
    ru = ru - ru.mean(axis=axis, keepdims=True)
    rv = rv - rv.mean(axis=axis, keepdims=True)
    den = np.sqrt((ru**2).sum(axis=axis) * (rv**2).sum(axis=axis))
    with np.errstate(invalid="ignore", divide="ignore"):
        return (ru * rv).sum(axis=axis) / den


def kendall_tau(x, y) -> Correlation:
    """Kendall tau-b between two scorings of the same items (e.g. methods scored by accuracy gain
    and by KRS gain): the rankings they induce agree with tau = 1 and are reversed with tau = -1.
    p-value exact for small n without ties (scipy.stats.kendalltau); no interval."""
    a, b = _pair(x, y)
    if a.size < 2 or np.all(a == a[0]) or np.all(b == b[0]):
        return Correlation(math.nan, math.nan, a.size, math.nan, math.nan, "kendall tau-b")
    res = stats.kendalltau(a, b)
    return Correlation(
        float(res.statistic), float(res.pvalue), a.size, math.nan, math.nan, "kendall tau-b"
    )


def kendalls_w(scores: Sequence[Sequence[float]] | np.ndarray) -> TestResult:
    """Kendall's coefficient of concordance W of m rankings of the same n items (Kendall &
    Babington Smith 1939): rows are raters (e.g. teacher/student pairs), columns items (e.g.
    methods); each row is ranked (average ranks for ties; no tie correction).
    W = 12 S / (m^2 (n^3 - n)), S the sum of squared deviations of the column rank sums;
    W = 1 is full agreement, 0 none.
    p from the chi-square approximation m (n - 1) W ~ chi2(n - 1) (Friedman's test)."""
    arr = np.asarray(scores, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"scores must be a 2-d raters x items array, got shape {arr.shape}")
    if np.isnan(arr).any():
        raise ValueError("scores contain NaN; keep only items every rater scored")
    m, n = arr.shape
    if m < 2 or n < 2:
        return TestResult(math.nan, math.nan, m, "kendall W")
    ranks = stats.rankdata(arr, axis=1)
    sums = ranks.sum(axis=0)
    s = float(((sums - sums.mean()) ** 2).sum())
    w = 12.0 * s / (m**2 * (n**3 - n))
    p = float(stats.chi2.sf(m * (n - 1) * w, n - 1))
    return TestResult(w, p, m, "kendall W (chi2 approx.)")
