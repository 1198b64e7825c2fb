import math

import numpy as np
import pytest
from scipy import stats as sps

from kdscope.analysis import stats


def test_holm_matches_hand_computed_step_down():
    # sorted 0.005, 0.01, 0.03, 0.04 -> 4p, 3p, 2p, 1p = 0.02, 0.03, 0.06, 0.04 -> monotone 0.06
    adjusted = stats.holm([0.01, 0.04, 0.03, 0.005])
    np.testing.assert_allclose(adjusted, [0.03, 0.06, 0.06, 0.02])


def test_holm_caps_at_one_and_skips_nan():
    np.testing.assert_allclose(stats.holm([0.5, 0.6]), [1.0, 1.0])
    adjusted = stats.holm([0.01, math.nan, 0.04])
    assert math.isnan(adjusted[1])
    np.testing.assert_allclose(adjusted[[0, 2]], [0.02, 0.04])  # m = 2, not 3


def test_holm_rejects_values_outside_unit_interval():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        stats.holm([0.2, 1.5])


def test_cohens_dz_on_a_tiny_example():
    # d = [1, 2, 2, 3]: mean 2, sd sqrt(2/3)
    assert stats.cohens_dz([1, 2, 3, 4], [0, 0, 1, 1]) == pytest.approx(2 / math.sqrt(2 / 3))
    assert stats.cohens_dz([1, 2], [1, 2]) == 0.0
    assert stats.cohens_dz([2, 3], [1, 2]) == math.inf


def test_paired_t_test_matches_formula_and_scipy():
    a, b = [1, 2, 3, 4], [0, 0, 1, 1]
    res = stats.paired_t_test(a, b)
    t = 2 / (math.sqrt(2 / 3) / 2)
    assert res.statistic == pytest.approx(t)
    assert res.p == pytest.approx(2 * sps.t.sf(t, 3))
    assert res.n == 4
    assert stats.paired_t_test([1, 2, 3], [1, 2, 3]).p == 1.0


def test_wilcoxon_exact_small_n_and_its_floor():
    res = stats.wilcoxon_signed_rank([0.11, 0.12, 0.09, 0.13, 0.1], [0] * 5)
    assert res.p == pytest.approx(2 / 2**5)  # all 5 differences positive: the smallest p
    assert res.method == "wilcoxon exact"
    assert stats.wilcoxon_min_p(5) == 0.0625
    assert stats.wilcoxon_min_p(6) == pytest.approx(0.03125)


def test_wilcoxon_exact_with_ties_and_zero_enumerates_sign_flips():
    # zero dropped; |d| ranks 1, 2.5, 2.5, 4; negative rank sum 1: subsets with sum <= 1 are
    # {} and {1}, so P = 2/16 one-sided, 0.25 two-sided.
    res = stats.wilcoxon_signed_rank([0.1, 0.1, 0.2, -0.05, 0.0], [0] * 5)
    assert res.p == pytest.approx(0.25)
    assert "sign flips" in res.method


def test_wilcoxon_degenerate_samples():
    # one non-zero difference: its two sign flips are equally extreme, so p = 1 (scipy's
    # sign-flip enumeration refuses a single value)
    one = stats.wilcoxon_signed_rank([0.3, 0.2, 0.5], [0.3, 0.2, 0.1])
    assert (one.p, one.n) == (1.0, 3)
    assert stats.wilcoxon_signed_rank([1.0, 2.0], [1.0, 2.0]).p == 1.0  # no difference at all
    assert math.isnan(stats.wilcoxon_signed_rank([], []).p)


def test_mean_ci_is_the_t_interval():
    est = stats.mean_ci([1, 2, 3, 4, 5])
    half = 2.7764451051977987 * math.sqrt(2.5) / math.sqrt(5)
    assert (est.value, est.low, est.high, est.n) == pytest.approx((3, 3 - half, 3 + half, 5))
    assert math.isnan(stats.mean_ci([1.0]).low)


def test_inputs_with_nan_or_unequal_length_are_rejected():
    with pytest.raises(ValueError, match="NaN"):
        stats.mean_ci([1.0, math.nan])
    with pytest.raises(ValueError, match="equal length"):
        stats.paired_t_test([1, 2, 3], [1, 2])


def test_bootstrap_ci_covers_the_mean_and_is_reproducible():
    x = np.random.default_rng(3).normal(1.0, 0.5, size=30)
    first = stats.bootstrap_ci(x, seed=7)
    assert first.low < x.mean() < first.high
    assert first == stats.bootstrap_ci(x, seed=7)
    assert first != stats.bootstrap_ci(x, seed=8)
    # roughly the t-interval for a normal sample
    t = stats.mean_ci(x)
    assert first.high - first.low == pytest.approx(t.high - t.low, rel=0.3)
    const = stats.bootstrap_ci([2.0, 2.0, 2.0])
    assert (const.low, const.high) == (2.0, 2.0)


def test_compare_paired_collects_consistent_results():
    a = [0.50, 0.52, 0.49, 0.55, 0.51]
    b = [0.40, 0.45, 0.41, 0.44, 0.42]
    cmp = stats.compare_paired(a, b)
    d = np.subtract(a, b)
    assert cmp.n == 5 and cmp.diff.value == pytest.approx(d.mean())
    assert cmp.mean_a - cmp.mean_b == pytest.approx(cmp.diff.value)
    assert cmp.t_test.p == pytest.approx(sps.ttest_rel(a, b).pvalue)
    assert cmp.cohens_dz == pytest.approx(d.mean() / d.std(ddof=1))


def test_pearson_matches_scipy_with_fisher_interval():
    rng = np.random.default_rng(0)
    x = rng.normal(size=20)
    y = x + rng.normal(size=20)
    res = stats.pearson(x, y)
    r, p = sps.pearsonr(x, y)
    z, se = math.atanh(r), 1 / math.sqrt(20 - 3)
    assert (res.r, res.p, res.n) == pytest.approx((r, p, 20))
    assert (res.low, res.high) == pytest.approx(
        (math.tanh(z - 1.959963984540054 * se), math.tanh(z + 1.959963984540054 * se))
    )


def test_spearman_is_pearson_of_ranks_with_a_seeded_interval():
    rng = np.random.default_rng(1)
    x = rng.normal(size=15)
    y = x**3 + 0.5 * rng.normal(size=15)
    res = stats.spearman(x, y)
    assert res.r == pytest.approx(np.corrcoef(sps.rankdata(x), sps.rankdata(y))[0, 1])
    assert res.p == pytest.approx(sps.spearmanr(x, y).pvalue)
    assert res.low <= res.r <= res.high
    assert res == stats.spearman(x, y)


def test_correlations_of_constant_or_tiny_samples_are_nan():
    assert math.isnan(stats.pearson([1, 1, 1, 1], [1, 2, 3, 4]).r)
    assert math.isnan(stats.spearman([1, 2], [2, 1]).p)


def test_kendall_tau_one_swap_of_five_and_exact_p():
    res = stats.kendall_tau([1, 2, 3, 4, 5], [1, 3, 2, 4, 5])
    assert res.r == pytest.approx(0.8)  # 9 concordant, 1 discordant of 10 pairs
    # permutations of 5 with at most one inversion: 1 + 4 = 5 of 120; two-sided doubles it
    assert res.p == pytest.approx(10 / 120)
    assert stats.kendall_tau([1, 2, 3], [3, 2, 1]).r == pytest.approx(-1)


def test_kendalls_w_full_agreement_and_the_spearman_identity():
    assert stats.kendalls_w([[1, 2, 3, 4], [10, 20, 30, 40]]).statistic == pytest.approx(1.0)
    rng = np.random.default_rng(2)
    scores = rng.normal(size=(4, 7))  # 4 raters, 7 items, no ties
    w = stats.kendalls_w(scores).statistic
    rhos = [
        sps.spearmanr(scores[i], scores[j]).statistic for i in range(4) for j in range(i + 1, 4)
    ]
    # mean pairwise Spearman rho = (m W - 1) / (m - 1)
    assert np.mean(rhos) == pytest.approx((4 * w - 1) / 3)
    with pytest.raises(ValueError, match="2-d"):
        stats.kendalls_w([1, 2, 3])


def test_estimate_prints_value_and_interval():
    assert str(stats.Estimate(0.1234, 0.1, 0.15, 5)) == "0.123 [0.1, 0.15]"
    assert str(stats.Estimate(0.5, math.nan, math.nan, 1)) == "0.5 (n=1)"
