"""The asymmetric payoff of functional transfer (shared/specs/functional-transfer.md): how much
more of the teacher's errors (I = teacher incorrect) than of its correct answers (C) the KD student
takes on over the independent control, after Mason-Williams et al. (arXiv 2510.12615).

Per seed: Delta_C = agree_C(kd) - agree_C(control), Delta_I likewise; relative to headroom
Delta / (1 - agreement(control)). The payoff is negative asymmetric when the relative Delta_I
exceeds the relative Delta_C significantly (paired t-test over seeds, Holm across conditions).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from kdscope.analysis import _words as w
from kdscope.analysis import plots
from kdscope.analysis.report import Figure, Section, Table
from kdscope.analysis.stats import compare_paired, holm, mean_ci
from kdscope.analysis.tidy import Row, by_seed

CONDITION = ("study", "dataset", "teacher", "student", "method", "alpha", "temperature")


@dataclass
class Condition:
    """One KD setting (``key`` over :data:`CONDITION`), its labels for
    tables (``label``) and plots (``short``: only the fields that vary), and the rows of each arm
    compared with it."""

    key: tuple
    label: str
    short: str
    arms: dict[str, list[Row]] = field(default_factory=dict)


def condition_label(key: tuple, show: set[str]) -> str:
    """'fmnist / resnet56\u2192resnet20, kd \u03b1=0.9 T=4' with only the ``show`` fields."""
    study, dataset, teacher, student, method, a, t = key
    head = [f"[{study}]"] if "study" in show else []
    head += [f"{dataset} /"] if "dataset" in show else []
    if "teacher" in show:
        head.append(f"{teacher}\u2192{student}" if "student" in show else f"teacher {teacher}")
    elif "student" in show:
        head.append(str(student))
    tail = [str(method)] if "method" in show else []
    tail += [f"\u03b1={a:g}"] if "alpha" in show and a is not None else []
    tail += [f"T={t:g}"] if "temperature" in show and t is not None else []
    return ", ".join(x for x in (" ".join(head).rstrip(" /"), " ".join(tail)) if x)


def add_payoff(
    conditions: Sequence[Condition], level: float, alpha: float, min_seeds: int, section: Section
) -> None:
    """Delta_C, Delta_I per seed (kd - control agreement), relative forms Delta / (1 - control)."""
    results = []
    for cond in conditions:
        maps = [by_seed(cond.arms[a], m) for a in ("control", "kd") for m in ("agree_C", "agree_I")]
        seeds = sorted(set.intersection(*(set(x) for x in maps)))
        if not seeds:
            continue
        c_c, c_i, k_c, k_i = ([x[s] for s in seeds] for x in maps)
        d_c = [k - c for k, c in zip(k_c, c_c, strict=True)]
        d_i = [k - c for k, c in zip(k_i, c_i, strict=True)]
        ok = [j for j in range(len(seeds)) if c_c[j] < 1 and c_i[j] < 1]
        if len(ok) < len(seeds):
            section.notes.append(
                f"{cond.label}: {len(seeds) - len(ok)} seed(s) with no headroom "
                "(control agreement 1) left out of the relative payoff."
            )
        rel_c = [d_c[j] / (1 - c_c[j]) for j in ok]
        rel_i = [d_i[j] / (1 - c_i[j]) for j in ok]
        results.append((cond, d_c, d_i, rel_c, rel_i))
    if not results:
        section.notes.append(
            "No condition has kd and control runs with agree_C and agree_I: "
            "the asymmetric payoff is not computed."
        )
        return
    absolute = [compare_paired(d_i, d_c, level) for _, d_c, d_i, _, _ in results]
    relative = [compare_paired(r_i, r_c, level) for _, _, _, r_c, r_i in results]
    p_adj = holm([r.t_test.p if r.n >= min_seeds else math.nan for r in relative])
    rows = []
    for (cond, d_c, d_i, rel_c, rel_i), ab, rel, p in zip(
        results, absolute, relative, p_adj, strict=True
    ):
        p = float(p)
        est = [mean_ci(x, level) for x in (d_c, d_i, rel_c, rel_i)]
        verdict = w.seeds_verdict(rel.n, min_seeds) or (
            "not testable"
            if math.isnan(p)
            else "no significant asymmetry"
            if p >= alpha
            else "negative asymmetric payoff: relatively more of the teacher's errors taken on"
            if rel.diff.value > 0
            else "positive asymmetric payoff: relatively more of the teacher's correct answers"
        )
        rows.append(
            {
                "condition": cond.label,
                "n": rel.n,
                "\u0394C": est[0],
                "\u0394I": est[1],
                "\u0394I \u2212 \u0394C": ab.diff,
                "p (t), abs.": ab.t_test.p,
                "\u0394C / headroom": est[2],
                "\u0394I / headroom": est[3],
                "rel. \u0394I \u2212 \u0394C": rel.diff,
                "p (t), rel.": rel.t_test.p,
                "p (Wilcoxon), rel.": rel.wilcoxon.p,
                "p Holm (t), rel.": p,
                "verdict": verdict,
            }
        )
        if len(results) == 1 or verdict != "no significant asymmetry":
            section.findings.append(
                f"{cond.label}, asymmetric payoff: relative \u0394I \u2212 \u0394C = "
                f"{w.ci(rel.diff)} (n = {rel.n} seeds, paired t, Holm {w.peq('p', p)}): {verdict}."
            )
    quiet = [r for r in rows if r["verdict"] == "no significant asymmetry"]
    if len(results) > 1 and quiet:
        smallest = min(r["p Holm (t), rel."] for r in quiet)
        section.findings.append(
            f"Asymmetric payoff: no significant asymmetry in {len(quiet)} of {len(results)} "
            f"conditions (paired t, Holm across conditions, smallest Holm {w.peq('p', smallest)}); "
            "the table 'Asymmetric payoff' has each."
        )
    caption = (
        f"Asymmetric payoff: \u0394 = agreement(kd) \u2212 agreement(control) on C (teacher "
        f"correct) and I (teacher wrong), per seed; headroom = 1 \u2212 control agreement; "
        f"mean [{level:.0%} CI]; Holm across conditions"
    )
    section.blocks.append(Table.from_records(rows, caption, "ft-payoff"))
    figure = plots.grouped_bars(
        {
            "gain over the control relative to headroom": {
                "\u0394C / (1 \u2212 agree_C)": [r["\u0394C / headroom"] for r in rows],
                "\u0394I / (1 \u2212 agree_I)": [r["\u0394I / headroom"] for r in rows],
            }
        },
        [c.short for c, *_ in results],
        "kd \u2212 control, relative",
        "Asymmetric payoff (I above C: the student takes on the teacher's errors)",
    )
    section.blocks.append(
        Figure(
            figure, "Relative agreement gains on C and I, mean with CI over seeds", "ft-fig-payoff"
        )
    )
