"""Sweeps of the functional-transfer analysis (shared/specs/functional-transfer.md): the difference
kd - control against alpha, temperature or student size, as lines with CIs and a table."""

from __future__ import annotations

from kdscope.analysis import _words as w
from kdscope.analysis import plots
from kdscope.analysis.payoff import CONDITION, Condition, condition_label
from kdscope.analysis.report import Figure, Section, Table
from kdscope.analysis.tidy import natural_key, number

SWEEP_MEASURES = ("agree_all", "agree_C", "agree_I")
SWEEP_PARAMS = ("alpha", "temperature", "student")


def add_sweeps(conditions: list[Condition], lookup: dict, section: Section) -> None:
    """Delta (kd - control) against alpha, temperature or student size, one line per setting of
    the other condition fields; ``lookup`` maps (id of a condition, measure) to its kd vs control
    test (anything with ``cmp``, a :class:`~kdscope.analysis.stats.PairedComparison`, and
    ``p_t_adj``, its Holm-adjusted p-value)."""
    measures = [m for m in SWEEP_MEASURES if any((id(c), m) in lookup for c in conditions)]
    rows = []
    for param in SWEEP_PARAMS:
        i = CONDITION.index(param)
        series: dict[tuple, list[Condition]] = {}
        for c in conditions:
            series.setdefault(c.key[:i] + c.key[i + 1 :], []).append(c)
        series = {k: v for k, v in series.items() if len({c.key[i] for c in v}) > 1}
        if not series or not measures:
            continue
        order = sweep_order(param, [c for v in series.values() for c in v])
        others = [f for f in CONDITION if f != param]
        fields = {f for j, f in enumerate(others) if len({k[j] for k in series}) > 1}
        panels: dict[str, dict] = {m: {} for m in measures}
        for conds in series.values():
            conds = sorted(conds, key=lambda c: order.index(c.key[i]))
            name = condition_label(conds[0].key, fields) or str(conds[0].key[4])
            for m in measures:
                pts = [(c.key[i], lookup[(id(c), m)]) for c in conds if (id(c), m) in lookup]
                panels[m][name] = ([v for v, _ in pts], [t.cmp.diff for _, t in pts])
                rows += [
                    {
                        "parameter": param,
                        "series": name,
                        "value": v,
                        "measure": m,
                        "n": t.cmp.n,
                        "\u0394 kd \u2212 control [CI]": t.cmp.diff,
                        "p (t)": t.cmp.t_test.p,
                        "p Holm (t)": t.p_t_adj,
                    }
                    for v, t in pts
                ]
                if m == "agree_I":
                    points = ", ".join(
                        f"{w.signed(t.cmp.diff.value)} at {param} = {v} (n = {t.cmp.n}, "
                        f"{w.peq('p', t.cmp.t_test.p)}, Holm {w.peq('p', t.p_t_adj)})"
                        for v, t in pts
                    )
                    section.findings.append(
                        f"Sweep over {param} ({name}): \u0394 agree_I "
                        f"(kd \u2212 control, paired t) = {points}."
                    )
        figure = plots.lines(
            panels,
            param,
            "\u0394 kd \u2212 control",
            f"Transfer against {param}",
            order if param == "student" else None,
        )
        section.blocks.append(
            Figure(
                figure,
                f"\u0394 (kd \u2212 control) per {param} value, mean with CI over seeds",
                f"ft-fig-sweep-{param}",
            )
        )
    if rows:
        caption = "Sweeps: \u0394 (kd \u2212 control) per value (Holm as in the test table)"
        section.blocks.append(Table.from_records(rows, caption, "ft-sweeps", group=2))


def sweep_order(param: str, conds: list[Condition]) -> list:
    i = CONDITION.index(param)
    values = list(dict.fromkeys(c.key[i] for c in conds))
    if param != "student":
        return sorted(values)
    size: dict = {}
    for c in conds:
        params = [number(r, "student_params") for r in c.arms["kd"]]
        params = [p for p in params if p is not None]
        if params:
            size[c.key[i]] = params[0]
    if len(size) == len(values):
        return sorted(values, key=lambda v: size[v])
    return sorted(values, key=natural_key)
