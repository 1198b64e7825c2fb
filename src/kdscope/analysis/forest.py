"""The answer a report opens with: a forest plot of KD-minus-control differences and three plain
sentences under it.

A :class:`ForestRow` is one difference (KD minus the control student, trained on labels alone with
the same recipe and seed) with its confidence interval and whether it survived Holm's correction.
The headline measures (:data:`HEADLINE`) are accuracy, top-1 agreement with the teacher where the
teacher is right (``agree_C``) and wrong (``agree_I``), the asymmetric payoff (``payoff``: the
relative gain on I minus that on C, after Mason-Williams et al., arXiv 2510.12615) and the
Knowledge Retention Score with its parts (``krs``, ``fss``, ``aoa``; Alba & Villaverde 2025).
Any other measure name is drawn under its own name.

>>> from kdscope.analysis.report import Lead, Section
>>> rows = [ForestRow("accuracy", 0.029, 0.02, 0.038, True),
...         ForestRow("agree_I", 0.02, -0.01, 0.05, False)]
>>> section = Section("Audit", lead=Lead(forest_figure(rows), forest_sentences(rows)))
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from matplotlib.figure import Figure as MplFigure

from kdscope.analysis.report import LEAD_WIDTH, Figure

# name -> (axis label, short panel title, True when the value is a fraction shown in points)
LABELS: dict[str, tuple[str, str, bool]] = {
    "accuracy": ("accuracy", "accuracy", True),
    "agree_C": ("agreement, teacher right (C)", "agree C", True),
    "agree_I": ("agreement, teacher wrong (I)", "agree I", True),
    "payoff": ("payoff: rel. \u0394I \u2212 \u0394C", "payoff", False),
    "krs": ("KRS", "KRS", False),
    "fss": ("FSS (CKA)", "FSS", False),
    "aoa": ("AOA", "AOA", False),
}
HEADLINE = tuple(LABELS)
_SIG, _NOT = "#1f5fa8", "#8a939e"


@dataclass(frozen=True)
class ForestRow:
    """One KD-minus-control difference: ``estimate`` in [``lo``, ``hi``] (NaN bounds: no interval,
    e.g. one seed), ``significant`` after Holm. ``group`` names the setting (a method, a
    teacher/student pair) when a plot shows several."""

    measure: str
    estimate: float
    lo: float
    hi: float
    significant: bool
    group: str = ""


def forest_figure(
    rows: Sequence[ForestRow],
    *,
    caption: str = "",
    id: str = "forest",
    level: float = 0.95,
    versus: str = "control",
) -> Figure:
    """The forest plot as a report :class:`~kdscope.analysis.report.Figure` with alt text that
    lists every difference. One group: a row per measure on one axis. Several groups: a panel per
    measure (each on its own scale), a row per group. Filled blue points are significant after
    Holm, hollow grey ones are not; the dashed line is no difference."""
    if not rows:
        raise ValueError("forest_figure needs at least one ForestRow; got none")
    measures = list(dict.fromkeys(r.measure for r in rows))
    groups = list(dict.fromkeys(r.group for r in rows))
    figure = (
        _single(rows, measures, versus) if len(groups) == 1 else _panels(rows, measures, groups)
    )
    return Figure(
        figure,
        caption
        or (
            f"KD \u2212 {versus}, mean difference with {level:.0%} CI; filled: significant after "
            "Holm correction, hollow: not"
        ),
        id,
        alt=_alt(rows, len(groups) > 1, level, versus),
    )


def _point(ax, x: float, y: float, row: ForestRow) -> None:
    colour = _SIG if row.significant else _NOT
    if not (math.isnan(row.lo) or math.isnan(row.hi)):
        ax.plot([row.lo, row.hi], [y, y], color=colour, lw=2, solid_capstyle="butt")
    ax.plot(
        [x],
        [y],
        "o",
        ms=8,
        color=colour,
        markerfacecolor=colour if row.significant else "white",
        markeredgewidth=2,
    )


def _single(rows: Sequence[ForestRow], measures: list[str], versus: str) -> MplFigure:
    fig = MplFigure(figsize=(LEAD_WIDTH, 0.42 * len(measures) + 1.0), layout="constrained")
    ax = fig.subplots()
    by_measure = {r.measure: r for r in rows}
    for y, m in enumerate(measures):
        row = by_measure[m]
        _point(ax, row.estimate, y, row)
        ax.annotate(
            _interval(row),
            (1.01, y),
            xycoords=("axes fraction", "data"),
            va="center",
            fontsize=9,
            color=_SIG if row.significant else "0.35",
        )
    ax.set_yticks(range(len(measures)), [LABELS.get(m, (m,))[0] for m in measures])
    ax.set_ylim(len(measures) - 0.5, -0.5)
    ax.axvline(0, color="0.3", lw=0.9, ls="--")
    ax.set_xlabel(f"KD \u2212 {versus} (difference)")
    ax.grid(axis="x", alpha=0.3)
    _pad(ax, rows)
    return fig


def _panels(rows, measures: list[str], groups: list[str]) -> MplFigure:
    cols = min(len(measures), 7)
    n_rows = math.ceil(len(measures) / cols)
    height = (0.24 * len(groups) + 0.9) * n_rows
    fig = MplFigure(figsize=(10.2, height), layout="constrained")
    axes = fig.subplots(n_rows, cols, squeeze=False, sharey=True).ravel().tolist()
    cells = {(r.measure, r.group): r for r in rows}
    for ax, m in zip(axes, measures, strict=False):
        mine = [cells[(m, g)] for g in groups if (m, g) in cells]
        for y, g in enumerate(groups):
            if (m, g) in cells:
                _point(ax, cells[(m, g)].estimate, y, cells[(m, g)])
        ax.axvline(0, color="0.3", lw=0.9, ls="--")
        ax.set_title(LABELS.get(m, (m, m))[1], fontsize=10)
        ax.tick_params(axis="x", labelsize=7)
        ax.grid(axis="x", alpha=0.3)
        _pad(ax, mine)
    for ax in axes[len(measures) :]:
        ax.set_visible(False)
    axes[0].set_yticks(range(len(groups)), groups, fontsize=8)
    axes[0].set_ylim(len(groups) - 0.5, -0.5)
    return fig


def _pad(ax, rows: Sequence[ForestRow]) -> None:
    """An x range that holds 0 and every interval, with a margin."""
    values = [0.0] + [v for r in rows for v in (r.estimate, r.lo, r.hi) if not math.isnan(v)]
    lo, hi = min(values), max(values)
    margin = 0.08 * (hi - lo) or 0.01
    ax.set_xlim(lo - margin, hi + margin)


def _interval(row: ForestRow) -> str:
    if math.isnan(row.lo) or math.isnan(row.hi):
        return f"{row.estimate:+.3g}"
    return f"{row.estimate:+.3g} [{row.lo:.3g}, {row.hi:.3g}]"


def _alt(rows: Sequence[ForestRow], grouped: bool, level: float, versus: str) -> str:
    head = f"Forest plot of KD \u2212 {versus} differences with {level:.0%} confidence intervals"
    items = [
        f"{(r.group + ', ') if grouped else ''}{LABELS.get(r.measure, (r.measure,))[0]} "
        f"{_interval(r)}{', significant' if r.significant else ''}"
        for r in rows
    ]
    if len(items) > 24:
        sig = sum(r.significant for r in rows)
        return f"{head}: {len(rows)} differences, {sig} significant after Holm correction."
    return f"{head}: " + "; ".join(items) + "."


def forest_sentences(
    rows: Sequence[ForestRow], versus: str = "the same student trained on labels alone"
) -> list[str]:
    """Up to three plain sentences that say what the forest plot shows: accuracy, agreement with
    the teacher where it is right and where it is wrong, and the payoff (or KRS without one).
    Rows without an interval (one run each) are described by their sign and called untested."""
    groups = list(dict.fromkeys(r.group for r in rows))
    cells = {(r.group, r.measure): r for r in rows}
    if len(groups) > 1:
        return _counted(cells, groups)
    g = groups[0] if groups else ""
    acc, c, i = (cells.get((g, m)) for m in ("accuracy", "agree_C", "agree_I"))
    payoff, krs = cells.get((g, "payoff")), cells.get((g, "krs"))
    out = []
    if acc and _moved(acc):
        more = "more" if acc.estimate > 0 else "less"
        untested = "" if _tested(acc) else "; one run each, so untested"
        out.append(f"KD made the student {more} accurate than {versus} ({_change(acc)}{untested}).")
    elif acc:
        out.append(
            f"KD did not change the student's accuracy significantly against {versus} "
            f"({_change(acc)})."
        )
    splits = [(r, where) for r, where in ((c, "right"), (i, "wrong")) if r is not None]
    parts = [f"{_verb(r)} where the teacher is {where} ({_change(r)})" for r, where in splits]
    if len(splits) == 2 and _verb(c) == _verb(i):  # one verb for both: "rose where ... and where"
        parts[1] = f"where it is wrong ({_change(i)})"
    if parts:
        out.append(f"Its agreement with the teacher {' and '.join(parts)}.")
    if payoff and not _moved(payoff):
        out.append(
            "Relative to the room left, it took on the teacher's mistakes and correct answers at "
            "similar rates (no significant asymmetry)."
        )
    elif payoff:
        first, second = ("mistakes", "correct answers")
        if payoff.estimate < 0:
            first, second = second, first
        verdict = ""
        if payoff.significant:
            verdict = f": a {'negative' if payoff.estimate > 0 else 'positive'} asymmetric payoff"
        out.append(
            f"Relative to the room left, it took on more of the teacher's {first} than of its "
            f"{second}{verdict}."
        )
    elif krs:
        out.append(f"Its Knowledge Retention Score {_verb(krs)} ({_change(krs)}).")
    return out


def _tested(row: ForestRow) -> bool:
    return not (math.isnan(row.lo) or math.isnan(row.hi))


def _moved(row: ForestRow) -> bool:
    """Significant, or untested but not zero: worth a direction in words."""
    return row.significant or (not _tested(row) and row.estimate != 0)


def _verb(row: ForestRow) -> str:
    if not _moved(row):
        return "did not change significantly" if _tested(row) else "did not change"
    return "rose" if row.estimate > 0 else "fell"


def _change(row: ForestRow) -> str:
    points = LABELS.get(row.measure, ("", "", False))[2]
    text = f"{100 * row.estimate:+.1f} points" if points else f"{row.estimate:+.3g}"
    return text.replace("-", "\u2212")


def _counted(cells: dict, groups: list[str]) -> list[str]:
    """The three sentences over several settings: how many moved each way."""
    n = len(groups)

    def count(measure: str, sign: int) -> int:
        rows = [cells.get((g, measure)) for g in groups]
        return sum(1 for r in rows if r and r.significant and (r.estimate > 0) == (sign > 0))

    out = []
    if any((g, "accuracy") in cells for g in groups):
        up, down = count("accuracy", 1), count("accuracy", -1)
        out.append(
            f"Across {n} settings, KD made the student significantly more accurate in {up}, less "
            f"accurate in {down} and made no significant difference in {n - up - down}."
            if up or down
            else f"KD changed the student's accuracy significantly in none of the {n} settings."
        )
    if any((g, m) in cells for g in groups for m in ("agree_C", "agree_I")):
        right, wrong = count("agree_C", 1), count("agree_I", 1)
        out.append(
            f"Agreement with the teacher rose significantly in {right} of {n} settings where the "
            f"teacher is right and in {wrong} where it is wrong."
            if right or wrong
            else "Agreement with the teacher rose significantly in none of them, neither where "
            "the teacher is right nor where it is wrong."
        )
    if any((g, "payoff") in cells for g in groups):
        neg, pos = count("payoff", 1), count("payoff", -1)
        out.append(
            f"The payoff was negative asymmetric (relatively more of the teacher's mistakes taken "
            f"on) in {neg} of {n} settings and positive in {pos}."
            if neg or pos
            else "No setting showed a significant asymmetric payoff."
        )
    elif any((g, "krs") in cells for g in groups):
        out.append(f"KRS rose significantly in {count('krs', 1)} of {n} settings.")
    return out
