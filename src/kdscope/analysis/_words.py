"""Number formatting and the verdict wording shared by the analyses' finding sentences."""

from __future__ import annotations

import math

from kdscope.analysis.stats import Estimate, PairedComparison, wilcoxon_min_p


def num(x: float) -> str:
    return "n/a" if x is None or math.isnan(x) else f"{x:.3g}"


def signed(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x:+.3g}"


def pval(p: float) -> str:
    """'0.031', '0.00072', '<0.0001'."""
    if p is None or math.isnan(p):
        return "n/a"
    return "<0.0001" if p < 1e-4 else f"{p:.2g}" if p < 0.001 else f"{p:.3f}"


def peq(name: str, p: float) -> str:
    """'p = 0.031' or 'p < 0.0001'."""
    text = pval(p)
    return f"{name} {text[0]} {text[1:]}" if text.startswith("<") else f"{name} = {text}"


def ci(e: Estimate) -> str:
    """'+0.101 [95% CI 0.085, 0.117]'."""
    if math.isnan(e.low):
        return signed(e.value)
    return f"{signed(e.value)} [{e.level:.0%} CI {num(e.low)}, {num(e.high)}]"


def seeds_verdict(n: int, min_seeds: int) -> str | None:
    """The 'no claim' verdict when fewer than ``min_seeds`` pairs were tested, else None."""
    if n < min_seeds:
        return f"no claim: n = {n} < {min_seeds} seeds"
    return None


def paired_verdict(
    cmp: PairedComparison, p_adj: float, alpha: float, min_seeds: int, subject: str = ""
) -> str:
    """'<subject> higher, significant after Holm' / 'no significant difference after Holm' /
    'no claim: n = 2 < 3 seeds'; short, for a table whose columns say what was compared."""
    few = seeds_verdict(cmp.n, min_seeds)
    if few:
        return few
    if math.isnan(p_adj):
        return "not testable"
    if p_adj < alpha:
        direction = "higher" if cmp.diff.value > 0 else "lower"
        return f"{subject} {direction}, significant after Holm".lstrip()
    return "no significant difference after Holm"


def wilcoxon_floor_note(n_values: set[int], alpha: float) -> str | None:
    """A note when the exact Wilcoxon test cannot reach ``alpha`` at the sample sizes used."""
    low = sorted(n for n in n_values if n > 0 and wilcoxon_min_p(n) >= alpha)
    if not low:
        return None
    return (
        f"With n = {', '.join(map(str, low))} pairs the exact Wilcoxon signed-rank test cannot "
        f"give p below {pval(wilcoxon_min_p(max(low)))}, so it cannot reject at {alpha}; verdicts "
        "use the paired t-test, Wilcoxon p-values are shown as a distribution-free check."
    )
