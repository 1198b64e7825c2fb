"""Synthetic tidy tables of runs with planted effects, for the analysis and report tests."""

from __future__ import annotations

import numpy as np

BASE = {
    "accuracy": 0.88, "agree_all": 0.86, "agree_C": 0.90, "agree_I": 0.30,
    "same_wrong_I": 0.30, "kl_all": 0.40, "kl_C": 0.30, "kl_I": 1.20,
    "js_all": 0.08, "js_C": 0.06, "js_I": 0.25, "cos_all": 0.90, "cos_C": 0.93, "cos_I": 0.60,
}  # fmt: skip


def functional_rows(
    effects: dict[str, float] | None = None,
    seeds=range(5),
    noise: float = 0.01,
    rng_seed: int = 0,
    alphas=(0.9,),
    temperatures=(4.0,),
    students=("resnet20",),
    random_control: bool = True,
) -> list[dict]:
    """Control, random-control and KD runs; KD = control + ``effects`` (per measure) + noise.
    A per-seed offset shared by the arms makes the pairing matter."""
    rng = np.random.default_rng(rng_seed)
    effects = effects or {}
    rows = []
    ident = {"study": "ft", "dataset": "digits", "teacher": "resnet56"}
    for student in students:
        offsets = {s: rng.normal(0, 0.02) for s in seeds}
        arms = [("control", "none", None, None)]
        for a in alphas:
            for t in temperatures:
                arms.append(("kd", "kd", a, t))
                if random_control:
                    arms.append(("random_control", "kd", a, t))
        for arm, method, a, t in arms:
            for s in seeds:
                row = {**ident, "student": student, "method": method, "arm": arm, "seed": s,
                       "alpha": a, "temperature": t}  # fmt: skip
                for m, v in BASE.items():
                    bump = effects.get(m, 0.0) if arm == "kd" else 0.0
                    row[m] = v + offsets[s] + bump + rng.normal(0, noise)
                rows.append(row)
    return rows


def krs_rows(
    methods=("kd", "fitnet", "at", "sp"),
    fss_gain=None,
    aoa_gain=None,
    acc_gain=None,
    pairs=(("resnet56", "resnet20"), ("wrn_40_2", "wrn_16_1"), ("vgg13", "alexnet")),
    seeds=range(3),
    noise: float = 0.005,
    rng_seed: int = 0,
) -> list[dict]:
    """Base (control, method 'none') and distilled runs per pair and method, KRS = 0.3 FSS +
    0.7 AOA. Method i gains 0.02 (i + 1) in FSS and AOA and 0.01 (i + 1) in accuracy unless the
    gains are given (method -> gain)."""
    rng = np.random.default_rng(rng_seed)
    default = {m: 0.02 * (i + 1) for i, m in enumerate(methods)}
    fss_gain = default if fss_gain is None else fss_gain
    aoa_gain = default if aoa_gain is None else aoa_gain
    acc_gain = {m: 0.01 * (i + 1) for i, m in enumerate(methods)} if acc_gain is None else acc_gain
    rows = []
    for p, (teacher, student) in enumerate(pairs):
        for method in ("none", *methods):
            for s in seeds:
                fss = 0.50 + 0.05 * p + fss_gain.get(method, 0.0) + rng.normal(0, noise)
                aoa = 0.70 + 0.02 * p + aoa_gain.get(method, 0.0) + rng.normal(0, noise)
                rows.append({
                    "study": "krs", "dataset": "digits", "teacher": teacher, "student": student,
                    "method": method, "arm": "control" if method == "none" else "kd", "seed": s,
                    "alpha": None, "temperature": None,
                    "accuracy": 0.85 + 0.01 * p + acc_gain.get(method, 0.0) + rng.normal(0, noise),
                    "fss": fss, "aoa": aoa, "krs": 0.3 * fss + 0.7 * aoa,
                })  # fmt: skip
    return rows
