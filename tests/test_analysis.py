import math

import numpy as np
import pytest

from _synthetic import functional_rows, krs_rows
from kdscope.analysis import stats
from kdscope.analysis.functional import functional_transfer
from kdscope.analysis.krs_validation import krs_validation
from kdscope.analysis.tidy import (
    by_seed,
    check_rows,
    group,
    natural_key,
    number,
    paired,
    present_measures,
    read_rows,
    write_rows,
)

# --- functional transfer ---------------------------------------------------------------------


def _tests(section, other="control"):
    return {
        r["measure"]: r
        for r in section.table("ft-tests").records()
        if r["comparison"] == f"kd vs {other}"
    }


def test_planted_gain_on_teacher_errors_is_found_and_nothing_else():
    rows = functional_rows({"agree_I": 0.1})
    section = functional_transfer(rows)
    for other in ("control", "random_control"):
        tests = _tests(section, other)
        hit = tests["agree_I"]
        assert hit["p Holm (t)"] < 0.05 and hit["verdict"] == "kd higher, significant after Holm"
        assert hit["Δ kd − other [95% CI]"].low < 0.1 < hit["Δ kd − other [95% CI]"].high
        assert all(r["p Holm (t)"] >= 0.05 for m, r in tests.items() if m != "agree_I")
    assert any("agree_I +0.1" in f and "kd vs control" in f for f in section.findings)


def test_lead_is_a_forest_of_the_headline_differences_and_tests_are_ordered_by_effect():
    section = functional_transfer(functional_rows({"agree_I": 0.1}, noise=0.005))
    lead = section.lead
    assert lead.figure.id == "ft-forest" and len(lead.sentences) == 3
    items = lead.figure.alt.split(": ", 1)[1].rstrip(".").split("; ")
    assert [i.split(" ")[0] for i in items] == ["accuracy", "agreement,", "agreement,", "payoff:"]
    sig = [i.split(" [")[0] for i in items if i.endswith(", significant")]
    assert len(sig) == 2 and sig[0].startswith("agreement, teacher wrong (I) +0.1")
    assert sig[1].startswith("payoff")  # I gained, C did not: the payoff is asymmetric
    assert "rose where the teacher is wrong" in lead.sentences[1]
    assert "negative asymmetric payoff" in lead.sentences[2]
    for other in ("control", "random_control"):
        dz = [abs(r["d_z"]) for r in _tests(section, other).values()]
        assert dz == sorted(dz, reverse=True)
    assert all(len(f) < 400 for f in section.findings)


def test_no_planted_effect_gives_no_significant_result():
    section = functional_transfer(functional_rows({}, rng_seed=1))
    records = section.table("ft-tests").records()
    assert len(records) == 2 * 14  # two comparisons x the 14 measures in the table
    assert all(r["p Holm (t)"] >= 0.05 for r in records)
    assert all("no significant difference" in r["verdict"] for r in records)
    assert section.table("ft-payoff").records()[0]["verdict"] == "no significant asymmetry"
    assert sum("no significant difference for any" in f for f in section.findings) == 2


def test_conditions_without_a_difference_share_one_finding():
    section = functional_transfer(functional_rows({}, alphas=(0.1, 0.5, 0.9), rng_seed=2))
    quiet = [f for f in section.findings if "3 of 3 conditions: no significant difference" in f]
    assert len(quiet) == 2 and quiet[0].startswith("kd vs control")
    assert "α=0.1" in quiet[0] and "α=0.9" in quiet[0]
    payoff = [f for f in section.findings if "asymmetric payoff" in f.lower()]
    assert payoff == [next(f for f in payoff if "in 3 of 3 conditions" in f)]


def test_test_table_numbers_match_a_direct_computation():
    rows = functional_rows({"agree_I": 0.1})
    rec = _tests(functional_transfer(rows))["agree_I"]
    kd = {r["seed"]: r["agree_I"] for r in rows if r["arm"] == "kd"}
    ctrl = {r["seed"]: r["agree_I"] for r in rows if r["arm"] == "control"}
    a, b = [kd[s] for s in range(5)], [ctrl[s] for s in range(5)]
    assert rec["n"] == 5
    assert rec["p (t)"] == pytest.approx(stats.paired_t_test(a, b).p)
    assert rec["d_z"] == pytest.approx(stats.cohens_dz(a, b))
    assert rec["Δ kd − other [95% CI]"] == stats.mean_ci(np.subtract(a, b))
    family = _tests(functional_transfer(rows))
    raw = [r["p (t)"] for r in family.values()]
    np.testing.assert_allclose([r["p Holm (t)"] for r in family.values()], stats.holm(raw))


def test_negative_asymmetric_payoff_is_detected_with_headroom_forms():
    rows = functional_rows({"agree_I": 0.1, "agree_C": 0.0}, noise=0.005)
    section = functional_transfer(rows)
    payoff = section.table("ft-payoff").records()[0]
    ctrl = {r["seed"]: r for r in rows if r["arm"] == "control"}
    kd = {r["seed"]: r for r in rows if r["arm"] == "kd"}
    d_i = [kd[s]["agree_I"] - ctrl[s]["agree_I"] for s in range(5)]
    rel_i = [d / (1 - ctrl[s]["agree_I"]) for s, d in enumerate(d_i)]
    assert payoff["ΔI"].value == pytest.approx(np.mean(d_i))
    assert payoff["ΔI / headroom"].value == pytest.approx(np.mean(rel_i))
    assert payoff["p Holm (t), rel."] < 0.05
    assert payoff["verdict"].startswith("negative asymmetric payoff")
    assert any("asymmetric payoff" in f and "negative" in f for f in section.findings)


def test_fewer_than_three_seeds_makes_no_claim():
    section = functional_transfer(functional_rows({"agree_I": 0.3}, seeds=range(2)))
    assert all(r["verdict"].startswith("no claim") for r in section.table("ft-tests").records())
    assert all(math.isnan(r["p Holm (t)"]) for r in section.table("ft-tests").records())
    assert section.table("ft-payoff").records()[0]["verdict"].startswith("no claim")
    assert all("no claim is made" in f for f in section.findings if "kd vs" in f)


def test_partial_table_reports_missing_cells_and_uses_what_is_there():
    rows = functional_rows({"agree_I": 0.1})
    rows = [r for r in rows if not (r["arm"] == "kd" and r["seed"] == 3)]
    rows = [r for r in rows if not (r["arm"] == "random_control" and r["seed"] in (0, 1))]
    section = functional_transfer(rows)
    missing = section.table("ft-missing").records()
    assert {(m["arm"], m["missing seeds"]) for m in missing} == {
        ("kd", "3"),
        ("random_control", "0, 1"),
    }
    assert any("partial" in n and "3 run(s) missing" in n for n in section.notes)
    assert _tests(section)["agree_I"]["n"] == 4
    assert _tests(section, "random_control")["agree_I"]["n"] == 2  # seeds 2 and 4 only


def test_sweeps_over_alpha_and_student_size():
    rows = functional_rows({"agree_I": 0.1}, alphas=(0.1, 0.5, 0.9), random_control=False)
    rows += functional_rows(
        {"agree_I": 0.05}, students=("resnet32", "resnet8"), random_control=False, rng_seed=2
    )
    for r in rows:
        r["student_params"] = {"resnet8": 78_000, "resnet20": 272_000, "resnet32": 466_000}[
            r["student"]
        ]
    section = functional_transfer(rows)
    sweeps = section.table("ft-sweeps").records()
    alpha = [r for r in sweeps if r["parameter"] == "alpha" and r["measure"] == "agree_I"]
    assert [r["value"] for r in alpha] == [0.1, 0.5, 0.9]
    assert all(r["Δ kd − control [CI]"].low < 0.1 < r["Δ kd − control [CI]"].high for r in alpha)
    student = [r for r in sweeps if r["parameter"] == "student" and r["measure"] == "agree_I"]
    assert [r["value"] for r in student] == ["resnet8", "resnet20", "resnet32"]  # by size
    section.figure("ft-fig-sweep-alpha")
    section.figure("ft-fig-sweep-student")
    with pytest.raises(KeyError, match="ft-fig-sweep-alpha"):
        section.figure("ft-fig-sweep-temperature")
    assert "No random_control runs" in " ".join(section.notes)


def test_teacher_replicas_appear_as_a_ceiling_arm():
    rows = functional_rows({})
    rows += [
        {**rows[0], "arm": "teacher_replica", "method": "none", "student": "resnet56", "seed": s}
        for s in (10, 11, 12)
    ]
    arms = functional_transfer(rows).table("ft-arms")
    assert "teacher_replica" in arms.columns
    assert arms.records()[0]["n per arm"] == "5 / 5 / 5 / 3"


def test_unknown_arm_and_missing_columns_are_named():
    rows = functional_rows({})
    with pytest.raises(ValueError, match="'student_kd'.*accepted"):
        check_rows([{**rows[0], "arm": "student_kd"}], ["arm"])
    bad = {k: v for k, v in rows[0].items() if k != "seed"}
    with pytest.raises(ValueError, match=r"row 1 lacks column\(s\) \['seed'\]"):
        functional_transfer([rows[0], bad])


def test_table_without_kd_runs_is_reported_not_analysed():
    section = functional_transfer([r for r in functional_rows({}) if r["arm"] == "control"])
    assert section.blocks == [] and "no 'kd' runs" in section.notes[0]


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_tidy_rows_round_trip(tmp_path, suffix):
    rows = functional_rows({}, seeds=range(2))[:3]
    path = tmp_path / f"runs{suffix}"
    write_rows(path, rows)
    back = read_rows(path)
    assert back[0]["seed"] == 0 and back[0]["alpha"] is None and back[1]["arm"] == "control"
    assert back[2]["agree_I"] == pytest.approx(rows[2]["agree_I"])
    with pytest.raises(ValueError, match="accepted suffixes"):
        read_rows(tmp_path / "runs.parquet")


# --- KRS validation ----------------------------------------------------------------------------


def test_krs_tracking_accuracy_reproduces_the_paper():
    section = krs_validation(krs_rows())
    pooled = section.table("krs-correlation").records()[0]
    assert pooled["scope"] == "digits, all pairs" and pooled["n runs"] == 3 * 5 * 3
    assert pooled["Pearson r [CI]"].value > 0.8 and pooled["p Holm"] < 0.05
    assert pooled["verdict"].startswith(("reproduces", "partly reproduces"))
    ranking = section.table("krs-ranking").records()
    assert [r["rank by KRS"] for r in ranking] == [r["rank by accuracy"] for r in ranking]
    concordance = section.table("krs-concordance").records()[0]
    assert concordance["Kendall W"] == pytest.approx(1.0)
    gains = section.table("krs-gains").records()
    assert all(r["verdict KRS"].startswith("higher") for r in gains if r["method"] != "kd")
    # the answer opens the page: the scatter of KRS against accuracy, with the pooled verdict
    assert section.lead.figure.id == "krs-fig-correlation"
    assert not any(b.id == "krs-fig-correlation" for b in section.blocks)
    (answer,) = section.lead.sentences
    r = pooled["Pearson r [CI]"].value
    assert answer.startswith(f"KRS vs accuracy on digits, all pairs: Pearson r = {r:+.3g}")
    assert answer.endswith(f"(paper: 0.943); {pooled['verdict']}.")


def test_krs_unrelated_to_accuracy_does_not_reproduce():
    rows = krs_rows(
        fss_gain={}, aoa_gain={}, acc_gain={}, pairs=(("resnet56", "resnet20"),), rng_seed=4
    )
    section = krs_validation(rows)
    pooled = section.table("krs-correlation").records()[0]
    assert pooled["p Holm"] >= 0.05
    assert pooled["verdict"].startswith("does not reproduce")
    assert any("does not reproduce" in f for f in section.findings)
    assert all(
        r["verdict KRS"].startswith("no significant") for r in section.table("krs-gains").records()
    )


def test_ablation_separates_fss_from_aoa():
    methods = ("kd", "fitnet")
    rows = krs_rows(methods, fss_gain={}, aoa_gain={"kd": 0.05, "fitnet": 0.05})
    ablation = {r["method"]: r for r in krs_validation(rows).table("krs-ablation").records()}
    for m in methods:
        assert ablation[m]["p Holm AOA"] < 0.05 and ablation[m]["p Holm FSS"] >= 0.05
        assert ablation[m]["Δ AOA [CI]"].value == pytest.approx(0.05, abs=0.01)
        assert ablation[m]["Δ KRS [CI]"].value == pytest.approx(0.7 * 0.05, abs=0.01)
        assert ablation[m]["pairs"] == 3


def test_reversed_rankings_give_negative_tau():
    methods = ("a", "b", "c", "d", "e", "f")
    krs = {m: 0.02 * (i + 1) for i, m in enumerate(methods)}
    acc = {m: 0.01 * (6 - i) for i, m in enumerate(methods)}
    section = krs_validation(krs_rows(methods, krs, krs, acc, pairs=(("r56", "r20"),)))
    row = section.table("krs-sensitivity").records()[0]
    assert row["Kendall tau"] == pytest.approx(-1.0) and row["p"] == pytest.approx(2 / 720)
    assert row["verdict"].startswith("rankings are reversed")


def test_method_ranks_that_change_across_pairs_lower_concordance():
    methods = ("a", "b", "c", "d")
    rows = []
    for p, order in enumerate([(1, 2, 3, 4), (4, 3, 2, 1), (2, 4, 1, 3)]):
        gain = {m: 0.02 * k for m, k in zip(methods, order, strict=True)}
        pair = ((f"t{p}", f"s{p}"),)
        rows += krs_rows(methods, gain, gain, gain, pairs=pair, rng_seed=p)
    row = krs_validation(rows).table("krs-concordance").records()[0]
    assert row["Kendall W"] < 0.3 and row["verdict"].startswith("no significant concordance")


def test_krs_partial_grid_and_few_seeds_are_reported():
    rows = [r for r in krs_rows(seeds=range(3)) if not (r["method"] == "at" and r["seed"] == 0)]
    section = krs_validation(rows)
    missing = section.table("krs-missing").records()
    assert len(missing) == 3 and all(m["method"] == "at" for m in missing)
    assert any("fewer than 3 seeds" in n for n in section.notes)
    gains = section.table("krs-gains").records()
    # a gain rests on the seeds its two cells share: 'at' has 2, the other methods 3
    assert all(r["verdict KRS"].startswith("no claim") for r in gains if r["method"] == "at")
    assert all(r["n"] == 3 for r in gains if r["method"] != "at")
    assert not any(r["verdict KRS"].startswith("no claim") for r in gains if r["method"] != "at")
    # pooled analyses involve every cell, so none of them makes a claim
    assert all("no claim" in r["verdict"] for r in section.table("krs-correlation").records())
    assert all("no claim" in r["verdict FSS"] for r in section.table("krs-ablation").records())
    assert all("no claim" in r["verdict"] for r in section.table("krs-sensitivity").records())


def test_base_students_are_found_whatever_their_method_is_called():
    rows = [{**r, "method": "ce"} if r["arm"] == "control" else r for r in krs_rows(("kd",))]
    assert krs_validation(rows).table("krs-gains").records()[0]["n"] == 3


def test_tidy_helpers():
    rows = [
        {"study": "s", "arm": "kd", "seed": 0, "x": 1.0},
        {"study": "s", "arm": "kd", "seed": 1, "x": float("nan")},
        {"study": "s", "arm": "control", "seed": 0, "x": None},
    ]
    assert [number(r, "x") for r in rows] == [1.0, None, None]
    assert present_measures(rows, ["x", "y"]) == ["x"]
    assert list(group(rows, ["arm"])) == [("kd",), ("control",)]
    assert by_seed(rows[:2], "x") == {0: 1.0}
    with pytest.raises(ValueError, match="two runs with seed 0"):
        by_seed([rows[0], rows[0]], "x")
    assert paired({0: 1.0, 1: 2.0, 3: 4.0}, {1: 5.0, 0: 6.0}) == ([0, 1], [1.0, 2.0], [6.0, 5.0])
    names = ["resnet32", "resnet8", "resnet110", "resnet14"]
    assert sorted(names, key=natural_key) == ["resnet8", "resnet14", "resnet32", "resnet110"]


@pytest.mark.parametrize(("task", "paper_r", "score"), [
    ("segmentation", 0.968, "mean IoU"), ("detection", 0.884, "mAP@[.5:.95]"),
])  # fmt: skip
def test_dense_tasks_are_read_against_the_papers_r_for_their_task(task, paper_r, score):
    rows = [r | {"task": task} for r in krs_rows(pairs=(("fcn_resnet20", "fcn_resnet8"),))]
    section = krs_validation(rows)
    pooled = section.table("krs-correlation").records()[0]
    assert pooled["paper r"] == paper_r
    assert any(f.startswith(f"KRS vs {score} on") for f in section.findings)
    assert any(f"{task}, test {score}" in n for n in section.notes)
    assert krs_validation(krs_rows()).table("krs-correlation").records()[0]["paper r"] == 0.943


def test_a_task_the_paper_did_not_study_is_computed_and_not_compared():
    rows = krs_rows(pairs=(("gpt-mini", "gpt-micro"),))
    rows = [r | {"task": "language-modelling"} for r in rows]
    pooled = krs_validation(rows).table("krs-correlation").records()[0]
    assert pooled["paper r"] is None
    assert pooled["verdict"].endswith("the paper reports no r for this task")
    assert not pooled["verdict"].startswith(("reproduces", "does not", "partly"))


def test_one_dataset_with_two_tasks_is_refused():
    rows = krs_rows(pairs=(("fcn_resnet20", "fcn_resnet8"),))
    rows = [r | {"task": "segmentation" if i % 2 else "detection"} for i, r in enumerate(rows)]
    with pytest.raises(ValueError, match="share one task"):
        krs_validation(rows)
