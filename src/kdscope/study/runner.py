"""Running a study: train every planned run through :func:`kdscope.api.run` (skipping finished
runs, resuming interrupted ones, recording failures), evaluate each row and write the tidy table
``results.{jsonl,csv}``; :func:`~kdscope.study.report.study_report` turns it into ``report.html``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from kdscope.analysis import tidy
from kdscope.analysis.functional import ARMS_READ as FUNCTIONAL_ARMS
from kdscope.analysis.krs_validation import ARMS_READ as KRS_ARMS
from kdscope.config import ConfigError
from kdscope.study.config import StudyConfig
from kdscope.study.cost import estimate
from kdscope.study.executors import Executor, LocalExecutor
from kdscope.study.plan import (
    IDENTITY_IGNORED,
    Plan,
    PlannedRow,
    PlannedRun,
    check_plan,
    expand,
    fingerprint,
)
from kdscope.study.tasks import calibrate, evaluate_row, train
from kdscope.train.run_dir import RunDirectory, config_changes


@dataclass
class StudyResult:
    study_dir: Path
    rows: list[dict[str, Any]]
    trained: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


def run_status(run_dir: Path) -> Literal["finished", "interrupted", "new"]:
    """``finished`` (summary.json written), ``interrupted`` (only checkpoints/last.pt), ``new``."""
    if (run_dir / "summary.json").exists():
        return "finished"
    return "interrupted" if (run_dir / "checkpoints" / "last.pt").exists() else "new"


def run_study(
    cfg: StudyConfig, executor: Executor | None = None, log: Callable[[str], None] = print
) -> StudyResult:
    """Train, evaluate and tabulate the study; rerunning it skips what is finished.

    Raises :class:`~kdscope.config.ConfigError` listing every bad name before anything trains.
    A run that fails is recorded (``failures.jsonl`` and its rows' ``status``/``error``) and the
    runs that need it are skipped; the rest go on.
    """
    plan = expand(cfg)
    problems = check_plan(plan)
    if problems:
        raise ConfigError("Invalid study:\n" + "\n".join(f"  {p}" for p in problems))
    study_dir = cfg.study_dir
    study_dir.mkdir(parents=True, exist_ok=True)
    resolved = yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
    (study_dir / "study.yaml").write_text(resolved)
    (study_dir / "plan.json").write_text(json.dumps(
        {"runs": {k: {"teacher": r.teacher, "fingerprint": r.fingerprint}
                  for k, r in plan.runs.items()},
         "rows": [{"id": r.id, **r.labels} for r in plan.rows]}, indent=1))  # fmt: skip
    executor = executor or LocalExecutor()
    result = StudyResult(study_dir, [])
    todo = [run for run in plan.runs.values() if run.external is None and not _current(run, plan)]
    for line in estimate(cfg, plan, todo)[1]:
        log(line)
    _note_unread_arms(cfg, plan, log)
    # Runs without a teacher (teachers, controls, replicas) first, then those that distil.
    for phase in ([r for r in plan.runs.values() if r.teacher is None],
                  [r for r in plan.runs.values() if r.teacher is not None]):  # fmt: skip
        _train_phase(phase, plan, executor, result, log)
    rows = _evaluate(cfg, plan, executor, result, log)
    result.rows = rows
    tidy.write_rows(study_dir / "results.jsonl", rows)
    tidy.write_rows(study_dir / "results.csv", rows)
    with (study_dir / "failures.jsonl").open("w") as f:
        f.writelines(json.dumps({"run": k, "error": v}) + "\n" for k, v in result.failed.items())
    log(f"{len(result.trained)} run(s) trained, {len(result.skipped)} already finished, "
        f"{len(result.failed)} failed; table: {study_dir / 'results.csv'}")  # fmt: skip
    return result


ARMS_READ = {"functional": FUNCTIONAL_ARMS, "krs": KRS_ARMS}


def _note_unread_arms(cfg: StudyConfig, plan: Plan, log) -> None:
    """Say which arms' runs no analysis of ``cfg.analyses`` reads (they train for the table
    only), so hours are not spent on them unawares."""
    if not cfg.analyses:
        return
    read = {arm for a in cfg.analyses for arm in ARMS_READ[a]}
    unread = sorted({r.labels["arm"] for r in plan.rows} - read)
    if unread:
        names = ", ".join(unread)
        log(
            f"note: no analysis of {cfg.analyses} reads the {names} arm(s); their runs train "
            "for the table only (drop them from arms to save the time)"
        )


IDENTITY = "identity.json"


def _identity(run: PlannedRun, plan: Plan) -> tuple[str | None, dict]:
    """The fingerprint and config the run's directory was trained under (from ``identity.json``,
    or for a run written before it existed, from its ``config.yaml``)."""
    run_dir = run.config.run_dir
    if (run_dir / IDENTITY).exists():
        stored = json.loads((run_dir / IDENTITY).read_text())
        return stored["fingerprint"], stored["config"]
    if (run_dir / "config.yaml").exists():
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
        teacher = plan.runs[run.teacher].fingerprint if run.teacher else None
        return fingerprint(config, teacher), config
    return None, {}


def _current(run: PlannedRun, plan: Plan) -> bool:
    """Whether the run directory holds this run finished under its present settings."""
    finished = run_status(run.config.run_dir) == "finished"
    return finished and _identity(run, plan)[0] == run.fingerprint


def _retire_if_changed(run: PlannedRun, plan: Plan, log) -> None:
    """A run directory trained under other settings is moved aside, kept under its old identity
    (``<id>@<old fingerprint>``), so that the cell is retrained and no result is mixed."""
    run_dir = run.config.run_dir
    if not run_dir.exists():
        return
    old, config = _identity(run, plan)
    if old == run.fingerprint:
        return
    changed = [
        name
        for name in config_changes(config, run.config.model_dump(mode="json"))
        if name not in IDENTITY_IGNORED
    ]
    kept = run_dir.with_name(f"{run.id}@{old or 'unknown'}")
    n = 1
    while kept.exists():
        kept, n = run_dir.with_name(f"{run.id}@{old or 'unknown'}.{n}"), n + 1
    # Never from under a process training into it (another study process on the same study):
    # its lock names it.
    lock = RunDirectory(run_dir)
    lock.lock()
    run_dir.rename(kept)
    (kept / lock.lock_file.name).unlink(missing_ok=True)
    what = ", ".join(changed) or "its teacher"
    log(f"{run.id}: settings changed ({what}); the old run is kept as {kept.name}, retraining")


def _train_phase(
    runs: list[PlannedRun], plan: Plan, executor: Executor, result: StudyResult, log
) -> None:
    todo = []
    for run in runs:
        if run.teacher in result.failed:
            result.failed[run.id] = f"teacher run {run.teacher!r} failed"
            continue
        if run.external is not None:
            if run_status(run.external) != "finished":
                result.failed[run.id] = f"the teacher run {run.external} has not finished"
            continue
        _retire_if_changed(run, plan, log)
        status = run_status(run.config.run_dir)
        if status == "finished":
            result.skipped.append(run.id)
            continue
        todo.append((run, status == "interrupted"))
        run.config.run_dir.mkdir(parents=True, exist_ok=True)
        identity = {"fingerprint": run.fingerprint, "config": run.config.model_dump(mode="json")}
        (run.config.run_dir / IDENTITY).write_text(json.dumps(identity, indent=1))
    # Runs in this process show their epochs; a pool's would interleave, so they print one line.
    args = [
        (run.config.model_dump(mode="json"), resume, _teacher_acc(run), executor.in_process)
        for run, resume in todo
    ]
    for done, (i, outcome) in enumerate(executor.map(train, args), 1):
        run, resume = todo[i]
        if outcome.ok:
            result.trained.append(run.id)
            score = outcome.value["score"].replace("_", " ")
            log(f"[{done}/{len(todo)}] {run.id}: test {score} {outcome.value['test_acc']:.4f} "
                f"({outcome.value['seconds']:.0f} s{', resumed' if resume else ''})")  # fmt: skip
        else:
            result.failed[run.id] = outcome.error
            log(f"[{done}/{len(todo)}] {run.id}: FAILED {outcome.error}")


def _teacher_acc(run: PlannedRun) -> float | None:
    """The test accuracy the teacher's run recorded (same study, so the same test split)."""
    if run.config.teacher is None:
        return None
    summary = Path(run.config.teacher.checkpoint) / "summary.json"
    return json.loads(summary.read_text())["test_acc"]


def _evaluate(cfg, plan: Plan, executor: Executor, result: StudyResult, log) -> list[dict]:
    def where(run_id: str) -> str:
        return str(plan.runs[run_id].run_dir)

    data = cfg.data.model_dump(mode="json")
    evaluation = cfg.evaluation.model_dump(mode="json")
    ok = [r for r in plan.rows if r.run not in result.failed and r.teacher_run not in result.failed]
    by_teacher: dict[str, list[PlannedRow]] = {}
    for r in ok:
        by_teacher.setdefault(r.teacher_run, []).append(r)
    # One calibration constant C per teacher, shared by every student compared with it.
    teachers = list(by_teacher)
    args = [(data, where(t), [where(r.run) for r in by_teacher[t]], evaluation)
            for t in teachers]  # fmt: skip
    c = {}
    for i, outcome in executor.map(calibrate, args):
        if outcome.ok:
            c[teachers[i]] = outcome.value
        else:
            for r in by_teacher[teachers[i]]:
                result.failed.setdefault(r.id, f"calibration failed: {outcome.error}")
    cache_dir = cfg.study_dir / "evals"
    cache_dir.mkdir(exist_ok=True)
    measured: dict[tuple[str, str], dict] = {}
    todo = []
    for r in ok:
        if r.teacher_run not in c:
            continue
        for which in cfg.evaluation.checkpoints:
            cached = cache_dir / f"{_eval_id(r, which)}.json"
            entry = json.loads(cached.read_text()) if cached.exists() else {}
            # Reused only for the same C and the same trained student.
            same = (entry.get("c"), entry.get("trained"), entry.get("fingerprint")) == (
                c[r.teacher_run],
                _mtime(plan.runs[r.run].run_dir),
                plan.runs[r.run].fingerprint,
            )
            if same:
                measured[r.id, which] = entry["measures"]
            else:
                todo.append((r, which))
    args = [(data, where(r.teacher_run), where(r.run), c[r.teacher_run], evaluation, which)
            for r, which in todo]  # fmt: skip
    start = time.perf_counter()
    for i, outcome in executor.map(evaluate_row, args):
        r, which = todo[i]
        if outcome.ok:
            measured[r.id, which] = outcome.value
            entry = {"c": c[r.teacher_run], "trained": _mtime(plan.runs[r.run].run_dir),
                     "fingerprint": plan.runs[r.run].fingerprint,
                     "measures": outcome.value}  # fmt: skip
            (cache_dir / f"{_eval_id(r, which)}.json").write_text(json.dumps(entry))
        else:
            result.failed.setdefault(r.id, f"evaluation failed: {outcome.error}")
    if todo:
        log(f"evaluated {len(todo)} row(s) in {time.perf_counter() - start:.0f} s")
    columns = dict.fromkeys(k for m in measured.values() for k in m)
    rows = []
    several = len(cfg.evaluation.checkpoints) > 1
    for r in plan.rows:
        failed = result.failed
        error = failed.get(r.run) or failed.get(r.teacher_run) or failed.get(r.id)
        for which in cfg.evaluation.checkpoints:
            labels = {**r.labels, "checkpoint": which} if several else r.labels
            row = {**labels, "run": r.run, "teacher_run": r.teacher_run,
                   "fingerprint": plan.runs[r.run].fingerprint,
                   "status": "failed" if error else "ok", "error": error}  # fmt: skip
            rows.append({**row, **dict.fromkeys(columns), **measured.get((r.id, which), {})})
    return rows


def _eval_id(row: PlannedRow, which: str) -> str:
    """A row's evaluation under checkpoint ``which`` (the best one keeps the row's own id)."""
    return row.id if which == "best" else f"{row.id}#{which}"


def _mtime(run_dir: Path) -> float:
    return (run_dir / "summary.json").stat().st_mtime
