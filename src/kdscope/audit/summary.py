"""The few plain sentences that open an audit: how much the distilled student agrees with the
teacher where the teacher is right (C) and wrong (I), whether that differs from an independent
student (the control), and from a student distilled from noise (the random control). Every number
comes from the functional-transfer section's tables (``ft-tests``, ``ft-payoff``), so the sentences
and the tables cannot disagree (shared/specs/functional-transfer.md)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from kdscope.analysis import _words as w
from kdscope.analysis.report import Section
from kdscope.analysis.stats import Estimate
from kdscope.analysis.tidy import Row, number


def _diff(record: dict[str, Any]) -> Estimate:
    return next(v for k, v in record.items() if k.startswith("\u0394 kd"))


def _pct(x: float | None) -> str:
    return "n/a" if x is None or math.isnan(x) else f"{x:.1%}"


def sentences(functional: Section | None, rows: Sequence[Row]) -> list[str]:
    """Up to three sentences per distilled condition: its agreement on C and I beside the
    control's, the tests against the control, and against the random control where it ran."""
    if not any(r["arm"] == "kd" for r in rows):
        return ["Audit: no distilled student was measured, so there is nothing to summarise."]
    tests, payoff = [], {}
    if functional is not None:
        ids = {b.id for b in functional.blocks}
        tests = functional.table("ft-tests").records() if "ft-tests" in ids else []
        if "ft-payoff" in ids:
            payoff = {r["condition"]: r for r in functional.table("ft-payoff").records()}
    if not tests:
        return [_without_control(rows)]
    out = []
    for condition in dict.fromkeys(t["condition"] for t in tests):
        mine = {(t["comparison"], t["measure"]): t for t in tests if t["condition"] == condition}
        c, i = mine.get(("kd vs control", "agree_C")), mine.get(("kd vs control", "agree_I"))
        if c and i:
            out.append(
                f"{condition}: the distilled student agrees with the teacher on "
                f"{_pct(c['mean kd'])} of the examples the teacher gets right (C) and on "
                f"{_pct(i['mean kd'])} of those it gets wrong (I); an independent student trained "
                f"on labels alone agrees on {_pct(c['mean other'])} and {_pct(i['mean other'])}."
            )
            verdict = f"on C {c['verdict']}, on I {i['verdict']}"
            pay = payoff.get(condition)
            verdict_payoff = pay["verdict"] if pay else ""
            if verdict_payoff and "payoff" not in verdict_payoff:
                verdict_payoff = f"asymmetric payoff: {verdict_payoff}"
            tail = f"; {verdict_payoff}" if verdict_payoff else ""
            out.append(
                f"Distillation against the control: over n = {c['n']} seeds agreement moved by "
                f"{w.ci(_diff(c))} on C and {w.ci(_diff(i))} on I (paired t-test, Holm): "
                f"{verdict}{tail}."
            )
        r = mine.get(("kd vs random_control", "agree_I"))
        if r:
            out.append(
                f"Against the random control (the same loss with the teacher replaced by noise): "
                f"agreement on I moved by {w.ci(_diff(r))} over n = {r['n']} seeds, "
                f"{r['verdict']}; a difference here is the teacher's knowledge, not the "
                "soft-target regulariser."
            )
    return out


def _without_control(rows: Sequence[Row]) -> str:
    kd = [r for r in rows if r["arm"] == "kd"]
    c = [number(r, "agree_C") for r in kd]
    i = [number(r, "agree_I") for r in kd]
    mean_c = sum(x for x in c if x is not None) / max(1, sum(x is not None for x in c))
    mean_i = sum(x for x in i if x is not None) / max(1, sum(x is not None for x in i))
    who = "the student agrees" if len(kd) == 1 else f"the {len(kd)} students agree, on average,"
    return (
        f"Without a control: {who} with the teacher on {_pct(mean_c)} of the examples "
        f"the teacher gets right (C) and {_pct(mean_i)} of those it gets wrong (I); with no "
        "independent student to compare, this cannot say how much of it distillation moved."
    )
