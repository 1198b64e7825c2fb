"""A study's configuration: a grid of pairs, methods, seeds, arms and sweeps (see
``configs/studies/``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, model_validator

from kdscope.config import (
    ConfigError,
    DataConfig,
    MethodConfig,
    OptimConfig,
    RunName,
    ScheduleConfig,
    TrainConfig,
    _Strict,
    apply_overrides,
    format_validation_error,
    parse_yaml,
)

SWEPT = ("alpha", "temperature")


class PairConfig(_Strict):
    """A (teacher, student) pair of architectures. ``teacher_run``: an existing, finished kdscope
    run of the teacher architecture, used by every cell of the pair instead of training a teacher
    in the study (teachers trained once, with their own recipe, shared by path across studies)."""

    teacher: str
    student: str
    teacher_run: Path | None = None


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
    """``checkpoints``: which checkpoint of each run is measured: ``best`` (validation), ``last``
    (the final epoch) or both (rows then carry a ``checkpoint`` column)."""

    test_size: int | None = Field(None, ge=1)
    batch_size: int = Field(512, ge=1)
    checkpoints: list[Literal["best", "last"]] = Field(
        default_factory=lambda: ["best"], min_length=1
    )


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

    name: RunName
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
        if self.teacher_seed == "per_seed" and any(p.teacher_run for p in self.pairs):
            raise ValueError(
                "pairs[].teacher_run is one teacher: it cannot be teacher_seed=per_seed"
            )
        if self.arms.teacher_replica and any(p.teacher_run for p in self.pairs):
            raise ValueError(
                "arms.teacher_replica needs teachers the study trains (no teacher_run)"
            )
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
    data = parse_yaml(path.read_text(), f"Study config {str(path)!r}") or {}
    if not isinstance(data, dict):
        raise ConfigError(f"Study config {str(path)!r} must hold a mapping")
    try:
        return StudyConfig.model_validate(apply_overrides(data, overrides or []))
    except ValidationError as err:
        raise ConfigError(format_validation_error(err).replace("configuration", "study")) from None
