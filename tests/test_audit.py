"""`kdscope audit`: the study-built audit on tiny real data (digits, resnet8, 1 epoch, 2 seeds) and
the output-side audit of saved logits in every accepted format, with its errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.spatial.distance import jensenshannon
from scipy.special import softmax
from typer.testing import CliRunner

from kdscope.analysis import read_rows
from kdscope.audit import audit_logits
from kdscope.cli import app

runner = CliRunner()
TINY = [
    "--set", "data.train_size=200", "--set", "data.batch_size=64", "--set", "train.threads=1",
    "--set", "evaluation.test_size=120",
]  # fmt: skip


def invoke(*args) -> tuple[int, str]:
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def audited(tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("audit") / "a1"
    code, output = invoke(
        "audit", "--teacher", "resnet8", "--student", "resnet8", "--method", "kd", "--data",
        "digits", "--seeds", 2, "--epochs", 1, "--out", out, *TINY,
    )  # fmt: skip
    assert code == 0, output
    return out, output


def test_audit_trains_every_arm_prints_its_plan_and_cost_and_writes_the_answer(audited):
    out, output = audited
    # Before training: what it will train, then the estimate from timed steps.
    assert output.index("distilled (kd): 2 to train") < output.index("about")
    assert "random control: 2 to train" in output and "timed: resnet8 step" in output
    assert "7 run(s) trained" in output
    doc = json.loads((out / "audit.json").read_text())
    students = doc["students"]
    arms = sorted(s["arm"] for s in students.values())
    assert arms == ["control"] * 2 + ["kd"] * 2 + ["random_control"] * 2
    table = {r["run"]: r for r in read_rows(out / "results.jsonl")}
    for run, s in students.items():
        # The study's own table and the audit agree; agreement on all examples is the C / I
        # mix weighted by the teacher's accuracy.
        for key in ("agree_all", "agree_C", "agree_I", "kl_all", "js_I", "krs", "fss", "aoa"):
            assert s[key] == pytest.approx(table[run][key])
        acc = s["teacher_accuracy"]
        assert s["agree_all"] == pytest.approx(acc * s["agree_C"] + (1 - acc) * s["agree_I"])
        assert s["rs_student"] is not None
    distilled = [s for s in students.values() if s["arm"] != "control"]
    assert all(-1 <= s["fss_gradcam"] <= 1 and s["fss_unicam"] is not None for s in distilled)
    tests = doc["tables"]["ft-tests"]
    comparisons = {(t["comparison"], t["measure"]) for t in tests}
    assert {("kd vs control", "agree_I"), ("kd vs random_control", "agree_C")} <= comparisons
    assert all(t["n"] == 2 for t in tests)
    assert {"ft-payoff", "krs-before-after", "relevance-tests", "audit-arms"} <= set(doc["tables"])
    assert len(doc["summary"]) == 3 and "(C)" in doc["summary"][0]
    html = (out / "report.html").read_text()
    assert str(out.parent) not in html and "/tmp" not in html
    assert "kd vs random_control" in html and doc["summary"][0].split(":")[0] in html


def test_rerunning_an_audit_trains_nothing_and_a_teacher_run_is_reused(audited):
    out, _ = audited
    code, output = invoke(
        "audit", "--teacher", "resnet8", "--student", "resnet8", "--data", "digits", "--seeds",
        2, "--epochs", 1, "--out", out, *TINY,
    )  # fmt: skip
    assert code == 0, output
    assert "0 run(s) trained, 7 already finished" in output and "measured FSS/RS" not in output
    code, output = invoke("report", out)  # would write a study report over the audit's
    assert code == 2 and "is an audit" in output
    # A finished teacher run: its dataset and splits are taken over, nothing trains it again.
    teacher = out / "runs" / "teacher-resnet8-s0"
    code, output = invoke(
        "audit", "--teacher", teacher, "--student", "resnet8", "--seeds", 2, "--epochs", 1,
        "--out", out.parent / "a2", "--dry-run", *TINY,
    )  # fmt: skip
    assert code == 0, output
    assert f"teacher the run {teacher}" in output and "data digits" in output
    assert "control (labels alone): 2 to train" in output and "  teacher:" not in output
    assert "6 run(s) to train" in output
    assert not (out.parent / "a2" / "audit.json").exists()


@pytest.mark.parametrize(
    "args, words",
    [
        (["--student", "resnet8"], "needs --teacher and --student"),
        (["--teacher", "resnet8", "--student", "resnet8"], "--data is needed"),
        (["--teacher", "resnet8", "--student", "nonet", "--data", "digits"], "nonet"),
        (
            ["--teacher", "resnet8", "--student", "resnet8", "--data", "digits", "--seeds", 0],
            "--seeds must be >= 1",
        ),
    ],
)
def test_audit_of_runs_refuses_bad_arguments_in_one_sentence(tmp_path, args, words):
    code, output = invoke("audit", *args, "--out", tmp_path / "x", "--dry-run")
    assert code == 2 and words in output and "Traceback" not in output


def test_several_methods_and_a_sweep_are_planned_with_their_controls(tmp_path):
    code, output = invoke(
        "audit", "--teacher", "resnet8", "--student", "resnet8", "--method", "kd", "dkd",
        "--data", "digits", "--seeds", 2, "--set", "sweeps.alpha=[0.5,0.9]", "--out",
        tmp_path / "a", "--dry-run", *TINY,
    )  # fmt: skip
    assert code == 0, output
    # kd at two alphas and dkd (which sweeps alpha too), a random control per kd setting.
    assert "distilled (kd): 4 to train" in output and "distilled (dkd): 4 to train" in output
    assert "random control: 4 to train" in output and "teacher: 1 to train" in output
    assert "15 run(s) to train" in output


def test_an_unfinished_teacher_run_is_refused(tmp_path):
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "config.yaml").write_text("student: {name: resnet8}\n")
    code, output = invoke("audit", "--teacher", tmp_path / "t", "--student", "resnet8")
    assert code == 2 and "has not finished training" in output


# --- saved logits ---


def known_outputs(n=200, k=4, seed=0):
    """Teacher right on the first 150 examples (C), wrong on the last 50 (I); a student that
    agrees with it on 120 of C and 10 of I."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    t_pred = np.where(np.arange(n) < 150, y, (y + 1) % k)
    s_pred = t_pred.copy()
    s_pred[120:150] = (t_pred[120:150] + 2) % k
    s_pred[160:] = (t_pred[160:] + 2) % k
    t = rng.normal(size=(n, k))
    t[np.arange(n), t_pred] += 10
    s = rng.normal(size=(n, k))
    s[np.arange(n), s_pred] += 10
    return t.astype(np.float32), s.astype(np.float32), y


def test_from_logits_matches_reference_values(tmp_path):
    t, s, y = known_outputs()
    np.save(tmp_path / "teacher.npy", t)
    np.save(tmp_path / "labels.npy", y)
    torch.save(torch.from_numpy(s), tmp_path / "student.pt")
    code, output = invoke(
        "audit", "--from-logits", tmp_path / "teacher.npy", tmp_path / "student.pt", "--labels",
        tmp_path / "labels.npy", "--out", tmp_path / "out",
    )  # fmt: skip
    assert code == 0, output
    assert "Without a control" in output and "80.0%" in output and "20.0%" in output
    doc = json.loads((tmp_path / "out" / "audit.json").read_text())
    row = doc["students"]["student.pt"]
    assert row["agree_C"] == pytest.approx(120 / 150) and row["agree_I"] == pytest.approx(10 / 50)
    assert row["teacher_accuracy"] == pytest.approx(0.75)
    p_t, p_s = softmax(t.astype(np.float64), 1), softmax(s.astype(np.float64), 1)
    kl = (p_t * np.log(p_t / p_s)).sum(1)
    assert row["kl_all"] == pytest.approx(kl.mean()) and row["kl_I"] == pytest.approx(
        kl[150:].mean()
    )
    js = jensenshannon(p_t, p_s, axis=1) ** 2
    assert row["js_C"] == pytest.approx(js[:150].mean())
    assert row["aoa"] == pytest.approx(np.clip(1 - kl / kl.max(), 0, 1).mean())
    boot = {r["measure"]: r for r in doc["tables"]["audit-bootstrap"]}
    ci = boot["agree_C"]["student.pt"]
    assert ci["low"] < 0.8 < ci["high"] and ci["n"] == boot["agree_C"]["n"] == 150
    assert ci["value"] == pytest.approx(0.8) and boot["kl_I"]["n"] == 50
    html = (tmp_path / "out" / "report.html").read_text()
    assert str(tmp_path) not in html and "agree_I" in html


def test_several_seeds_give_the_paired_tests_and_features_give_cka(tmp_path):
    pytest.importorskip("safetensors")
    from safetensors.torch import save_file

    t, _, y = known_outputs()
    np.save(tmp_path / "t.npy", t)
    np.save(tmp_path / "y.npy", y)
    students, controls = [], []
    for i in range(3):
        _, s, _ = known_outputs(seed=10 + i)
        _, c, _ = known_outputs(seed=20 + i)
        c = np.random.default_rng(i).normal(size=c.shape).astype(np.float32)
        save_file({"logits": torch.from_numpy(s)}, tmp_path / f"s{i}.safetensors")
        np.save(tmp_path / f"c{i}.npy", c)
        students.append(tmp_path / f"s{i}.safetensors")
        controls.append(tmp_path / f"c{i}.npy")
    feats = torch.randn(200, 6, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(6, 6, dtype=torch.float64))
    torch.save(feats, tmp_path / "tf.pt")
    for i in range(3):
        torch.save({"layer": feats @ q if i == 0 else torch.randn(200, 6)}, tmp_path / f"sf{i}.pt")
    result = audit_logits(
        tmp_path / "t.npy",
        students,
        tmp_path / "y.npy",
        tmp_path / "out",
        controls=controls,
        features=[tmp_path / "tf.pt", *(tmp_path / f"sf{i}.pt" for i in range(3))],
        n_resamples=199,
    )
    doc = json.loads(result.json.read_text())
    rows = doc["students"]
    assert rows["s0.safetensors"]["fss"] == pytest.approx(1.0)  # CKA is rotation invariant
    assert abs(rows["s1.safetensors"]["fss"]) < 0.2
    test = next(
        r for r in doc["tables"]["ft-tests"]
        if r["comparison"] == "kd vs control" and r["measure"] == "agree_I"
    )  # fmt: skip
    kd = [rows[f"s{i}.safetensors"]["agree_I"] for i in range(3)]
    ctl = [rows[f"c{i}.npy"]["agree_I"] for i in range(3)]
    assert test["n"] == 3 and test["mean kd"] == pytest.approx(np.mean(kd))
    assert test["p (t)"] == pytest.approx(stats.ttest_rel(kd, ctl).pvalue)
    assert "ft-payoff" in doc["tables"] and len(result.summary) == 2
    # One seed's student minus its control, example by example.
    diff = {r["measure"]: r for r in doc["tables"]["audit-vs-control"]}["agree_I"]
    assert diff["s1.safetensors \u2212 c1.npy"]["value"] == pytest.approx(kd[1] - ctl[1])


@pytest.mark.parametrize(
    "damage, words",
    [
        ("teacher_1d", "teacher.npy: logits must be a float array (examples, classes >= 2)"),
        ("student_nan", "student.npy: 1 example(s) with NaN or inf values (first at example 7)"),
        ("label_range", "labels.npy: label 9 at example 0 is outside [0, 4)"),
        ("short_student", "student.npy has 199 examples but teacher.npy has 200"),
        ("csv", "student.csv: unknown file type '.csv'; accepted: .npy, .pt, .safetensors"),
        ("classes", "student.npy has 3 classes but teacher.npy has 4"),
        ("controls", "2 control file(s) for 1 student file(s)"),
        ("no_labels", "--from-logits needs --labels"),
        ("features", "--from-features takes the teacher's file and one per student"),
    ],
)
def test_from_logits_errors_name_the_file_and_the_bad_value(tmp_path, damage, words):
    t, s, y = known_outputs()
    student = tmp_path / "student.npy"
    extra = []
    if damage == "teacher_1d":
        t = t[:, 0]
    elif damage == "student_nan":
        s[7, 2] = math.nan
    elif damage == "label_range":
        y[0] = 9
    elif damage == "short_student":
        s = s[:199]
    elif damage == "classes":
        s = s[:, :3]
    elif damage == "csv":
        student = tmp_path / "student.csv"
        student.write_text("1,2\n")
    elif damage == "controls":
        extra = ["--control", student, student]
    elif damage == "features":
        extra = ["--from-features", tmp_path / "teacher.npy"]
    np.save(tmp_path / "teacher.npy", t)
    np.save(tmp_path / "labels.npy", y)
    if student.suffix == ".npy":
        np.save(student, s)
    labels = [] if damage == "no_labels" else ["--labels", tmp_path / "labels.npy"]
    code, output = invoke(
        "audit", "--from-logits", tmp_path / "teacher.npy", student, *labels, *extra, "--out",
        tmp_path / "out",
    )  # fmt: skip
    assert code == 2, output
    assert words in output.replace("\n", " ") and "Traceback" not in output


def test_fss_rs_are_tested_kd_against_both_controls_paired_by_seed():
    from kdscope.audit.relevance import relevance_section

    def row(arm, seed, fss, rs):
        return {"arm": arm, "method": "kd" if arm != "control" else "none", "seed": seed,
                "fss_gradcam": fss, "rs_student": rs}  # fmt: skip

    kd_fss, rc_fss = [0.61, 0.55, 0.66, 0.59], [0.40, 0.45, 0.38, 0.47]
    kd_rs, c_rs = [0.30, 0.28, 0.35, 0.33], [0.25, 0.27, 0.24, 0.22]
    rows = [row("kd", s, kd_fss[s], kd_rs[s]) for s in range(4)]
    rows += [row("random_control", s, rc_fss[s], 0.2) for s in range(4)]
    rows += [row("control", s, None, c_rs[s]) for s in range(4)]
    tests = relevance_section(rows).table("relevance-tests").records()
    by = {(t["comparison"], t["measure"]): t for t in tests}
    assert set(by) == {
        ("kd vs random_control", "fss_gradcam"),
        ("kd vs random_control", "rs_student"),
        ("kd vs control", "rs_student"),
    }
    fss = by["kd vs random_control", "fss_gradcam"]
    assert fss["p (t)"] == pytest.approx(stats.ttest_rel(kd_fss, rc_fss).pvalue)
    # Holm over the two measures of the kd vs random_control family.
    rs = by["kd vs random_control", "rs_student"]
    p_fss, p_rs = fss["p (t)"], rs["p (t)"]
    holm = 2 * p_fss if p_fss <= p_rs else max(2 * p_rs, p_fss)
    assert fss["p Holm (t)"] == pytest.approx(min(1.0, holm))
    assert by["kd vs control", "rs_student"]["p (t)"] == pytest.approx(
        stats.ttest_rel(kd_rs, c_rs).pvalue
    )
