"""KRS validation analysis (shared/specs/krs-study.md), after Alba & Villaverde 2025: does the
Knowledge Retention Score track what distillation does to a student?

Input: the tidy table of runs (:mod:`kdscope.analysis.tidy`) with ``accuracy``, ``krs``, ``fss``
and ``aoa``, and ``task`` (``classification`` when absent): for segmentation and detection
``accuracy`` holds the task's score (test mean IoU, mAP@[.5:.95]) and the correlation is read
against the paper's r for that task. A *pair* is (study, dataset, teacher, student); its base
student is the ``control`` arm (trained on labels alone, "before KD"), its distilled students the
``kd`` arm, one cell per method; runs are paired with the base by seed. A *task* is (study,
dataset): correlations, rankings and concordance are computed within a task. Output: one report
:class:`~kdscope.analysis.report.Section` with tables ``krs-before-after``, ``krs-gains``,
``krs-correlation``, ``krs-ablation``, ``krs-ranking``, ``krs-sensitivity``,
``krs-generalisation``, ``krs-concordance`` (and ``krs-missing`` when runs are missing), the
lead figure ``krs-fig-correlation`` (the scatter of KRS against the task score, which answers the
question) and figures ``krs-fig-before-after``, ``krs-fig-ablation``,
``krs-fig-generalisation-<task>``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from kdscope.analysis import _words as w
from kdscope.analysis import plots
from kdscope.analysis.krs_rankings import Gain, add_rankings
from kdscope.analysis.report import Figure, Lead, Section, Table
from kdscope.analysis.stats import (
    Correlation,
    Estimate,
    PairedComparison,
    compare_paired,
    holm,
    mean_ci,
    pearson,
    spearman,
)
from kdscope.analysis.tidy import ID_COLUMNS, Row, by_seed, check_rows, group, number, paired

PAIR = ("study", "dataset", "teacher", "student")
MEASURES = ("accuracy", "krs", "fss", "aoa")
ARMS_READ = ("control", "kd")
BASE = "base (no KD)"
# Alba & Villaverde 2025: Pearson r of KRS with the task metric across runs, per task family.
# The paper has no language models: their correlation is computed and not compared.
PAPER_R = {"classification": 0.943, "detection": 0.884, "segmentation": 0.968}
SCORE = {
    "classification": "accuracy",
    "detection": "mAP@[.5:.95]",
    "segmentation": "mean IoU",
    "language-modelling": "token accuracy",
}


def krs_validation(
    rows: Sequence[Row],
    *,
    level: float = 0.95,
    alpha: float = 0.05,
    min_seeds: int = 3,
    paper_r: Mapping[str, float] = PAPER_R,
    title: str = "KRS validation",
) -> Section:
    """The paper's four validations of KRS plus before/after: base vs distilled students (with
    FSS and AOA), Pearson/Spearman of KRS vs the task score across runs, the FSS/AOA ablation per
    method, Kendall tau between method rankings by accuracy gain and by KRS gain, and Kendall's W
    of the methods' KRS-gain ranks across pairs. Claims need ``min_seeds`` seeds in every cell
    involved; with fewer, numbers are shown and the verdict says no claim is made.
    """
    check_rows(rows, ID_COLUMNS)
    section = Section(title, id="krs-validation")
    rows = [r for r in rows if r["arm"] in ARMS_READ]
    # A cell is (pair, student name): the base student, whatever its method is called, or a method.
    cells: dict[tuple, list[Row]] = {}
    for r in rows:
        name = BASE if r["arm"] == "control" else str(r["method"])
        cells.setdefault((*(r[k] for k in PAIR), name), []).append(r)
    pairs = group(rows, PAIR)
    if not any(k[-1] != BASE for k in cells) or not any(k[-1] == BASE for k in cells):
        section.notes.append("KRS validation needs base (control) and distilled (kd) runs.")
        return section
    multi = len({r["study"] for r in rows}) > 1, len({r["dataset"] for r in rows}) > 1
    label = {p: _pair_label(p, *multi) for p in pairs}
    few = _check_grid(rows, cells, label, min_seeds, section)
    gains = _gains(cells, level)
    section.blocks += _before_after(cells, label, level)
    _gain_table(gains, label, alpha, min_seeds, section)
    tasks = group(rows, PAIR[:2])
    task_label = {t: f"[{t[0]}] {t[1]}" if multi[0] else str(t[1]) for t in tasks}
    kinds = {t: _task_kind(r) for t, r in tasks.items()}
    dense = sorted({k for k in kinds.values() if k != "classification"})
    if dense:
        section.notes.append(
            "The 'accuracy' columns hold each task's score: "
            + "; ".join(f"{k}, test {SCORE[k]}" for k in dense)
            + "."
        )
    _correlation(tasks, task_label, kinds, label, few, level, alpha, min_seeds, paper_r, section)
    _ablation(gains, tasks, task_label, few, level, alpha, min_seeds, section)
    add_rankings(gains, tasks, task_label, label, few, alpha, min_seeds, section)
    return section


def _pair_label(pair: tuple, multi_study: bool, multi_dataset: bool) -> str:
    study, dataset, teacher, student = pair
    prefix = (f"[{study}] " if multi_study else "") + (f"{dataset} / " if multi_dataset else "")
    return f"{prefix}{teacher}\u2192{student}"


def _task_kind(rows) -> str:
    kinds = {r.get("task") or "classification" for r in rows}
    if len(kinds) > 1 or not kinds <= set(SCORE):
        raise ValueError(
            f"the runs of one dataset must share one task of {sorted(SCORE)}, got {sorted(kinds)}"
        )
    return kinds.pop()


def _check_grid(rows, cells, label, min_seeds, section: Section) -> set[tuple]:
    """Report missing runs (pairs x methods x seeds of each study) and return the pairs with a
    cell of fewer than ``min_seeds`` seeds."""
    missing, few = [], set()
    for study_rows in group(rows, ("study",)).values():
        seeds = sorted({int(r["seed"]) for r in study_rows})
        methods = sorted({str(r["method"]) for r in study_rows if r["arm"] == "kd"})
        for pair in group(study_rows, PAIR):
            for name in (BASE, *methods):
                have = {int(r["seed"]) for r in cells.get((*pair, name), [])}
                if len(have) < min_seeds:
                    few.add(pair)
                lost = [s for s in seeds if s not in have]
                if lost:
                    missing.append([label[pair], name, ", ".join(map(str, lost))])
    if missing:
        section.blocks.append(
            Table(["pair", "method", "missing seeds"], missing, "Missing runs", "krs-missing")
        )
        section.notes.append(
            f"The table is partial: runs are missing in {len(missing)} cell(s) (table 'Missing "
            "runs'); analyses use the runs present."
        )
    if few:
        names = ", ".join(label[p] for p in few)
        section.notes.append(
            f"Pairs with a cell of fewer than {min_seeds} seeds: {names}; no claim is made from "
            "them."
        )
    return few


def _gains(cells, level) -> dict[tuple, dict[str, Gain]]:
    """(pair, method) -> measure -> distilled vs base, paired by seed."""
    out: dict[tuple, dict[str, Gain]] = {}
    for key, kd_rows in cells.items():
        if key[-1] == BASE:
            continue
        base = cells.get((*key[:4], BASE), [])
        for m in MEASURES:
            _, a, b = paired(by_seed(kd_rows, m), by_seed(base, m))
            if a:
                out.setdefault((key[:4], key[4]), {})[m] = Gain(a, b, compare_paired(a, b, level))
    return out


def _before_after(cells, label, level) -> list:
    records, panels = [], {"KRS": {}, "accuracy": {}}
    order = sorted(cells, key=lambda k: (k[:4], k[-1] != BASE, k[-1]))
    for key in order:
        est = {m: _mean(cells[key], m, level) for m in MEASURES}
        records.append(
            {"pair": label[key[:4]], "student": key[-1], "n": len(cells[key])}
            | {m.upper() if m != "accuracy" else m: est[m] for m in MEASURES}
        )
        for panel, m in (("KRS", "krs"), ("accuracy", "accuracy")):
            panels[panel].setdefault(label[key[:4]], {})[key[-1]] = est[m]
    methods = list(dict.fromkeys(k[-1] for k in order))
    figure = plots.grouped_bars(
        {
            p: {pair: [v.get(m) for m in methods] for pair, v in s.items()}
            for p, s in panels.items()
        },
        methods,
        "value",
        "Before (base) and after KD",
    )
    caption = f"Before/after KD: mean [{level:.0%} t-interval] over seeds per student"
    return [
        Table.from_records(records, caption, "krs-before-after", group=1),
        Figure(figure, "KRS and accuracy of base and distilled students", "krs-fig-before-after"),
    ]


def _mean(rows, measure, level):
    values = list(by_seed(rows, measure).values())
    return mean_ci(values, level) if values else None


def _gain_table(gains, label, alpha, min_seeds, section: Section) -> None:
    """One row per (pair, method): its gains over the base student, each claim resting on the
    seeds those two cells share."""
    keys = list(gains)
    adj = {
        m: holm([_p(gains[k][m].cmp if m in gains[k] else None, False, min_seeds) for k in keys])
        for m in ("accuracy", "krs")
    }
    records = []
    for i, (pair, method) in enumerate(keys):
        g = gains[(pair, method)]
        record = {"pair": label[pair], "method": method, "n": max(x.cmp.n for x in g.values())}
        for m in ("accuracy", "krs"):
            c = g[m].cmp if m in g else None
            name = "KRS" if m == "krs" else m
            record |= {
                f"\u0394 {name} [CI]": c.diff if c else None,
                f"p {name}": c.t_test.p if c else None,
                f"p Holm {name}": float(adj[m][i]),
                f"verdict {name}": _verdict(c, adj[m][i], alpha, min_seeds, False),
            }
        records.append(record)
    caption = (
        "Gains over the base student, paired by seed (paired t-test; Holm across all "
        "pair x method cells, per measure)"
    )
    section.blocks.append(Table.from_records(records, caption, "krs-gains", group=1))


def _p(c: PairedComparison | None, blocked: bool, min_seeds: int) -> float:
    """The p-value that enters a Holm family: NaN (no claim) when blocked or too few seeds."""
    return math.nan if c is None or blocked or c.n < min_seeds else c.t_test.p


def _verdict(c, p_adj, alpha, min_seeds, blocked: bool) -> str:
    if c is None:
        return "not measured"
    if blocked:
        return f"no claim: a cell of this pair has < {min_seeds} seeds"
    return w.paired_verdict(c, float(p_adj), alpha, min_seeds)


def _correlation(tasks, task_label, kinds, label, few, level, alpha, min_seeds, paper_r, section):
    scopes = []
    for task, task_rows in tasks.items():
        scopes.append((task, task_label[task] + ", all pairs", task_rows))
        pairs = group(task_rows, PAIR)
        if len(pairs) > 1:
            scopes += [(task, label[p], r) for p, r in pairs.items()]
    results, panels = [], {}
    for task, scope, scope_rows in scopes:
        pts = [(number(r, "krs"), number(r, "accuracy")) for r in scope_rows]
        pts = [(k, a) for k, a in pts if k is not None and a is not None]
        x, y = [k for k, _ in pts], [a for _, a in pts]
        blocked = any(p in few for p in group(scope_rows, PAIR))
        results.append((task, scope, pearson(x, y, level), spearman(x, y, level), blocked))
        if scope.endswith(", all pairs"):
            groups = group(
                [r for r in scope_rows if number(r, "krs") is not None], ("arm", "method")
            )
            panels[task_label[task]] = {
                (BASE if arm == "control" else m): (
                    [number(r, "krs") for r in g],
                    [number(r, "accuracy") for r in g],
                )
                for (arm, m), g in groups.items()
            }
    adj = holm([r.p if not blocked else math.nan for *_, r, _, blocked in results])
    records, answers = [], []
    for (task, scope, r, rho, blocked), p in zip(results, adj, strict=True):
        kind = kinds[task]
        verdict = _paper_verdict(r, float(p), alpha, paper_r.get(kind), blocked, min_seeds)
        r_cell = _corr_cell(r, level)
        records.append(
            {
                "scope": scope,
                "n runs": r.n,
                "Pearson r [CI]": r_cell,
                "p (Pearson)": r.p,
                "p Holm": float(p),
                "Spearman rho [CI]": _corr_cell(rho, level),
                "p (Spearman)": rho.p,
                "paper r": paper_r.get(kind),
                "verdict": verdict,
            }
        )
        if scope.endswith(", all pairs"):
            what, paper = f"KRS vs {SCORE[kind]} on {scope}", paper_r.get(kind, "none")
            pearson_r = w.ci(r_cell)
            section.findings.append(
                f"{what} (n = {r.n} runs): Pearson r = {pearson_r}, {w.peq('p', r.p)}, Holm "
                f"{w.peq('p', float(p))}; Spearman rho = {w.num(rho.r)}, {w.peq('p', rho.p)}; "
                f"paper r ({kind}) = {paper}: {verdict}."
            )
            answers.append(f"{what}: Pearson r = {pearson_r} (paper: {paper}); {verdict}.")
    caption = (
        f"Correlation of KRS with the student's task score across runs (base and distilled), "
        f"against the paper's r for the task; Pearson "
        f"interval by Fisher z, Spearman by bootstrap ({level:.0%}); Holm over the rows"
    )
    section.blocks.append(Table.from_records(records, caption, "krs-correlation"))
    used = set(kinds.values())
    score = SCORE[used.pop()] if len(used) == 1 else "task score"
    figure = plots.scatter(panels, "KRS", score, f"KRS against {score}, one point per run")
    section.lead = Lead(
        Figure(figure, f"Each run's KRS and {score}", "krs-fig-correlation"), answers
    )
    section.notes.append(
        "Pooled correlations mix pairs whose accuracy and KRS levels differ, so between-pair "
        "differences can drive r; per-pair rows are shown when a task has several pairs."
    )


def _corr_cell(c: Correlation, level: float) -> Estimate:
    return Estimate(c.r, c.low, c.high, c.n, level)


def _paper_verdict(r, p_adj, alpha, paper_r, blocked, min_seeds) -> str:
    if blocked:
        return f"no claim: a cell has < {min_seeds} seeds"
    if math.isnan(p_adj):
        return "not testable"
    if paper_r is None:
        found = "no" if p_adj >= alpha or r.r <= 0 else "a"
        return f"{found} significant positive correlation; the paper reports no r for this task"
    if p_adj >= alpha or r.r <= 0:
        return "does not reproduce: no significant positive correlation"
    if math.isnan(r.low) or r.low <= paper_r <= r.high:
        return "reproduces: significant positive correlation, consistent with the paper"
    side = "weaker" if r.high < paper_r else "stronger"
    return f"partly reproduces: significant positive correlation, {side} than the paper's"


def _ablation(gains, tasks, task_label, few, level, alpha, min_seeds, section: Section) -> None:
    """Change in FSS and AOA (and KRS) per method, pooled over a task's pairs, paired by
    (pair, seed)."""
    results = []
    for task in tasks:
        for method in dict.fromkeys(m for (p, m) in gains if p[:2] == task):
            cells = [(p, g) for (p, m), g in gains.items() if m == method and p[:2] == task]
            blocked = any(p in few for p, _ in cells)
            cmp = {}
            for m in ("fss", "aoa", "krs"):
                a = [v for _, g in cells if m in g for v in g[m].a]
                b = [v for _, g in cells if m in g for v in g[m].b]
                cmp[m] = compare_paired(a, b, level) if a else None
            results.append((task, method, len(cells), blocked, cmp))
    tests = [(i, m) for i, r in enumerate(results) for m in ("fss", "aoa")]
    adj = holm([_p(results[i][4][m], results[i][3], min_seeds) for i, m in tests])
    p_adj = {t: float(p) for t, p in zip(tests, adj, strict=True)}
    records, panels, sentences = [], {}, {}
    for i, (task, method, n_pairs, blocked, cmp) in enumerate(results):
        record = {"task": task_label[task], "method": method, "pairs": n_pairs}
        for m in ("fss", "aoa", "krs"):
            c, name = cmp[m], m.upper()
            record[f"\u0394 {name} [CI]"] = c.diff if c else None
            if m != "krs":
                record[f"p {name}"] = c.t_test.p if c else None
                record[f"p Holm {name}"] = p_adj[(i, m)]
                record[f"verdict {name}"] = _verdict(c, p_adj[(i, m)], alpha, min_seeds, blocked)
        records.append(record)
        panel = panels.setdefault(
            task_label[task], {"\u0394 FSS": [], "\u0394 AOA": [], "\u0394 KRS": []}
        )
        for m in ("fss", "aoa", "krs"):
            panel[f"\u0394 {m.upper()}"].append(cmp[m].diff if cmp[m] else None)
        sentences.setdefault(task, []).append(
            f"{method} \u0394FSS = {_describe(cmp['fss'], p_adj[(i, 'fss')])}, "
            f"\u0394AOA = {_describe(cmp['aoa'], p_adj[(i, 'aoa')])}"
        )
    for task, parts in sentences.items():
        section.findings.append(
            f"Ablation on {task_label[task]} (distilled \u2212 base, pooled over pairs, paired t, "
            f"Holm over {len(tests)} tests): " + "; ".join(parts) + "."
        )
    caption = (
        "Ablation: change in the KRS components from base to distilled per method, pooled over "
        "the task's pairs (paired by pair and seed); Holm across methods and components"
    )
    section.blocks.append(Table.from_records(records, caption, "krs-ablation", group=1))
    methods = [r["method"] for r in records]
    figure = plots.grouped_bars(
        {t: s for t, s in panels.items()},
        list(dict.fromkeys(methods)),
        "distilled \u2212 base",
        "Change in FSS, AOA and KRS per method",
    )
    section.blocks.append(Figure(figure, "Ablation of KRS into FSS and AOA", "krs-fig-ablation"))


def _describe(c: PairedComparison | None, p_adj: float) -> str:
    if c is None:
        return "n/a"
    return f"{w.ci(c.diff)} (n = {c.n}, {w.peq('p', c.t_test.p)}, Holm {w.peq('p', p_adj)})"
