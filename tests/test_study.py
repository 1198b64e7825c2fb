"""Studies: grid expansion, validation before training, the runner (skip, resume, failures), the
evaluation rows, the report, the executors and the `kdscope study` / `kdscope report` commands."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from kdscope import api
from kdscope.analysis import read_rows
from kdscope.cli import app
from kdscope.config import ConfigError, build_config
from kdscope.data import load_data
from kdscope.metrics import calibration_constant
from kdscope.study import StudyConfig, expand, load_study, run_study, study_report
from kdscope.study.executors import (
    LocalExecutor,
    ProcessExecutor,
    make_executor,
    threads_per_worker,
)
from kdscope.study.plan import REPLICA_SEED_OFFSET, fingerprint
from kdscope.study.runner import _note_unread_arms
from kdscope.train import load_model

runner = CliRunner()


def tiny(tmp_path: Path, **fields) -> dict:
    """A study that trains in seconds: digits, 200 images, 1 epoch, resnet8 teacher and student."""
    cfg = {
        "name": "tiny",
        "out_dir": str(tmp_path),
        "data": {"name": "digits", "train_size": 200, "batch_size": 64},
        "train": {"epochs": 1, "threads": 1},
        "pairs": [{"teacher": "resnet8", "student": "resnet8"}],
        "teacher_seed": 100,
        "seeds": [0, 1],
        "arms": {"random_control": True},
        "evaluation": {"test_size": 120},
    }
    return cfg | fields


class CountingRun:
    """Wraps api.run to record (run name, resume) of every training it starts."""

    def __init__(self, monkeypatch, fail: str | None = None):
        self.calls: list[tuple[str, bool]] = []
        self.fail = fail
        self._run = api.run
        monkeypatch.setattr(api, "run", self)

    def __call__(self, cfg, resume=False, progress=True, **options):
        self.calls.append((cfg.name, resume))
        if self.fail and self.fail in cfg.name:
            raise RuntimeError(f"boom in {cfg.name}")
        return self._run(cfg, resume=resume, progress=progress, **options)


def test_expand_grid_shares_teachers_and_controls(tmp_path):
    cfg = StudyConfig.model_validate(
        tiny(
            tmp_path,
            pairs=[
                {"teacher": "resnet20", "student": "resnet8"},
                {"teacher": "resnet14", "student": "resnet8"},
            ],
            seeds=[0, 1, 2],
            sweeps={"alpha": [0.1, 0.9], "student": ["wrn_16_1"]},
            methods=[{"name": "kd"}, {"name": "at"}],
            arms={"random_control": True, "teacher_replica": True},
        )
    )
    plan = expand(cfg)
    runs = plan.runs
    teachers = sorted(r for r in runs if r.startswith("teacher-"))
    assert teachers == ["teacher-resnet14-s100", "teacher-resnet20-s100"]
    assert runs["teacher-resnet20-s100"].config.train.seed == 100
    # One control per student and seed, evaluated against each teacher it is paired with.
    controls = [r for r in runs if r.startswith("control-")]
    assert len(controls) == 2 * 3
    control_rows = [r for r in plan.rows if r.labels["arm"] == "control"]
    assert len(control_rows) == 4 * 3  # 4 (teacher, student) pairs x 3 seeds
    # alpha sweeps kd (2 settings) but not at, which has no alpha; random control only for kd.
    kd_rows = [r for r in plan.rows if r.labels["arm"] == "kd"]
    assert len(kd_rows) == 4 * 3 * (2 + 1)
    assert {r.labels["alpha"] for r in kd_rows if r.labels["method"] == "kd"} == {0.1, 0.9}
    rc_rows = [r for r in plan.rows if r.labels["arm"] == "random_control"]
    assert len(rc_rows) == 4 * 3 * 2
    rc = rc_rows[0]
    rc_run = runs[rc.run].config
    assert rc.labels["method"] == "kd" and rc.labels["train_method"] == "random_control"
    assert rc_run.method.name == "random_control"
    assert rc_run.method.params["alpha"] == rc.labels["alpha"]
    assert rc_run.teacher.checkpoint == cfg.study_dir / "runs" / rc.teacher_run
    # Replicas: the teacher architecture retrained with offset seeds, one row per seed.
    replicas = [r for r in plan.rows if r.labels["arm"] == "teacher_replica"]
    assert len(replicas) == 2 * 3
    assert {runs[r.run].config.train.seed for r in replicas} == {REPLICA_SEED_OFFSET + s for s in
                                                                  (0, 1, 2)}  # fmt: skip
    assert len({r.id for r in plan.rows}) == len(plan.rows)


def test_per_seed_teachers(tmp_path):
    plan = expand(StudyConfig.model_validate(tiny(tmp_path, teacher_seed="per_seed")))
    kd = [r for r in plan.rows if r.labels["arm"] == "kd"]
    assert [(r.labels["seed"], r.teacher_run) for r in kd] == [
        (0, "teacher-resnet8-s0"),
        (1, "teacher-resnet8-s1"),
    ]


@pytest.mark.parametrize(
    "change, words",
    [
        ({"seedz": [1]}, ["seedz", "Extra inputs"]),
        ({"seeds": [1, 1]}, ["seeds must be distinct"]),
        ({"methods": [{"name": "none"}]}, ["methods[0]", "arms.control"]),
        ({"arms": {"random_mode": "shuffle"}}, ["arms.random_mode", "shuffle"]),
        (
            {"methods": [{"name": "kd", "params": {"alpha": 0.5}}], "sweeps": {"alpha": [0.1]}},
            ["methods[0].params.alpha", "sweeps.alpha"],
        ),
    ],
)
def test_load_study_names_bad_fields(tmp_path, change, words):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(tiny(tmp_path) | change))
    with pytest.raises(ConfigError) as err:
        load_study(path)
    for word in words:
        assert word in str(err.value)


def test_unknown_names_fail_before_training_listing_every_problem(tmp_path, monkeypatch):
    counter = CountingRun(monkeypatch)
    cfg = StudyConfig.model_validate(
        tiny(
            tmp_path,
            data={"name": "digitz"},
            pairs=[{"teacher": "resnet99", "student": "resnet8"}],
            methods=[{"name": "kdd"}, {"name": "kd", "params": {"tau": 2}}],
        )
    )
    with pytest.raises(ConfigError) as err:
        run_study(cfg, log=lambda m: None)
    message = str(err.value)
    for word in ("digitz", "resnet99", "kdd", "tau"):
        assert word in message
    assert counter.calls == []
    assert not cfg.study_dir.exists()


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """The tiny study run once through `kdscope study` (teacher, 2 controls, 2 kd, 2 random)."""
    tmp = tmp_path_factory.mktemp("study")
    path = tmp / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny(tmp)))
    with pytest.MonkeyPatch.context() as mp:
        counter = CountingRun(mp)
        result = runner.invoke(app, ["study", str(path)])
    assert result.exit_code == 0, result.output
    return {"config": path, "dir": tmp / "tiny", "calls": counter.calls, "output": result.output}


def test_study_trains_every_run_once_and_tabulates(finished):
    study_dir = finished["dir"]
    assert len(finished["calls"]) == 7 and not any(resume for _, resume in finished["calls"])
    rows = read_rows(study_dir / "results.jsonl")
    assert read_rows(study_dir / "results.csv") == rows
    assert sorted(r["arm"] for r in rows) == ["control"] * 2 + ["kd"] * 2 + ["random_control"] * 2
    for r in rows:
        assert r["status"] == "ok" and r["error"] is None
        assert r["study"] == "tiny" and r["dataset"] == "digits" and r["teacher"] == "resnet8"
        assert (r["alpha"], r["temperature"]) == ((None, None) if r["arm"] == "control" else
                                                  (0.9, 4.0))  # fmt: skip
        assert r["n_test"] == 120
        for m in ("accuracy", "agree_all", "agree_C", "agree_I", "same_wrong_I", "krs", "fss"):
            assert 0.0 <= r[m] <= 1.0
        # agreement on all examples is the C/I mixture weighted by the teacher's accuracy
        mix = r["teacher_accuracy"] * r["agree_C"] + (1 - r["teacher_accuracy"]) * r["agree_I"]
        assert r["agree_all"] == pytest.approx(mix)
        assert r["same_wrong_I"] == pytest.approx(r["agree_I"])
        assert r["student_params"] == sum(
            p.numel() for p in load_model(study_dir / "runs" / r["run"]).parameters()
        )
    assert "report written" in finished["output"]
    assert (study_dir / "report.html").exists()


def test_one_calibration_constant_per_teacher(finished):
    """C is the largest validation KL of any student of the teacher (oracle recomputation)."""
    from kdscope.data import load_data

    study_dir = finished["dir"]
    rows = read_rows(study_dir / "results.jsonl")
    assert len({r["c"] for r in rows}) == 1
    val = load_data("digits", train_size=200).val
    x = torch.stack([val[i][0] for i in range(len(val))])
    teacher = load_model(study_dir / "runs" / rows[0]["teacher_run"])
    with torch.no_grad():
        t_logits = teacher(x)
        expected = max(
            calibration_constant(t_logits, load_model(study_dir / "runs" / r["run"])(x))
            for r in rows
        )
    assert rows[0]["c"] == pytest.approx(expected, rel=1e-5)


def test_rerun_skips_finished_and_resumes_interrupted(finished, monkeypatch):
    study_dir = finished["dir"]
    cfg = load_study(finished["config"])
    summaries = sorted((study_dir / "runs").glob("*/summary.json"))
    mtimes = [p.stat().st_mtime_ns for p in summaries]
    counter = CountingRun(monkeypatch)
    evaluated = []
    monkeypatch.setattr("kdscope.study.runner.evaluate_row", lambda *a: evaluated.append(a))
    run_study(cfg, log=lambda m: None)
    assert counter.calls == [] and evaluated == []
    assert [p.stat().st_mtime_ns for p in summaries] == mtimes
    # A run killed before it finished has last.pt but no summary.json: it is resumed.
    (study_dir / "runs" / "control-resnet8-s1" / "summary.json").unlink()
    monkeypatch.undo()
    counter = CountingRun(monkeypatch)
    result = run_study(cfg, log=lambda m: None)
    assert counter.calls == [("control-resnet8-s1", True)]
    assert result.trained == ["control-resnet8-s1"] and len(result.skipped) == 6


def test_runs_in_this_process_show_their_epochs_and_a_pools_do_not(finished, tmp_path, capsys):
    out = finished["output"]
    assert "control-resnet8-s0: training" in out and "epoch 1: loss=" in out

    class Pooled(LocalExecutor):
        in_process = False

    cfg = StudyConfig.model_validate(tiny(tmp_path, seeds=[0], arms={"kd": False}))
    result = run_study(cfg, Pooled(), log=lambda m: None)
    assert result.trained and not result.failed
    out = capsys.readouterr().out
    assert "epoch 1" not in out and ": training" not in out


def test_report_command(finished):
    result = runner.invoke(app, ["report", str(finished["dir"])])
    assert result.exit_code == 0, result.output
    html = (finished["dir"] / "report.html").read_text()
    for title in ("Study grid", "Functional transfer", "KRS validation", "study.yaml"):
        assert title in html
    assert "Missing cells" not in html
    assert str(finished["dir"].parent) not in html  # paths relative to the study directory
    assert '<details id="code-study-yaml-resolved" class="code">' in html


def test_failing_run_is_recorded_and_the_study_goes_on(tmp_path, monkeypatch):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(tiny(tmp_path, seeds=[0, 1], arms={"kd": True})))
    counter = CountingRun(monkeypatch, fail="kd-teacher-resnet8-s100--resnet8-kd-s1")
    result = runner.invoke(app, ["study", str(path)])
    assert result.exit_code == 0, result.output
    assert len(counter.calls) == 5  # teacher, 2 controls, 2 kd: the failure stopped nothing
    study_dir = tmp_path / "tiny"
    rows = {(r["arm"], r["seed"]): r for r in read_rows(study_dir / "results.jsonl")}
    failed = rows["kd", 1]
    assert failed["status"] == "failed" and "boom" in failed["error"]
    assert failed["accuracy"] is None
    assert all(r["status"] == "ok" for k, r in rows.items() if k != ("kd", 1))
    failures = [json.loads(x) for x in (study_dir / "failures.jsonl").read_text().splitlines()]
    assert failures == [{"run": failed["run"], "error": "RuntimeError: boom in " + failed["run"]}]
    # The partial report names the missing cell and why.
    html = (study_dir / "report.html").read_text()
    assert "Missing cells" in html and "Partial study: 1 of 4" in html
    assert "boom in" in html


def test_report_of_a_study_not_yet_evaluated_lists_every_cell(tmp_path):
    cfg = StudyConfig.model_validate(tiny(tmp_path, seeds=[3]))
    study_dir = cfg.study_dir
    study_dir.mkdir(parents=True)
    (study_dir / "study.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    study_report(study_dir)  # no plan.json (a config and a table suffice): the grid is expanded
    html = (study_dir / "report.html").read_text()
    assert "Partial study: 3 of 3" in html and html.count("not run yet") == 3


def test_report_refuses_a_directory_that_is_no_study(tmp_path):
    result = runner.invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 2 and "not a study directory" in result.output


def test_study_command_rejects_unknown_names(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(tiny(tmp_path, pairs=[{"teacher": "resnet99",
                                                           "student": "resnet7"}])))  # fmt: skip
    result = runner.invoke(app, ["study", str(path), "--set", "methods=[{name: kdd}]"])
    assert result.exit_code == 2
    for word in ("resnet99", "resnet7", "kdd"):
        assert word in result.output
    assert not (tmp_path / "tiny").exists()


def test_executors_capture_failures_and_set_threads():
    tasks = [(4.0,), (-1.0,), (9.0,)]
    outcomes = dict(LocalExecutor().map(math.sqrt, tasks))
    assert [outcomes[i].ok for i in range(3)] == [True, False, True]
    assert outcomes[0].value == 2.0 and "ValueError" in outcomes[1].error
    with ProcessExecutor(2, threads=1) as pool:
        outcomes = dict(pool.map(math.sqrt, tasks))
        threads = dict(pool.map(torch.get_num_threads, [(), ()]))
    assert outcomes[2].value == 3.0 and not outcomes[1].ok and "math domain" in outcomes[1].error
    assert [threads[i].value for i in range(2)] == [1, 1]
    assert threads_per_worker(10**6) == 1


def test_make_executor_names_accepted_values():
    assert isinstance(make_executor("local"), LocalExecutor)
    assert isinstance(make_executor("local", workers=3), ProcessExecutor)
    with pytest.raises(ValueError, match="accepted: local, ray"):
        make_executor("dask")


def test_a_shared_teacher_run_and_both_checkpoints(tmp_path):
    teacher = api.run(
        build_config(
            {
                "name": "shared-teacher",
                "out_dir": str(tmp_path),
                "data": {"name": "digits", "train_size": 200, "batch_size": 64},
                "student": {"name": "resnet8"},
                "train": {"epochs": 1, "threads": 1},
            }
        ),  # fmt: skip
        progress=False,
    ).run_dir
    cfg = tiny(
        tmp_path,
        pairs=[
            {"teacher": "resnet8", "student": "resnet8", "teacher_run": str(teacher)}
        ],  # fmt: skip
        arms={},
        seeds=[0],
        evaluation={"test_size": 120, "checkpoints": ["best", "last"]},
    )
    result = run_study(StudyConfig.model_validate(cfg), log=lambda m: None)
    rows = read_rows(result.study_dir / "results.jsonl")
    shared = rows[0]["teacher_run"]  # named by the shared run's fingerprint
    assert sorted(result.trained) == ["control-resnet8-s0", f"kd-{shared}--resnet8-kd-s0"]
    assert not any(p.name.startswith("teacher") for p in (result.study_dir / "runs").iterdir())
    assert sorted((r["arm"], r["checkpoint"]) for r in rows) == [
        ("control", "best"), ("control", "last"), ("kd", "best"), ("kd", "last")]  # fmt: skip
    assert all(r["status"] == "ok" for r in rows)
    assert {r["teacher_run"] for r in rows} == {shared}
    html = study_report(result.study_dir).read_text()
    assert "best-validation checkpoints" in html and "last-epoch checkpoints" in html
    with pytest.raises(ConfigError, match="is not a kdscope run directory"):
        bad = tiny(tmp_path, pairs=[{"teacher": "resnet8", "student": "resnet8",
                                     "teacher_run": str(tmp_path)}])  # fmt: skip
        expand(StudyConfig.model_validate(bad))


def test_the_cost_estimate_prices_the_runs_still_to_train(tmp_path):
    from kdscope.study.cost import estimate

    cfg = StudyConfig.model_validate(tiny(tmp_path, train={"epochs": 2, "threads": 1}))
    plan = expand(cfg)
    todo = list(plan.runs.values())
    seconds, lines = estimate(cfg, plan, todo)
    assert seconds > 0 and lines[0].startswith(f"{len(todo)} run(s) to train")
    assert any("resnet8 step" in line for line in lines)
    fewer, _ = estimate(cfg, plan, todo[:1])
    assert 0 < fewer < seconds
    assert estimate(cfg, plan, []) == (0.0, [])


def test_the_cost_estimate_counts_one_shared_cache_fill_per_teacher_and_method(
    tmp_path, monkeypatch
):
    from kdscope.study import cost

    monkeypatch.setattr(cost, "_timed", lambda fn: 0.01)  # every step and forward: 10 ms
    cfg = StudyConfig.model_validate(tiny(tmp_path, seeds=[0, 1, 2]))
    plan = expand(cfg)
    distilled = [r for r in plan.runs.values() if r.teacher is not None]
    assert len(distilled) == 6  # kd and random_control, 3 seeds: 2 fills shared, 4 reused
    shared, _ = cost.estimate(cfg, plan, list(plan.runs.values()))
    for run in distilled:
        train = run.config.train.model_copy(update={"cache_dir": None})
        plan.runs[run.id] = dataclasses.replace(
            run, config=run.config.model_copy(update={"train": train})
        )
    own, _ = cost.estimate(cfg, plan, list(plan.runs.values()))
    data = load_data(cfg.data)
    fill = 0.01 * math.ceil(len(data.train) / cfg.data.batch_size)
    assert own - shared == pytest.approx(4 * fill)


def test_a_cells_identity_ignores_exact_cache_modes_but_not_the_view_bank():
    config = build_config({"student": {"name": "resnet8"}}).model_dump(mode="json")

    def with_cache(mode):
        return fingerprint(config | {"train": config["train"] | {"cache": mode}}, "t")

    assert with_cache("off") == with_cache("memory") == with_cache("auto")
    assert with_cache("views") != with_cache("off")


@pytest.mark.parametrize(("analyses", "unread"), [
    (["krs"], "random_control, teacher_replica"), (["functional"], None), ([], None),
])  # fmt: skip
def test_arms_no_analysis_reads_are_named_before_training(tmp_path, analyses, unread):
    arms = {"random_control": True, "teacher_replica": True}
    cfg = StudyConfig.model_validate(tiny(tmp_path, arms=arms, analyses=analyses))
    lines = []
    _note_unread_arms(cfg, expand(cfg), lines.append)
    if unread is None:
        assert lines == []
    else:
        assert len(lines) == 1 and f"reads the {unread} arm(s)" in lines[0]
