"""``kdscope audit --teacher RUN_OR_MODEL --student ARCH --method kd --data NAME --seeds 5``: a
study built for the one question "did my student learn the teacher's function, or was distillation a
regulariser?" (shared/specs/functional-transfer.md), run by the study runner.

Arms, with the same recipe and seeds: each distilled method (``kd`` at the spec's alpha = 0.9,
T = 4 unless ``--set`` changes them), an independent student on labels alone (``control``) and a
random-control student (the KD loss with the teacher's distribution replaced by Gaussian noise).
The teacher is a finished kdscope run (used as it is) or an architecture the audit trains once.
Analyses: functional transfer (agreement on C / I, the paired tests, the payoff), KRS (FSS, AOA)
and UniCAM's FSS/RS against the control; one report, ``DIR/report.html``, and ``DIR/audit.json``.
Runs that exist are reused; an interrupted audit resumes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from kdscope.analysis.functional import functional_transfer
from kdscope.analysis.krs_validation import krs_validation
from kdscope.analysis.report import Code, Section, Table
from kdscope.analysis.tidy import number
from kdscope.audit.output import AuditResult, relative, write_audit
from kdscope.audit.relevance import relevance_section, relevance_task
from kdscope.audit.summary import sentences
from kdscope.config import ConfigError, RunConfig, apply_overrides, format_validation_error
from kdscope.study.config import StudyConfig
from kdscope.study.cost import estimate
from kdscope.study.executors import Executor, LocalExecutor
from kdscope.study.plan import Plan, check_plan, expand
from kdscope.study.runner import run_status, run_study

AUDITS_DIR = Path("runs/audits")
# Batches of the test split for FSS/RS: Grad-CAM and UniCAM per layer make it the costliest
# measure; explain_student defaults to 8 batches of 64.
RELEVANCE_BATCHES = 4
SHOWN = ("accuracy", "agree_all", "agree_C", "agree_I", "kl_all", "krs", "fss", "aoa",
         "fss_gradcam", "rs_student")  # fmt: skip


def audit_config(
    teacher: str,
    student: str,
    methods: Sequence[str] = ("kd",),
    data: str | None = None,
    seeds: int = 5,
    epochs: int | None = None,
    out: str | Path | None = None,
    overrides: Sequence[str] = (),
) -> StudyConfig:
    """The audit's study: ``teacher`` a kdscope run directory or an architecture name; ``data``
    defaults to the teacher run's dataset (with its splits); ``seeds`` students per arm (seeds
    0..seeds-1); ``out`` the audit directory (default ``runs/audits/<teacher>-<student>-<data>``);
    ``overrides`` ``key.sub=value`` on the study config (e.g. ``sweeps.alpha=[0.1,0.9]``)."""
    if seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {seeds}")
    if not methods:
        raise ConfigError("an audit needs at least one --method to distil with (e.g. kd)")
    pair: dict[str, Any] = {"student": student}
    path = Path(teacher)
    if path.is_dir():
        if not (path / "config.yaml").is_file():
            raise ConfigError(
                f"--teacher {teacher!r} is a directory but not a kdscope run (no config.yaml)"
            )
        if run_status(path) != "finished":
            raise ConfigError(
                f"--teacher {teacher!r} has not finished training (no summary.json); finish it "
                "first (kdscope train ... --resume)"
            )
        run = RunConfig.model_validate(yaml.safe_load((path / "config.yaml").read_text()))
        if data is not None and data != run.data.name:
            raise ConfigError(
                f"--data {data!r} differs from the teacher run's dataset {run.data.name!r}: the "
                "students must be audited on the teacher's data (leave --data out)"
            )
        # The teacher's splits: a student's test set must be one its teacher never trained on.
        data_section = run.data.model_dump(mode="json")
        pair |= {"teacher": run.student.name, "teacher_run": str(path)}
        t_name = path.name
    elif path.exists():
        raise ConfigError(
            f"--teacher {teacher!r} is a file; give a kdscope run directory or a model name"
        )
    else:
        if data is None:
            raise ConfigError("--data is needed when the teacher is a model to train (not a run)")
        pair["teacher"] = teacher
        t_name, data_section = teacher, {"name": data}
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{t_name}-{student}-{data_section['name']}")
    out = Path(out) if out is not None else AUDITS_DIR / name
    config = {
        "name": out.name,
        "out_dir": str(out.parent),
        "data": data_section,
        "train": {"epochs": epochs} if epochs is not None else {},
        "pairs": [pair],
        "methods": [{"name": m} for m in methods],
        "seeds": list(range(seeds)),
        "arms": {"kd": True, "control": True, "random_control": True, "random_mode": "gaussian"},
        "analyses": ["functional", "krs"],
    }
    try:
        cfg = StudyConfig.model_validate(apply_overrides(config, list(overrides)))
    except ValidationError as err:
        raise ConfigError(format_validation_error(err).replace("configuration", "audit")) from None
    if len(cfg.evaluation.checkpoints) > 1:
        raise ConfigError(
            f"an audit measures one checkpoint per run, got evaluation.checkpoints="
            f"{cfg.evaluation.checkpoints}; set best or last"
        )
    return cfg


def plan_lines(cfg: StudyConfig, plan: Plan) -> list[str]:
    """What the audit trains (per arm, the runs still to train and those already finished)."""
    pair = cfg.pairs[0]
    teacher = (
        f"the run {pair.teacher_run}" if pair.teacher_run else f"{pair.teacher} (trained here)"
    )
    lines = [
        f"Audit {cfg.name}: teacher {teacher}, student {pair.student}, data {cfg.data.name}, "
        f"seeds {', '.join(map(str, cfg.seeds))}, {cfg.train.epochs} epoch(s) per student"
    ]
    arm_of = {r.run: (r.labels["arm"], r.labels["train_method"]) for r in plan.rows}
    kinds: dict[str, list[int]] = {}
    for run in plan.runs.values():
        if run.external is not None:
            continue
        arm, method = arm_of.get(run.id, ("teacher", None))
        key = {
            "kd": f"distilled ({method})",
            "random_control": "random control",
            "control": "control (labels alone)",
        }.get(arm, arm)
        done = run_status(run.config.run_dir) == "finished"
        kinds.setdefault(key, [0, 0])[done] += 1
    for key, (todo, done) in kinds.items():
        lines.append(f"  {key}: {todo} to train" + (f", {done} already finished" if done else ""))
    return lines


def audit_runs(
    cfg: StudyConfig,
    executor: Executor | None = None,
    log: Callable[[str], None] = print,
    *,
    relevance: bool = True,
    dry_run: bool = False,
) -> AuditResult | None:
    """Print the plan and its cost, train what is missing (:func:`run_study`), measure FSS/RS and
    write the audit. ``dry_run``: print the plan and the estimate, train nothing (returns None)."""
    plan = expand(cfg)
    problems = check_plan(plan)
    if problems:
        raise ConfigError("Invalid audit:\n" + "\n".join(f"  {p}" for p in problems))
    for line in plan_lines(cfg, plan):
        log(line)
    if dry_run:
        todo = [
            r
            for r in plan.runs.values()
            if r.external is None and run_status(r.config.run_dir) != "finished"
        ]
        for line in estimate(cfg, plan, todo)[1] or ["nothing to train"]:
            log(line)
        return None
    executor = executor or LocalExecutor()
    result = run_study(cfg, executor, log)
    rows = [dict(r) for r in result.rows if r["status"] == "ok"]
    sections = [functional_transfer(rows), krs_validation(rows)]
    if relevance:
        failed = _add_relevance(cfg, plan, rows, executor, log)
        section = relevance_section(rows)
        if failed:
            section.notes.append(
                f"FSS/RS failed for {len(failed)} student(s), left out: {failed[0]}"
            )
        sections.append(section)
    out = cfg.study_dir
    summary = sentences(sections[0], rows)
    head = _overview(result, rows, summary)
    sections = [head, *sections, _configuration(cfg, out)]
    students = {r["run"]: r | {"run_dir": f"runs/{r['run']}"} for r in rows}
    meta = {
        "kind": "runs",
        "study": cfg.name,
        "teacher_run": _teacher_dir(plan, out),
        "failed": result.failed,
    }
    pair = cfg.pairs[0]
    seeds = ", ".join(map(str, cfg.seeds))
    subtitle = f"{pair.teacher} \u2192 {pair.student} on {cfg.data.name}, seeds {seeds}"
    return write_audit(out, f"Audit {cfg.name}", sections, students, meta, summary, subtitle)


def _teacher_dir(plan: Plan, out: Path) -> str:
    teacher = next(
        r for r in plan.runs.values() if r.teacher is None and r.id.startswith("teacher-")
    )
    return relative(teacher.run_dir, out)


def _add_relevance(
    cfg: StudyConfig, plan: Plan, rows: list[dict], executor: Executor, log
) -> list[str]:
    """FSS/RS columns on every distilled row (against its seed's control), cached per pair of
    trained runs in ``relevance/``; a control row takes its own RS from one of them. Returns
    the errors of the students that failed."""
    controls = {r["seed"]: r for r in rows if r["arm"] == "control"}
    cache = cfg.study_dir / "relevance"
    cache.mkdir(exist_ok=True)
    todo = []
    for r in rows:
        base = controls.get(r["seed"])
        if r["arm"] not in ("kd", "random_control") or base is None:
            continue
        # The runs' identities and when they finished: a retrained run is measured again.
        key = {
            who: [
                row["fingerprint"],
                (plan.runs[row["run"]].run_dir / "summary.json").stat().st_mtime,
            ]
            for who, row in (("student", r), ("base", base))
        }
        path = cache / f"{r['run']}.json"
        stored = json.loads(path.read_text()) if path.exists() else {}
        if stored.get("key") == key:
            r |= stored["measures"]
        else:
            todo.append((r, base, key, path))
    evaluation = cfg.evaluation.model_dump(mode="json")
    data = cfg.data.model_dump(mode="json")
    args = [
        (
            data,
            str(plan.runs[r["run"]].run_dir),
            str(plan.runs[b["run"]].run_dir),
            evaluation,
            RELEVANCE_BATCHES,
            cfg.evaluation.checkpoints[0],
        )
        for r, b, _, _ in todo
    ]
    failed = []
    for i, outcome in executor.map(relevance_task, args):
        r, _, key, path = todo[i]
        if outcome.ok:
            r |= outcome.value
            path.write_text(json.dumps({"key": key, "measures": outcome.value}))
        else:
            failed.append(f"{r['run']}: {outcome.error}")
            log(f"{r['run']}: FSS/RS failed: {outcome.error}")
    if todo:
        log(f"measured FSS/RS of {len(todo)} student(s) against their controls")
    for r in rows:
        base = controls.get(r["seed"])
        if (
            r["arm"] != "control"
            and base is not None
            and base.get("rs_student") is None
            and r.get("rs_base") is not None
        ):
            base["rs_student"] = r["rs_base"]
    return failed


def _overview(result, rows: list[dict], summary: list[str]) -> Section:
    section = Section("Audit", id="audit", findings=list(summary))
    arms = [("kd", m) for m in dict.fromkeys(r["method"] for r in rows if r["arm"] == "kd")]
    arms += [("random_control", "kd"), ("control", "none")]
    shown = [m for m in SHOWN if any(number(r, m) is not None for r in rows)]
    table = []
    for arm, method in arms:
        cell = [r for r in rows if r["arm"] == arm and r["method"] == method]
        if not cell:
            continue
        means = []
        for m in shown:
            values = [number(r, m) for r in cell if number(r, m) is not None]
            means.append(sum(values) / len(values) if values else None)
        table.append([arm, method, len(cell), *means])
    section.blocks.append(
        Table(
            ["arm", "method", "seeds", *shown],
            table,
            "Mean over seeds per arm (intervals and tests below; every run in audit.json)",
            "audit-arms",
        )  # fmt: skip
    )
    trained, kept = len(result.trained), len(result.skipped)
    section.notes.append(
        f"{trained} run(s) trained now, {kept} reused from earlier runs of this audit."
    )
    if result.failed:
        section.notes.append(
            f"{len(result.failed)} run(s) or evaluation(s) failed: "
            f"{', '.join(sorted(result.failed))}; the analyses use the rest."
        )
    return section


def _configuration(cfg: StudyConfig, out: Path) -> Section:
    config = cfg.model_dump(mode="json")
    config.pop("out_dir")
    for pair in config["pairs"]:
        if pair.get("teacher_run"):
            pair["teacher_run"] = relative(pair["teacher_run"], out)
    if config["data"].get("data_dir"):
        config["data"]["data_dir"] = relative(config["data"]["data_dir"], out)
    text = yaml.safe_dump(config, sort_keys=False)
    return Section(
        "Configuration",
        id="configuration",
        blocks=[Code(text, "the audit's study config (paths relative to the audit directory)")],
    )
