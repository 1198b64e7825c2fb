"""Functional-transfer analysis (shared/specs/functional-transfer.md): does the student learn the
teacher's function, or is KD a regulariser? After Mason-Williams et al., "Rethinking Knowledge
Distillation: A Data Dependent Regulariser With a Negative Asymmetric Payoff" (arXiv 2510.12615).

Input: the tidy table of runs (:mod:`kdscope.analysis.tidy`). A *condition* is one KD setting,
(study, dataset, teacher, student, method, alpha, temperature); its control is the ``control`` arm
with the same (study, dataset, teacher, student), its random control the ``random_control`` arm
with the same condition, its ceiling the ``teacher_replica`` arm of (study, dataset, teacher).
Arms are paired by seed. Output: one report :class:`~kdscope.analysis.report.Section` with tables
``ft-arms``, ``ft-tests``, ``ft-payoff`` (and ``ft-sweeps``, ``ft-missing`` when there are sweeps
or missing runs) and figures ``ft-fig-agreement``, ``ft-fig-payoff``, ``ft-fig-sweep-<param>``; its
lead is the forest plot ``ft-forest`` of the KD-minus-control differences of the headline measures
(:data:`~kdscope.analysis.forest.HEADLINE`) with three plain sentences.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from kdscope.analysis import _words as w
from kdscope.analysis import plots
from kdscope.analysis.forest import HEADLINE, ForestRow, forest_figure, forest_sentences
from kdscope.analysis.payoff import CONDITION, Condition, add_payoff, condition_label
from kdscope.analysis.report import Figure, Lead, Section, Table
from kdscope.analysis.stats import PairedComparison, compare_paired, holm, mean_ci
from kdscope.analysis.sweeps import add_sweeps
from kdscope.analysis.tidy import (
    ID_COLUMNS,
    MEASURES,
    Row,
    by_seed,
    check_rows,
    group,
    paired,
    present_measures,
)

BASELINE = CONDITION[:4]
REPLICA = CONDITION[:3]
DEFAULT_MEASURES = (
    "accuracy",
    "agree_all",
    "agree_C",
    "agree_I",
    "same_wrong_I",
    *(f"{m}_{split}" for m in ("kl", "js", "l2", "cos") for split in ("all", "C", "I")),
    "ece",
    "krs",
    "fss",
    "aoa",
    "perplexity",
    "topk_overlap",
)
OTHER_ARMS = ("control", "random_control")
ARMS_SHOWN = ("control", "kd", "random_control")
ARMS_READ = (*ARMS_SHOWN, "teacher_replica")


@dataclass
class _Test:
    """One measure's paired comparison of kd with another arm, with its Holm-adjusted p-values."""

    cond: Condition
    other: str
    measure: str
    cmp: PairedComparison
    p_t_adj: float = math.nan
    p_w_adj: float = math.nan
    verdict: str = ""


def functional_transfer(
    rows: Sequence[Row],
    measures: Sequence[str] | None = None,
    *,
    level: float = 0.95,
    alpha: float = 0.05,
    min_seeds: int = 3,
    title: str = "Functional transfer",
) -> Section:
    """Per-arm table, KD vs control and KD vs random-control tests (paired by seed, paired t and
    Wilcoxon, Holm across the measures of each comparison, Cohen's d_z), the asymmetric payoff and
    sweeps over alpha, temperature and student, as a report section with findings in words.

    ``measures`` defaults to every measure of :data:`DEFAULT_MEASURES` present in ``rows``.
    Comparisons with fewer than ``min_seeds`` paired seeds are shown but make no claim.
    """
    check_rows(rows, ID_COLUMNS)
    section = Section(title, id="functional-transfer")
    if measures is not None:
        absent = [m for m in measures if m not in present_measures(rows, measures)]
        if absent:
            section.notes.append(f"Measures not in the table, not analysed: {', '.join(absent)}.")
    measures = present_measures(rows, measures or DEFAULT_MEASURES)
    conditions = _conditions(rows)
    if not conditions:
        section.notes.append("The table has no 'kd' runs: there is nothing to analyse.")
        return section
    _report_missing(rows, conditions, section)
    tests = _tests(conditions, measures, level, alpha, min_seeds)
    section.blocks += [
        _arm_table(conditions, measures, level),
        _agreement_figure(conditions, level),
        _test_table(tests, level),
    ]
    for other in OTHER_ARMS:
        quiet = []  # conditions with enough seeds and nothing significant: one finding for all
        for cond in conditions:
            family = [t for t in tests if t.cond is cond and t.other == other]
            if len(conditions) > 1 and _quiet(family, alpha, min_seeds):
                quiet.append(family)
            elif family:
                section.findings.append(_comparison_sentence(family, alpha, min_seeds))
            elif other == "control" or cond.arms["random_control"]:
                section.notes.append(f"{cond.label}: no paired kd/{other} runs, not tested.")
        if quiet:
            ns = sorted({t.cmp.n for f in quiet for t in f})
            n = f"{ns[0]}" if len(ns) == 1 else f"{ns[0]}\u2013{ns[-1]}"
            section.findings.append(
                f"kd vs {other}, {len(quiet)} of {len(conditions)} conditions: no significant "
                f"difference for any measure (paired t, n = {n} seeds, Holm, \u03b1 = {alpha}): "
                f"{', '.join(f[0].cond.short for f in quiet)}."
            )
    if not any(c.arms["random_control"] for c in conditions):
        section.notes.append("No random_control runs: KD vs random-control is not tested.")
    note = w.wilcoxon_floor_note({t.cmp.n for t in tests if t.cmp.n >= min_seeds}, alpha)
    if note:
        section.notes.append(note)
    add_payoff(conditions, level, alpha, min_seeds, section)
    _lead(conditions, tests, alpha, level, section)
    add_sweeps(
        conditions, {(id(t.cond), t.measure): t for t in tests if t.other == "control"}, section
    )
    return section


def _lead(conditions, tests: list[_Test], alpha: float, level: float, section: Section) -> None:
    """The forest plot of kd - control over the headline measures, one group per condition."""
    payoff = {}
    if any(b.id == "ft-payoff" for b in section.blocks):
        payoff = {r["condition"]: r for r in section.table("ft-payoff").records()}
    rows = []
    for cond in conditions:
        mine = {t.measure: t for t in tests if t.cond is cond and t.other == "control"}
        for m in HEADLINE:
            if m in mine:
                t = mine[m]
                est, sig = t.cmp.diff, t.p_t_adj < alpha
            elif m == "payoff" and cond.label in payoff:
                est = payoff[cond.label]["rel. \u0394I \u2212 \u0394C"]
                sig = payoff[cond.label]["p Holm (t), rel."] < alpha
            else:
                continue
            rows.append(ForestRow(m, est.value, est.low, est.high, bool(sig), cond.short))
    if rows:
        n = sorted({t.cmp.n for t in tests if t.other == "control"})
        seeds = f"n = {n[0]}" if len(n) == 1 else f"n = {n[0]}\u2013{n[-1]}"
        caption = (
            f"KD \u2212 control (the same student on labels alone), paired by seed ({seeds}), "
            f"mean difference with {level:.0%} t-interval; filled: significant after Holm "
            f"(\u03b1 = {alpha}), hollow: not. Payoff: relative \u0394I \u2212 \u0394C "
            "(above 0: more of the teacher's mistakes taken on)"
        )
        figure = forest_figure(rows, caption=caption, id="ft-forest", level=level)
        section.lead = Lead(figure, forest_sentences(rows))


def _conditions(rows: Sequence[Row]) -> list[Condition]:
    by_arm = {a: [r for r in rows if r["arm"] == a] for a in ARMS_READ}
    kd = group(by_arm["kd"], CONDITION)
    controls = group(by_arm["control"], BASELINE)
    randoms = group(by_arm["random_control"], CONDITION)
    replicas = group(by_arm["teacher_replica"], REPLICA)
    full = set(CONDITION) if len({r["study"] for r in rows}) > 1 else set(CONDITION[1:])
    varying = {f for i, f in enumerate(CONDITION) if len({k[i] for k in kd}) > 1}
    return [
        Condition(
            key,
            condition_label(key, full),
            condition_label(key, varying) or str(key[4]),
            {
                "control": controls.get(key[:4], []),
                "kd": kd_rows,
                "random_control": randoms.get(key, []),
                "teacher_replica": replicas.get(key[:3], []),
            },
        )
        for key, kd_rows in kd.items()
    ]


def _report_missing(rows: Sequence[Row], conditions: list[Condition], section: Section) -> None:
    seeds = {
        s: sorted({int(r["seed"]) for r in rs if r["arm"] != "teacher_replica"})
        for (s,), rs in group(rows, ("study",)).items()
    }
    has_random = {r["study"] for r in rows if r["arm"] == "random_control"}
    missing = []
    for cond in conditions:
        study = cond.key[0]
        for arm in ("kd", "control", "random_control"):
            if arm == "random_control" and study not in has_random:
                continue
            have = {int(r["seed"]) for r in cond.arms[arm]}
            lost = [s for s in seeds[study] if s not in have]
            if lost:
                missing.append([cond.label, arm, ", ".join(map(str, lost))])
    if missing:
        section.blocks.append(
            Table(
                ["condition", "arm", "missing seeds"],
                missing,
                "Missing runs: cells of the grid with no result",
                "ft-missing",
                group=1,
            )
        )
        section.notes.append(
            f"The table is partial: {sum(len(m[2].split(', ')) for m in missing)} run(s) missing "
            f"in {len(missing)} cell(s) (table 'Missing runs'); analyses use the runs present."
        )


def _tests(conditions, measures, level, alpha, min_seeds) -> list[_Test]:
    tests: list[_Test] = []
    for cond in conditions:
        for other in OTHER_ARMS:
            family = []
            for m in measures:
                _, a, b = paired(by_seed(cond.arms["kd"], m), by_seed(cond.arms[other], m))
                if a:
                    family.append(_Test(cond, other, m, compare_paired(a, b, level)))
            # Largest effect first: the test table is read top down.
            family.sort(key=lambda t: (math.isnan(t.cmp.cohens_dz), -abs(t.cmp.cohens_dz)))
            # Comparisons with too few seeds make no claim, so they do not enter the family.
            p_t = holm([t.cmp.t_test.p if t.cmp.n >= min_seeds else math.nan for t in family])
            p_w = holm([t.cmp.wilcoxon.p if t.cmp.n >= min_seeds else math.nan for t in family])
            for t, pt, pw in zip(family, p_t, p_w, strict=True):
                t.p_t_adj, t.p_w_adj = float(pt), float(pw)
                t.verdict = w.paired_verdict(t.cmp, t.p_t_adj, alpha, min_seeds, "kd")
            tests += family
    return tests


def _arm_table(conditions, measures, level) -> Table:
    arms = [
        a
        for a in ("control", "kd", "random_control", "teacher_replica")
        if any(c.arms[a] for c in conditions)
    ]
    rows = []
    for cond in conditions:
        for m in measures:
            per_arm = [list(by_seed(cond.arms[a], m).values()) for a in arms]
            if not any(per_arm):
                continue
            cells = [mean_ci(v, level) if v else None for v in per_arm]
            rows.append([cond.label, m, *cells, " / ".join(str(len(v)) for v in per_arm)])
    caption = f"Per arm: mean [{level:.0%} t-interval] over seeds; n per arm in column order"
    return Table(
        ["condition", "measure", *arms, "n per arm"],
        rows,
        caption,
        "ft-arms",
        group=1,
    )


def _test_table(tests: list[_Test], level: float) -> Table:
    records = [
        {
            "condition": t.cond.label,
            "comparison": f"kd vs {t.other}",
            "measure": t.measure,
            "n": t.cmp.n,
            "mean kd": t.cmp.mean_a,
            "mean other": t.cmp.mean_b,
            f"\u0394 kd \u2212 other [{level:.0%} CI]": t.cmp.diff,
            "t": t.cmp.t_test.statistic,
            "p (t)": t.cmp.t_test.p,
            "p Holm (t)": t.p_t_adj,
            "p (Wilcoxon)": t.cmp.wilcoxon.p,
            "p Holm (Wilcoxon)": t.p_w_adj,
            "d_z": t.cmp.cohens_dz,
            "verdict": t.verdict,
        }
        for t in tests
    ]
    caption = (
        "Hypothesis tests, paired by seed: paired t-test and Wilcoxon signed-rank; Holm "
        "across the measures of each comparison; d_z = Cohen's d for paired samples; largest "
        "|d_z| first"
    )
    return Table.from_records(records, caption, "ft-tests", group=2)


def _comparison_sentence(family: list[_Test], alpha: float, min_seeds: int) -> str:
    """One short finding per comparison: how many measures differ, the largest three; the test
    table holds every number."""
    first = family[0]
    ns = sorted({t.cmp.n for t in family})
    n = f"{ns[0]}" if len(ns) == 1 else f"{ns[0]}\u2013{ns[-1]}"
    head = f"{first.cond.label}, kd vs {first.other}:"
    if ns[-1] < min_seeds:
        return f"{head} only n = {n} paired seed(s) (< {min_seeds}), so no claim is made."
    testable = [t for t in family if not math.isnan(t.p_t_adj)]
    sig = [t for t in testable if t.p_t_adj < alpha]
    how = f"(paired t, n = {n} seeds, Holm, \u03b1 = {alpha})"
    if not sig:
        return f"{head} no significant difference for any of the {len(testable)} measures {how}."
    shown = "; ".join(f"{t.measure} {w.ci(t.cmp.diff)} ({_closer(t)})" for t in sig[:3])
    more = f"; {len(sig) - 3} more in the test table" if len(sig) > 3 else ""
    return f"{head} {len(sig)} of {len(testable)} measures differ {how}, largest: {shown}{more}."


def _quiet(family: list[_Test], alpha: float, min_seeds: int) -> bool:
    """Tested with enough seeds, and no measure significant after Holm."""
    tested = [t for t in family if t.cmp.n >= min_seeds and not math.isnan(t.p_t_adj)]
    return bool(tested) and all(t.p_t_adj >= alpha for t in tested)


def _closer(t: _Test) -> str:
    direction = "higher" if t.cmp.diff.value > 0 else "lower"
    closer_when_higher = MEASURES.get(t.measure, ("", None))[1]
    if closer_when_higher is None:
        return f"kd {direction}"
    toward = (t.cmp.diff.value > 0) == closer_when_higher
    return f"kd {direction}, {'closer to' if toward else 'further from'} the teacher"


def _agreement_figure(conditions: list[Condition], level: float) -> Figure:
    arms = [a for a in (*ARMS_SHOWN, "teacher_replica") if any(c.arms[a] for c in conditions)]
    panels = {
        title: {arm: [_estimate(c.arms[arm], m, level) for c in conditions] for arm in arms}
        for m, title in (("agree_C", "C: teacher correct"), ("agree_I", "I: teacher wrong"))
    }
    figure = plots.grouped_bars(
        panels,
        [c.short for c in conditions],
        "top-1 agreement with teacher",
        "Agreement on C and I per arm",
    )
    return Figure(
        figure,
        f"Top-1 agreement with the teacher per arm, mean with {level:.0%} t-interval over seeds",
        "ft-fig-agreement",
    )


def _estimate(rows: list[Row], measure: str, level: float):
    values = list(by_seed(rows, measure).values())
    return mean_ci(values, level) if values else None
