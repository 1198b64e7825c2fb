"""Functional-transfer analysis (shared/specs/functional-transfer.md): does the student learn the
teacher's function, or is KD a regulariser? After Mason-Williams et al., "Rethinking Knowledge
Distillation: A Data Dependent Regulariser With a Negative Asymmetric Payoff" (arXiv 2510.12615).

Input: the tidy table of runs (:mod:`kdscope.analysis.tidy`). A *condition* is one KD setting,
(study, dataset, teacher, student, method, alpha, temperature); its control is the ``control`` arm
with the same (study, dataset, teacher, student), its random control the ``random_control`` arm
with the same condition, its ceiling the ``teacher_replica`` arm of (study, dataset, teacher).
Arms are paired by seed. Output: one report :class:`~kdscope.analysis.report.Section` with tables
``ft-arms``, ``ft-tests``, ``ft-payoff`` (and ``ft-sweeps``, ``ft-missing`` when there are sweeps
or missing runs) and figures ``ft-fig-agreement``, ``ft-fig-payoff``, ``ft-fig-sweep-<param>``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from kdscope.analysis import _words as w
from kdscope.analysis import plots
from kdscope.analysis.report import Figure, Section, Table
from kdscope.analysis.stats import PairedComparison, compare_paired, holm, mean_ci
from kdscope.analysis.tidy import (
    ID_COLUMNS,
    MEASURES,
    Row,
    by_seed,
    check_rows,
    group,
    natural_key,
    number,
    paired,
    present_measures,
)

CONDITION = ("study", "dataset", "teacher", "student", "method", "alpha", "temperature")
BASELINE = CONDITION[:4]
REPLICA = CONDITION[:3]
DEFAULT_MEASURES = (
    "accuracy", "agree_all", "agree_C", "agree_I", "same_wrong_I",
    "kl_all", "kl_C", "kl_I", "js_all", "js_C", "js_I",
    "l2_all", "l2_C", "l2_I", "cos_all", "cos_C", "cos_I", "ece",
)  # fmt: skip
SWEEP_MEASURES = ("agree_all", "agree_C", "agree_I")
SWEEP_PARAMS = ("alpha", "temperature", "student")
OTHER_ARMS = ("control", "random_control")


@dataclass
class _Condition:
    key: tuple
    label: str
    short: str
    arms: dict[str, list[Row]] = field(default_factory=dict)


@dataclass
class _Test:
    cond: _Condition
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
    wanted = list(measures or DEFAULT_MEASURES)
    measures = present_measures(rows, wanted)
    section = Section(title, id="functional-transfer")
    absent = [m for m in wanted if m not in measures]
    if measures is not None and absent and wanted != list(DEFAULT_MEASURES):
        section.notes.append(f"Measures not in the table, not analysed: {', '.join(absent)}.")
    conditions = _conditions(rows)
    if not conditions:
        section.notes.append("The table has no 'kd' runs: there is nothing to analyse.")
        return section
    _report_missing(rows, conditions, section)
    tests = _tests(conditions, measures, level, alpha, min_seeds)
    section.blocks.append(_arm_table(conditions, measures, level))
    section.blocks.append(_test_table(tests, level))
    for cond in conditions:
        for other in OTHER_ARMS:
            family = [t for t in tests if t.cond is cond and t.other == other]
            if family:
                section.findings.append(_comparison_sentence(family, alpha, min_seeds))
            elif other == "control" or cond.arms.get("random_control"):
                section.notes.append(f"{cond.label}: no paired kd/{other} runs, not tested.")
    if not any(c.arms.get("random_control") for c in conditions):
        section.notes.append("No random_control runs: KD vs random-control is not tested.")
    note = w.wilcoxon_floor_note({t.cmp.n for t in tests if t.cmp.n >= min_seeds}, alpha)
    if note:
        section.notes.append(note)
    _payoff(conditions, level, alpha, min_seeds, section)
    section.blocks.append(_agreement_figure(conditions, level))
    _sweeps(conditions, tests, section)
    return section


def _conditions(rows: Sequence[Row]) -> list[_Condition]:
    arms = {arm: [r for r in rows if r["arm"] == arm] for arm in ("kd", *OTHER_ARMS, "teacher_replica")}
    kd = group(arms["kd"], CONDITION)
    controls = group(arms["control"], BASELINE)
    randoms = group(arms["random_control"], CONDITION)
    replicas = group(arms["teacher_replica"], REPLICA)
    multi_study = len({r["study"] for r in rows}) > 1
    varying = [i for i in range(len(CONDITION)) if len({k[i] for k in kd}) > 1]
    out = []
    for key, kd_rows in kd.items():
        cond = _Condition(key, _label(key, range(len(CONDITION)) if multi_study else range(1, 7)),
                          _label(key, varying) or str(key[4]))
        cond.arms = {
            "control": controls.get(key[:4], []),
            "kd": kd_rows,
            "random_control": randoms.get(key, []),
            "teacher_replica": replicas.get(key[:3], []),
        }
        out.append(cond)
    return out


def _label(key: tuple, fields) -> str:
    study, dataset, teacher, student, method, a, t = key
    parts = {
        0: f"[{study}]", 1: f"{dataset}:", 2: f"{teacher}\u2192", 3: student, 4: method,
        5: f"\u03b1={a:g}" if a is not None else "", 6: f"T={t:g}" if t is not None else "",
    }  # fmt: skip
    fields = set(fields)
    pair = f"{parts[2]}{parts[3]}" if {2, 3} <= fields else parts[2].rstrip("\u2192") if 2 in fields else parts[3] if 3 in fields else ""
    text = " ".join(p for p in (parts[0] if 0 in fields else "", parts[1] if 1 in fields else "", pair) if p)
    tail = " ".join(parts[i] for i in (4, 5, 6) if i in fields and parts[i])
    return f"{text}, {tail}" if text and tail else text or tail


def _report_missing(rows: Sequence[Row], conditions: list[_Condition], section: Section) -> None:
    seeds = {s: sorted({int(r["seed"]) for r in rs if r["arm"] != "teacher_replica"})
             for (s,), rs in group(rows, ("study",)).items()}  # fmt: skip
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
        section.blocks.append(Table(["condition", "arm", "missing seeds"], missing,
                                    "Missing runs: cells of the grid with no result", "ft-missing"))
        section.notes.append(
            f"The table is partial: {sum(len(m[2].split(', ')) for m in missing)} run(s) missing in "
            f"{len(missing)} cell(s) (table 'Missing runs'); analyses use the runs present."
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
            claimable = [t.cmp.n >= min_seeds for t in family]
            p_t = holm([t.cmp.t_test.p if ok else math.nan for t, ok in zip(family, claimable)])
            p_w = holm([t.cmp.wilcoxon.p if ok else math.nan for t, ok in zip(family, claimable)])
            for t, pt, pw in zip(family, p_t, p_w):
                t.p_t_adj, t.p_w_adj = float(pt), float(pw)
                t.verdict = w.test_verdict(t.cmp, t.p_t_adj, alpha, min_seeds, "kd", other)
            tests += family
    return tests


def _arm_table(conditions, measures, level) -> Table:
    arms = [a for a in ("control", "kd", "random_control", "teacher_replica")
            if any(c.arms[a] for c in conditions)]  # fmt: skip
    rows = []
    for cond in conditions:
        for m in measures:
            per_arm = [list(by_seed(cond.arms[a], m).values()) for a in arms]
            if not any(per_arm):
                continue
            cells = [mean_ci(v, level) if v else None for v in per_arm]
            rows.append([cond.label, m, *cells, " / ".join(str(len(v)) for v in per_arm)])
    caption = f"Per arm: mean [{level:.0%} t-interval] over seeds"
    return Table(["condition", "measure", *arms, f"n ({' / '.join(arms)})"], rows, caption, "ft-arms")


def _test_table(tests: list[_Test], level: float) -> Table:
    rows = [
        [t.cond.label, f"kd vs {t.other}", t.measure, t.cmp.n, t.cmp.mean_a, t.cmp.mean_b,
         t.cmp.diff, t.cmp.t_test.statistic, t.cmp.t_test.p, t.p_t_adj, t.cmp.wilcoxon.p,
         t.p_w_adj, t.cmp.cohens_dz, t.verdict]
        for t in tests
    ]  # fmt: skip
    columns = ["condition", "comparison", "measure", "n", "mean kd", "mean other",
               f"\u0394 kd \u2212 other [{level:.0%} CI]", "t", "p (t)", "p Holm (t)",
               "p (Wilcoxon)", "p Holm (Wilcoxon)", "d_z", "verdict"]  # fmt: skip
    caption = ("Hypothesis tests, paired by seed: paired t-test and Wilcoxon signed-rank; Holm "
               "across the measures of each comparison; d_z = Cohen's d for paired samples")  # fmt: skip
    return Table(columns, rows, caption, "ft-tests")


def _comparison_sentence(family: list[_Test], alpha: float, min_seeds: int) -> str:
    first = family[0]
    ns = sorted({t.cmp.n for t in family})
    n = f"{ns[0]}" if len(ns) == 1 else f"{ns[0]}\u2013{ns[-1]}"
    head = f"{first.cond.label}: kd vs {first.other}"
    if ns[-1] < min_seeds:
        return (f"{head}: only n = {n} paired seed(s) (< {min_seeds}), so no claim is made; the "
                "test table lists the numbers.")  # fmt: skip
    testable = [t for t in family if not math.isnan(t.p_t_adj)]
    sig = [t for t in testable if t.p_t_adj < alpha]
    text = (f"{head}, paired t-test over n = {n} seeds, Holm across {len(testable)} measures "
            f"(\u03b1 = {alpha}): ")  # fmt: skip
    if sig:
        items = "; ".join(
            f"{t.measure} {w.ci(t.cmp.diff)} ({_closer(t)}, p = {w.pval(t.cmp.t_test.p)}, "
            f"Holm p = {w.pval(t.p_t_adj)}, d_z = {w.num(t.cmp.cohens_dz)})"
            for t in sig
        )
        text += f"significant for {len(sig)} of {len(testable)}: {items}"
    else:
        text += f"no significant difference for any of the {len(testable)} measures"
    rest = [t for t in testable if t not in sig]
    if rest:
        best = min(rest, key=lambda t: t.p_t_adj)
        text += (f"{'; not significant for the other ' + str(len(rest)) if sig else ''} (smallest "
                 f"Holm p = {w.pval(best.p_t_adj)} for {best.measure}, "
                 f"\u0394 = {w.signed(best.cmp.diff.value)}, raw p = {w.pval(best.cmp.t_test.p)})")  # fmt: skip
    return text + "."


def _closer(t: _Test) -> str:
    direction = "higher" if t.cmp.diff.value > 0 else "lower"
    if t.measure not in MEASURES or t.measure == "accuracy":
        return f"kd {direction}"
    toward = (t.cmp.diff.value > 0) == MEASURES[t.measure][1]
    return f"kd {direction}, {'closer to' if toward else 'further from'} the teacher"


def _payoff(conditions, level, alpha, min_seeds, section: Section) -> None:
    results = []
    for cond in conditions:
        ctrl, kd = cond.arms["control"], cond.arms["kd"]
        maps = [by_seed(arm, m) for arm in (ctrl, kd) for m in ("agree_C", "agree_I")]
        seeds = sorted(set.intersection(*(set(x) for x in maps)))
        if not seeds:
            continue
        c_c, c_i, k_c, k_i = ([x[s] for s in seeds] for x in maps)
        d_c = [k - c for k, c in zip(k_c, c_c)]
        d_i = [k - c for k, c in zip(k_i, c_i)]
        ok = [i for i in range(len(seeds)) if c_c[i] < 1 and c_i[i] < 1]
        rel_c = [d_c[i] / (1 - c_c[i]) for i in ok]
        rel_i = [d_i[i] / (1 - c_i[i]) for i in ok]
        if len(ok) < len(seeds):
            section.notes.append(f"{cond.label}: {len(seeds) - len(ok)} seed(s) with no headroom "
                                 "(control agreement 1) left out of the relative payoff.")  # fmt: skip
        results.append((cond, compare_paired(d_i, d_c, level), compare_paired(rel_i, rel_c, level)))
    if not results:
        section.notes.append("No condition has kd and control runs with agree_C and agree_I: "
                             "the asymmetric payoff is not computed.")  # fmt: skip
        return
    p_adj = holm([rel.t_test.p if rel.n >= min_seeds else math.nan for _, _, rel in results])
    rows = []
    for (cond, absolute, rel), p in zip(results, p_adj):
        verdict = w.seeds_verdict(rel.n, min_seeds)
        if verdict is None:
            verdict = ("not testable" if math.isnan(p) else
                       "no significant asymmetry" if p >= alpha else
                       "negative asymmetric payoff: relatively more of the teacher's errors taken on"
                       if rel.diff.value > 0 else
                       "positive asymmetric payoff: relatively more of the teacher's correct answers")  # fmt: skip
        rows.append([cond.label, rel.n, mean_ci(_col(absolute, "b"), level),
                     mean_ci(_col(absolute, "a"), level), absolute.diff, absolute.t_test.p,
                     mean_ci(_col(rel, "b"), level), mean_ci(_col(rel, "a"), level), rel.diff,
                     rel.t_test.p, rel.wilcoxon.p, float(p), verdict])  # fmt: skip
        section.findings.append(
            f"{cond.label}: asymmetric payoff over n = {rel.n} seeds: \u0394C = "
            f"{w.ci(rows[-1][2])}, \u0394I = {w.ci(rows[-1][3])}; relative to headroom "
            f"\u0394C/(1\u2212agree_C) = {w.ci(rows[-1][6])}, \u0394I/(1\u2212agree_I) = "
            f"{w.ci(rows[-1][7])}; difference I \u2212 C = {w.ci(rel.diff)}, paired t p = "
            f"{w.pval(rel.t_test.p)}, Holm p = {w.pval(float(p))} (over {len(results)} "
            f"condition(s)), Wilcoxon p = {w.pval(rel.wilcoxon.p)}: {verdict}."
        )
    columns = ["condition", "n", "\u0394C", "\u0394I", "\u0394I \u2212 \u0394C", "p (t), abs.",
               "\u0394C / headroom", "\u0394I / headroom", "rel. \u0394I \u2212 \u0394C", "p (t), rel.",
               "p (Wilcoxon), rel.", "p Holm (t), rel.", "verdict"]  # fmt: skip
    caption = (f"Asymmetric payoff: \u0394 = agreement(kd) \u2212 agreement(control) on C (teacher "
               f"correct) and I (teacher wrong), per seed; headroom = 1 \u2212 control agreement; "
               f"mean [{level:.0%} CI]; Holm across conditions")  # fmt: skip
    section.blocks.append(Table(columns, rows, caption, "ft-payoff"))
    section.blocks.append(Figure(
        plots.grouped_bars({"gain relative to headroom": {
            "\u0394C / headroom": [r[6] for r in rows], "\u0394I / headroom": [r[7] for r in rows]}},
            [c.short for c, _, _ in results], "kd \u2212 control, relative",
            "Asymmetric payoff (positive I > C: the student takes on the teacher's errors)"),
        "Relative agreement gain over the control on C and I, mean with CI over seeds",
        "ft-fig-payoff"))  # fmt: skip


def _col(cmp: PairedComparison, which: str) -> list[float]:
    """The per-seed values of side a or b, recovered from mean and differences is not possible,
    so comparisons keep their inputs: see _payoff; this reads them back."""
    return cmp.inputs[0] if which == "a" else cmp.inputs[1]
