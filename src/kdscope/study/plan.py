"""A study's plan: :func:`expand` turns a :class:`~kdscope.study.config.StudyConfig` into the run
directories under ``<out_dir>/<name>/runs`` and the rows of its tidy table (a student evaluated
against a teacher).

Arms (shared/specs/functional-transfer.md): ``kd`` (each method setting), ``control`` (the same
student on labels alone; one run per student and seed, evaluated against every teacher it is
paired with; the KRS study's base student), ``random_control`` (method ``random_control`` with the
weights of a ``kd`` setting; its row carries the controlled method's name, as the analyses pair it
on the full setting) and ``teacher_replica`` (the teacher architecture retrained with seed
``REPLICA_SEED_OFFSET + s``, compared with the teacher of seed s). Every run keeps its plain
teacher cache in ``<study>/teacher-cache`` (``train.cache_dir``) for the runs of the same teacher
and training inputs after it (:mod:`~kdscope.train.cache_store`).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kdscope.api import check_config
from kdscope.config import ConfigError, RunConfig
from kdscope.methods import METHODS, method_info
from kdscope.study.config import SWEPT, StudyConfig
from kdscope.train.run_dir import RESUMABLE, cache_identity

REPLICA_SEED_OFFSET = 1000
# Methods whose loss random_control reproduces with the teacher's distribution replaced by noise.
RANDOM_CONTROLLED = ("kd",)


@dataclass(frozen=True)
class PlannedRun:
    """One run directory: ``runs/<id>``; ``teacher`` is the id of the run it distils from;
    ``fingerprint`` identifies everything that determines its result (its config, its teacher's
    fingerprint), so a cell whose settings changed is recognised and retrained."""

    id: str
    config: RunConfig
    teacher: str | None = None
    fingerprint: str = ""
    external: Path | None = None  # a finished run outside the study, used as it is

    @property
    def run_dir(self) -> Path:
        return self.external if self.external is not None else self.config.run_dir


# Fields that do not change a run's result: where it runs and how fast.
IDENTITY_IGNORED = RESUMABLE - {"train.epochs"}


def fingerprint(config: dict[str, Any], teacher_fingerprint: str | None) -> str:
    """A short hash of a run config without :data:`IDENTITY_IGNORED`, its teacher's checkpoint
    replaced by the teacher run's fingerprint (a moved study keeps its identities)."""
    flat = {
        k: v
        for k, v in _flatten(config).items()
        if k not in IDENTITY_IGNORED and k != "teacher.checkpoint"
    }
    cache = cache_identity((config.get("train") or {}).get("cache"))
    if cache is not None:
        flat["train.cache"] = cache
    flat["teacher.fingerprint"] = teacher_fingerprint
    text = json.dumps(flat, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out |= _flatten(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = v
    return out


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
                    "cache_dir": str(cfg.train.cache_dir or cfg.study_dir / "teacher-cache"),
                },
                "student": {"name": student},
                "method": {"name": method, "params": params or {}},
            }
            t_print = None
            if teacher is not None:
                arch = plan.runs[teacher].config.student.name
                data["teacher"] = {"name": arch, "checkpoint": str(plan.runs[teacher].run_dir)}
                t_print = plan.runs[teacher].fingerprint
            config = RunConfig.model_validate(data)
            print_ = fingerprint(config.model_dump(mode="json"), t_print)
            plan.runs[run_id] = PlannedRun(run_id, config, teacher, print_)
        return run_id

    def teacher_run(arch: str, seed: int, replica: bool = False, given: Path | None = None) -> str:
        if given is not None:
            return external(arch, Path(given))
        kind, train_seed = ("replica", REPLICA_SEED_OFFSET + seed) if replica else ("teacher", seed)
        epochs = cfg.teacher_epochs or cfg.train.epochs
        return add(f"{kind}-{arch}-s{seed}", arch, train_seed, epochs=epochs)

    def external(arch: str, path: Path) -> str:
        config_file = path / "config.yaml"
        if not config_file.is_file():
            raise ConfigError(f"pairs[].teacher_run {str(path)!r} is not a kdscope run directory")
        config = RunConfig.model_validate(yaml.safe_load(config_file.read_text()))
        if config.student.name != arch:
            raise ConfigError(
                f"pairs[].teacher_run {str(path)!r} trained {config.student.name!r}, not {arch!r}"
            )
        print_ = fingerprint(config.model_dump(mode="json"), None)
        run_id = f"teacher-{arch}-{print_}"
        plan.runs.setdefault(run_id, PlannedRun(run_id, config, None, print_, path.resolve()))
        return run_id

    def row(run, teacher, arm, teacher_arch, student, seed, method="none", alpha=None, temp=None):
        labels = {
            "study": cfg.name, "dataset": cfg.data.name, "teacher": teacher_arch,
            "student": student, "method": method, "arm": arm, "seed": seed, "alpha": alpha,
            "temperature": temp, "train_method": plan.runs[run].config.method.name,
        }  # fmt: skip
        plan.rows.append(PlannedRow(run, teacher, labels))

    pairs = [(p.teacher, p.student, p.teacher_run) for p in cfg.pairs]
    pairs += [(p.teacher, s, p.teacher_run) for p in cfg.pairs for s in cfg.sweeps.student]
    settings = _settings(cfg)
    for t_arch, student, given in dict.fromkeys(pairs):
        for seed in cfg.seeds:
            t_seed = seed if cfg.teacher_seed == "per_seed" else cfg.teacher_seed
            teacher = teacher_run(t_arch, t_seed, given=given)
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
        for t_arch in dict.fromkeys(t for t, _, _ in pairs):
            for seed in cfg.seeds:
                t_seed = seed if cfg.teacher_seed == "per_seed" else cfg.teacher_seed
                teacher = teacher_run(t_arch, t_seed)
                replica = teacher_run(t_arch, seed, replica=True)
                row(replica, teacher, "teacher_replica", t_arch, t_arch, seed)
    return plan


def check_plan(plan: Plan) -> list[str]:
    """Every problem with the study's names and method parameters (:func:`kdscope.api.check_config`
    of each run), each message once with the number of runs it concerns."""
    where: dict[str, list[str]] = {}
    for run in plan.runs.values():
        for problem in check_config(run.config):
            where.setdefault(problem, []).append(run.id)
    problems = [
        f"{p} (run {ids[0]}{f' and {len(ids) - 1} more' if len(ids) > 1 else ''})"
        for p, ids in where.items()
    ]
    return problems
