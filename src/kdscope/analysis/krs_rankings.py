"""Method rankings in the KRS validation (shared/specs/krs-study.md, analyses 4 and 5):
sensitivity, Kendall tau between methods ranked by mean accuracy gain and by mean KRS gain, and
architecture generalisation, Kendall's W of the methods' KRS-gain ranks across teacher/student
pairs, per task. Gains come from :func:`kdscope.analysis.krs_validation.krs_validation`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from kdscope.analysis import _words as w
from kdscope.analysis import plots
from kdscope.analysis.report import Figure, Section, Table
from kdscope.analysis.stats import PairedComparison, holm, kendall_tau, kendalls_w


@dataclass
class Gain:
    """Distilled (a) vs base (b) values of one measure in one (pair, method) cell, by seed."""

    a: list[float]
    b: list[float]
    cmp: PairedComparison


def add_rankings(
    gains: dict[tuple, dict[str, Gain]],
    tasks: Sequence[tuple],
    task_label: dict[tuple, str],
    label: dict[tuple, str],
    few: set[tuple],
    alpha: float,
    min_seeds: int,
    section: Section,
) -> None:
    """Sensitivity (Kendall tau between rankings by accuracy gain and by KRS gain) and
    architecture generalisation (Kendall's W of KRS-gain ranks across pairs), per task."""
    ranking, sensitivity, general, concordance = [], [], [], []
    for task in tasks:
        pairs = list(dict.fromkeys(p for p, _ in gains if p[:2] == task))
        methods = [
            m
            for m in dict.fromkeys(m for p, m in gains if p[:2] == task)
            if all({"accuracy", "krs"} <= set(gains.get((p, m), {})) for p in pairs)
        ]
        dropped = {m for p, m in gains if p[:2] == task} - set(methods)
        if dropped:
            section.notes.append(
                f"{task_label[task]}: method(s) {', '.join(sorted(dropped))} are missing from "
                "some pair and are left out of the rankings."
            )
        acc = np.array([[gains[(p, m)]["accuracy"].cmp.diff.value for m in methods] for p in pairs])
        krs = np.array([[gains[(p, m)]["krs"].cmp.diff.value for m in methods] for p in pairs])
        blocked = any(p in few for p in pairs)
        scopes = [(f"{task_label[task]}, all pairs", acc.mean(axis=0), krs.mean(axis=0))]
        if len(pairs) > 1:
            scopes += [(label[p], acc[j], krs[j]) for j, p in enumerate(pairs)]
        for scope, a, k in scopes:
            sensitivity.append((scope, len(methods), kendall_tau(a, k), blocked))
        ranks_a, ranks_k = _ranks(acc.mean(axis=0)), _ranks(krs.mean(axis=0))
        for j, m in enumerate(methods):
            ranking.append(
                {
                    "task": task_label[task],
                    "method": m,
                    "mean \u0394 accuracy": float(acc[:, j].mean()),
                    "rank by accuracy": ranks_a[j],
                    "mean \u0394 KRS": float(krs[:, j].mean()),
                    "rank by KRS": ranks_k[j],
                }
            )
            for i, p in enumerate(pairs):
                general.append(
                    {
                        "task": task_label[task],
                        "method": m,
                        "pair": label[p],
                        "\u0394 KRS [CI]": gains[(p, m)]["krs"].cmp.diff,
                        "rank in pair": _ranks(krs[i])[j],
                    }
                )
        if len(pairs) > 1 and len(methods) > 1:
            concordance.append((task, len(pairs), len(methods), kendalls_w(krs), blocked))
            section.blocks.append(
                Figure(
                    plots.heatmap(
                        krs.T, methods, [label[p] for p in pairs], "KRS gain", "\u0394 KRS"
                    ),
                    f"KRS gain per method and pair, {task_label[task]}",
                    f"krs-fig-generalisation-{task_label[task]}",
                )
            )
    section.blocks.append(
        Table.from_records(
            ranking, "Methods ranked by mean gain over pairs (1 = largest)", "krs-ranking", 1
        )
    )
    _sensitivity_table(sensitivity, alpha, min_seeds, section)
    section.blocks.append(
        Table.from_records(
            general,
            "Architecture generalisation: KRS gain per method and pair",
            "krs-generalisation",
            group=2,
        )
    )
    _concordance_table(concordance, task_label, alpha, min_seeds, section)


def _ranks(values: np.ndarray) -> list[int]:
    """1 for the largest value; ties share the smallest rank."""
    return [int(r) for r in stats.rankdata(-np.asarray(values), method="min")]


def _sensitivity_table(results, alpha, min_seeds, section: Section) -> None:
    adj = holm([t.p if not blocked and n >= 3 else math.nan for _, n, t, blocked in results])
    records = []
    for (scope, n, tau, blocked), p in zip(results, adj, strict=True):
        if blocked:
            verdict = f"no claim: a cell has < {min_seeds} seeds"
        elif n < 3:
            verdict = "no claim: fewer than 3 methods"
        elif math.isnan(p):
            verdict = "not testable"
        elif p >= alpha:
            verdict = "no significant agreement between the rankings"
        elif tau.r > 0:
            verdict = "rankings agree (significant after Holm)"
        else:
            verdict = "rankings are reversed (significant negative tau after Holm)"
        records.append(
            {
                "scope": scope,
                "methods": n,
                "Kendall tau": tau.r,
                "p": tau.p,
                "p Holm": float(p),
                "verdict": verdict,
            }
        )
        if scope.endswith(", all pairs"):
            section.findings.append(
                f"Ranking sensitivity on {scope}: Kendall tau between methods ranked by mean "
                f"accuracy gain and by mean KRS gain = {w.num(tau.r)} (n = {n} methods, "
                f"{w.peq('p', tau.p)}, Holm {w.peq('p', float(p))}): {verdict}."
            )
    caption = (
        "Ranking sensitivity: Kendall tau-b between method rankings by accuracy gain and by KRS "
        "gain; Holm over the rows"
    )
    section.blocks.append(Table.from_records(records, caption, "krs-sensitivity"))
    floor = sorted({n for _, n, _, _ in results if n > 2 and 2 / math.factorial(n) >= alpha})
    if floor:
        section.notes.append(
            f"With {', '.join(map(str, floor))} methods the exact Kendall tau test cannot give p "
            f"below {w.pval(2 / math.factorial(max(floor)))}, so ranking agreement cannot be "
            f"significant at {alpha}: more methods are needed."
        )


def _concordance_table(results, task_label, alpha, min_seeds, section: Section) -> None:
    records = []
    for task, m, n, res, blocked in results:
        if blocked:
            verdict = f"no claim: a cell has < {min_seeds} seeds"
        elif n < 3:
            verdict = "no claim: fewer than 3 methods"
        elif res.p < alpha:
            verdict = "method ranks hold across pairs"
        else:
            verdict = "no significant concordance of method ranks across pairs"
        records.append(
            {
                "task": task_label[task],
                "pairs": m,
                "methods": n,
                "Kendall W": res.statistic,
                "p": res.p,
                "verdict": verdict,
            }
        )
        section.findings.append(
            f"Architecture generalisation on {task_label[task]}: Kendall's W of the methods' "
            f"KRS-gain ranks across {m} pairs = {w.num(res.statistic)} (n = {n} methods, "
            f"chi-square {w.peq('p', res.p)}, one test per task, no correction): {verdict}."
        )
    if not records:
        section.notes.append("Architecture generalisation needs at least 2 pairs and 2 methods.")
        return
    caption = "Concordance of methods' KRS-gain ranks across pairs (Kendall's W, chi-square p)"
    section.blocks.append(Table.from_records(records, caption, "krs-concordance"))
