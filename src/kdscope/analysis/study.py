"""Studies: a grid of ordinary runs (teachers, controls, distilled students) and its tidy table.

A study config names pairs, methods, seeds, arms and sweeps; :func:`expand` turns it into a
:class:`Plan` of run directories under ``<out_dir>/<name>/runs`` and of rows (a student evaluated
against a teacher). :func:`run_study` validates every name first, trains through
:func:`kdscope.api.run` (skipping finished runs, resuming interrupted ones, recording failures),
evaluates each row with :func:`kdscope.metrics.evaluate` and writes ``results.{jsonl,csv}``.
:func:`study_report` turns the table into ``report.html``.

Arms (shared/specs/functional-transfer.md): ``kd`` (each method setting), ``control`` (the same
student on labels alone; one run per student and seed, evaluated against every teacher it is
paired with; the KRS study's base student), ``random_control`` (method ``random_control`` with the
weights of a ``kd`` setting; its row carries the controlled method's name, as the analyses pair it
on the full setting) and ``teacher_replica`` (the teacher architecture retrained with seed
``REPLICA_SEED_OFFSET + s``, compared with the teacher of seed s).
"""

from __future__ import annotations

import itertools
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from kdscope.analysis import tidy
from kdscope.analysis.executors import Executor, LocalExecutor
from kdscope.analysis.study_tasks import calibrate, evaluate_row, train
from kdscope.config import (
    ConfigError,
    DataConfig,
    MethodConfig,
    OptimConfig,
    RunConfig,
    ScheduleConfig,
    TrainConfig,
    _Strict,
    apply_overrides,
    check_names,
    format_validation_error,
)

REPLICA_SEED_OFFSET = 1000
# Methods whose loss random_control reproduces with the teacher's distribution replaced by noise.
RANDOM_CONTROLLED = ("kd",)
SWEPT = ("alpha", "temperature")


class PairConfig(_Strict):
    teacher: str
    student: str


class ArmsConfig(_Strict):
    kd: bool = True
    control: bool = True
    random_control: bool = False
    random_mode: Literal["gaussian", "permute"] = "gaussian"
    teacher_replica: bool = False


class SweepsConfig(_Strict):
    """Values crossed with every method that takes the parameter; ``student``: more students
    distilled from every pair's teacher (a transfer-vs-size curve)."""

    alpha: list[float] = Field(default_factory=list)
    temperature: list[float] = Field(default_factory=list)
    student: list[str] = Field(default_factory=list)


class EvaluationConfig(_Strict):
    test_size: int | None = Field(None, ge=1)
    batch_size: int = Field(512, ge=1)


class StudyConfig(_Strict):
    """A grid of runs; see ``configs/studies/`` for examples.

    Fields:
        name, out_dir: the study directory is ``out_dir/name``; its runs go to ``runs/``.
        data, optim, schedule, train: as in :class:`~kdscope.config.RunConfig`, for every run
            (``train.seed`` is replaced by each run's seed).
        teacher_epochs: teachers' epochs (default ``train.epochs``).
        teacher_seed: the seed of the one teacher per architecture, or ``per_seed`` for a teacher
            per seed (the student of seed s then learns from the teacher of seed s).
        pairs: (teacher, student) architectures.
        methods: methods under test with their parameters (default vanilla ``kd``).
        seeds: student seeds; arms are paired by seed.
        arms: which arms run (see the module docstring); ``random_mode`` is the
            ``random_control`` method's noise (``gaussian`` or ``permute``).
        sweeps: ``alpha``/``temperature`` values crossed with every method that takes them;
            ``student``: more students distilled from every pair's teacher.
        evaluation: ``test_size`` (a fixed stratified subset of the test split, default all)
            and ``batch_size`` of the evaluation.
        analyses: what ``report.html`` holds: ``functional`` (functional transfer) and/or
            ``krs`` (KRS validation).
    """

    name: str
    out_dir: Path = Path("runs/studies")
    data: DataConfig = Field(default_factory=DataConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    teacher_epochs: int | None = Field(None, ge=1)
    teacher_seed: int | Literal["per_seed"] = 0
    pairs: list[PairConfig] = Field(min_length=1)
    methods: list[MethodConfig] = Field(default_factory=lambda: [MethodConfig(name="kd")])
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    arms: ArmsConfig = Field(default_factory=ArmsConfig)
    sweeps: SweepsConfig = Field(default_factory=SweepsConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    analyses: list[Literal["functional", "krs"]] = Field(
        default_factory=lambda: ["functional", "krs"]
    )

    @model_validator(mode="after")
    def _check(self) -> StudyConfig:
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct, got {self.seeds}")
        for i, m in enumerate(self.methods):
            if m.name in ("none", "random_control"):
                raise ValueError(
                    f"methods[{i}]: {m.name!r} is an arm, not a method under test; "
                    "use arms.control / arms.random_control"
                )
            for p in SWEPT:
                if p in m.params and getattr(self.sweeps, p):
                    raise ValueError(f"methods[{i}].params.{p} is set and sweeps.{p} too; keep one")
        return self

    @property
    def study_dir(self) -> Path:
        return (self.out_dir / self.name).resolve()


def load_study(path: str | Path, overrides: list[str] | None = None) -> StudyConfig:
    """Read a YAML study config (``key.sub=value`` overrides as for runs)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Study config {str(path)!r} does not exist")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"Study config {str(path)!r} must hold a mapping")
    try:
        return StudyConfig.model_validate(apply_overrides(data, overrides or []))
    except ValidationError as err:
        raise ConfigError(format_validation_error(err).replace("configuration", "study")) from None


@dataclass(frozen=True)
class PlannedRun:
    """One run directory: ``runs/<id>``; ``teacher`` is the id of the run it distils from."""

    id: str
    config: RunConfig
    teacher: str | None = None


@dataclass(frozen=True)
class PlannedRow:
    """One row of the tidy table: run ``run`` evaluated against teacher run ``teacher_run``."""

    run: str
    teacher_run: str
    labels: dict[str, Any]

    @property
    def id(self) -> str:
        return f"{self.run}@{self.teacher_run}"


@dataclass
class Plan:
    runs: dict[str, PlannedRun] = field(default_factory=dict)
    rows: list[PlannedRow] = field(default_factory=list)


def _tag(value: Any) -> str:
    text = f"{value:g}" if isinstance(value, float) else str(value)
    return re.sub(r"[^A-Za-z0-9.]+", "_", text)


def _settings(cfg: StudyConfig) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(method, params to pass, params with defaults) per KD setting, sweeps crossed in."""
    from kdscope.methods import METHODS, method_info

    out = []
    for m in cfg.methods:
        defaults = method_info(m.name)["defaults"] if m.name in METHODS else {}
        axes = [
            [(p, v) for v in getattr(cfg.sweeps, p)]
            if p in defaults and getattr(cfg.sweeps, p)
            else []
            for p in SWEPT
        ]
        for combo in itertools.product(*[a or [None] for a in axes]):
            params = {**m.params, **dict(c for c in combo if c is not None)}
            out.append((m.name, params, {**defaults, **params}))
    return out


def expand(cfg: StudyConfig) -> Plan:
    """The study's runs and rows; teachers are trained once per (architecture, seed) and shared."""
    plan = Plan()
    runs_dir = cfg.study_dir / "runs"
    base = {
        "out_dir": str(runs_dir),
        "data": cfg.data.model_dump(mode="json"),
        "optim": cfg.optim.model_dump(mode="json"),
        "schedule": cfg.schedule.model_dump(mode="json"),
    }

    def add(run_id, student, seed, method="none", params=None, teacher=None, epochs=None) -> str:
        if run_id not in plan.runs:
            data = {
                **base,
                "name": run_id,
                "train": {
                    **cfg.train.model_dump(mode="json"),
                    "seed": seed,
                    "epochs": epochs or cfg.train.epochs,
                },
                "student": {"name": student},
                "method": {"name": method, "params": params or {}},
            }
            if teacher is not None:
                arch = plan.runs[teacher].config.student.name
                data["teacher"] = {"name": arch, "checkpoint": str(runs_dir / teacher)}
            plan.runs[run_id] = PlannedRun(run_id, RunConfig.model_validate(data), teacher)
        return run_id

    def teacher_run(arch: str, seed: int, replica: bool = False) -> str:
        kind, train_seed = ("replica", REPLICA_SEED_OFFSET + seed) if replica else ("teacher", seed)
        epochs = cfg.teacher_epochs or cfg.train.epochs
        return add(f"{kind}-{arch}-s{seed}", arch, train_seed, epochs=epochs)

    def row(run, teacher, arm, teacher_arch, student, seed, method="none", alpha=None, temp=None):
        labels = {
            "study": cfg.name, "dataset": cfg.data.name, "teacher": teacher_arch,
            "student": student, "method": method, "arm": arm, "seed": seed, "alpha": alpha,
            "temperature": temp, "train_method": plan.runs[run].config.method.name,
        }  # fmt: skip
        plan.rows.append(PlannedRow(run, teacher, labels))

    pairs = [(p.teacher, p.student) for p in cfg.pairs]
    pairs += [(p.teacher, s) for p in cfg.pairs for s in cfg.sweeps.student]
    settings = _settings(cfg)
    for t_arch, student in dict.fromkeys(pairs):
        for seed in cfg.seeds:
            t_seed = seed if cfg.teacher_seed == "per_seed" else cfg.teacher_seed
            teacher = teacher_run(t_arch, t_seed)
            ident = (t_arch, student, seed)
            if cfg.arms.control:
                row(add(f"control-{student}-s{seed}", student, seed), teacher, "control", *ident)
            for method, params, full in settings:
                a, t = full.get("alpha"), full.get("temperature")
                tag = "-".join([method] + [f"{k}{_tag(v)}" for k, v in sorted(params.items())])
                stem = f"{teacher}--{student}"
                if cfg.arms.kd:
                    run = add(f"kd-{stem}-{tag}-s{seed}", student, seed, method, params, teacher)
                    row(run, teacher, "kd", *ident, method, a, t)
                if cfg.arms.random_control and method in RANDOM_CONTROLLED:
                    rc = {"alpha": a, "temperature": t, "mode": cfg.arms.random_mode}
                    run = add(f"random-{stem}-{tag}-s{seed}", student, seed, "random_control", rc,
                              teacher)  # fmt: skip
                    row(run, teacher, "random_control", *ident, method, a, t)
    if cfg.arms.teacher_replica:
        for t_arch in dict.fromkeys(t for t, _ in pairs):
            for seed in cfg.seeds:
                t_seed = seed if cfg.teacher_seed == "per_seed" else cfg.teacher_seed
                teacher = teacher_run(t_arch, t_seed)
                replica = teacher_run(t_arch, seed, replica=True)
                row(replica, teacher, "teacher_replica", t_arch, t_arch, seed)
    return plan


def check_plan(cfg: StudyConfig, plan: Plan) -> list[str]:
    """Every problem with the study's names and method parameters, each message once with the
    number of runs it concerns."""
    from kdscope.methods import METHODS, create_method

    where: dict[str, list[str]] = {}
    for run in plan.runs.values():
        for problem in check_names(run.config):
            where.setdefault(problem, []).append(run.id)
    problems = [
        f"{p} (run {ids[0]}{f' and {len(ids) - 1} more' if len(ids) > 1 else ''})"
        for p, ids in where.items()
    ]
    for method, params, _ in _settings(cfg):
        if method in METHODS:
            try:
                create_method(method, **params)
            except (TypeError, ValueError) as err:
                problems.append(f"methods: {method} with params {params}: {err}")
    return list(dict.fromkeys(problems))


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
    problems = check_plan(cfg, plan)
    if problems:
        raise ConfigError("Invalid study:\n" + "\n".join(f"  {p}" for p in problems))
    study_dir = cfg.study_dir
    study_dir.mkdir(parents=True, exist_ok=True)
    resolved = yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
    (study_dir / "study.yaml").write_text(resolved)
    (study_dir / "plan.json").write_text(json.dumps(
        {"runs": {k: r.teacher for k, r in plan.runs.items()},
         "rows": [{"id": r.id, **r.labels} for r in plan.rows]}, indent=1))  # fmt: skip
    executor = executor or LocalExecutor()
    result = StudyResult(study_dir, [])
    # Runs without a teacher (teachers, controls, replicas) first, then those that distil.
    for phase in ([r for r in plan.runs.values() if r.teacher is None],
                  [r for r in plan.runs.values() if r.teacher is not None]):  # fmt: skip
        _train_phase(phase, executor, result, log)
    rows = _evaluate(cfg, plan, executor, result, log)
    result.rows = rows
    tidy.write_rows(study_dir / "results.jsonl", rows)
    tidy.write_rows(study_dir / "results.csv", rows)
    with (study_dir / "failures.jsonl").open("w") as f:
        f.writelines(json.dumps({"run": k, "error": v}) + "\n" for k, v in result.failed.items())
    log(f"{len(result.trained)} run(s) trained, {len(result.skipped)} already finished, "
        f"{len(result.failed)} failed; table: {study_dir / 'results.csv'}")  # fmt: skip
    return result


def _train_phase(runs: list[PlannedRun], executor: Executor, result: StudyResult, log) -> None:
    todo = []
    for run in runs:
        if run.teacher in result.failed:
            result.failed[run.id] = f"teacher run {run.teacher!r} failed"
            continue
        status = run_status(run.config.run_dir)
        if status == "finished":
            result.skipped.append(run.id)
            continue
        todo.append((run, status == "interrupted"))
    args = [(run.config.model_dump(mode="json"), resume) for run, resume in todo]
    for done, (i, outcome) in enumerate(executor.map(train, args), 1):
        run, resume = todo[i]
        if outcome.ok:
            result.trained.append(run.id)
            log(f"[{done}/{len(todo)}] {run.id}: test accuracy {outcome.value['test_acc']:.4f} "
                f"({outcome.value['seconds']:.0f} s{', resumed' if resume else ''})")  # fmt: skip
        else:
            result.failed[run.id] = outcome.error
            log(f"[{done}/{len(todo)}] {run.id}: FAILED {outcome.error}")


def _evaluate(cfg, plan: Plan, executor: Executor, result: StudyResult, log) -> list[dict]:
    runs_dir = cfg.study_dir / "runs"
    data = cfg.data.model_dump(mode="json")
    evaluation = cfg.evaluation.model_dump(mode="json")
    ok = [r for r in plan.rows if r.run not in result.failed and r.teacher_run not in result.failed]
    by_teacher: dict[str, list[PlannedRow]] = {}
    for r in ok:
        by_teacher.setdefault(r.teacher_run, []).append(r)
    # One calibration constant C per teacher, shared by every student compared with it.
    teachers = list(by_teacher)
    args = [(data, str(runs_dir / t), [str(runs_dir / r.run) for r in by_teacher[t]], evaluation)
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
    measured: dict[str, dict] = {}
    todo = []
    for r in ok:
        if r.teacher_run not in c:
            continue
        cached = cache_dir / f"{r.id}.json"
        entry = json.loads(cached.read_text()) if cached.exists() else {}
        # Reused only for the same C and the same trained student.
        if entry.get("c") == c[r.teacher_run] and entry.get("trained") == _mtime(runs_dir / r.run):
            measured[r.id] = entry["measures"]
        else:
            todo.append(r)
    args = [(data, str(runs_dir / r.teacher_run), str(runs_dir / r.run), c[r.teacher_run],
             evaluation) for r in todo]  # fmt: skip
    start = time.perf_counter()
    for i, outcome in executor.map(evaluate_row, args):
        r = todo[i]
        if outcome.ok:
            measured[r.id] = outcome.value
            entry = {"c": c[r.teacher_run], "trained": _mtime(runs_dir / r.run),
                     "measures": outcome.value}  # fmt: skip
            (cache_dir / f"{r.id}.json").write_text(json.dumps(entry))
        else:
            result.failed.setdefault(r.id, f"evaluation failed: {outcome.error}")
    if todo:
        log(f"evaluated {len(todo)} row(s) in {time.perf_counter() - start:.0f} s")
    columns = dict.fromkeys(k for m in measured.values() for k in m)
    rows = []
    for r in plan.rows:
        failed = result.failed
        error = failed.get(r.run) or failed.get(r.teacher_run) or failed.get(r.id)
        row = {**r.labels, "run": r.run, "teacher_run": r.teacher_run,
               "status": "failed" if error else "ok", "error": error}  # fmt: skip
        rows.append({**row, **dict.fromkeys(columns), **measured.get(r.id, {})})
    return rows


def _mtime(run_dir: Path) -> float:
    return (run_dir / "summary.json").stat().st_mtime
