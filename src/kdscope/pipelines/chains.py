"""Schemes that are sequences of ordinary runs: teacher-assistant chains, born-again generations.

Each stage is a run directory written by :func:`kdscope.api.run` under the pipeline's root
(``cfg.out_dir / cfg.name``), named ``<i>-<role>-<model>``; ``pipeline.json`` lists the stages.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdscope.api import RunResult, run
from kdscope.config import ConfigError, MethodConfig, ModelConfig, RunConfig
from kdscope.methods import create_method


@dataclass
class PipelineResult:
    """The stages of a pipeline in training order; the last one is the final student."""

    root: Path
    stages: list[RunResult]

    @property
    def final(self) -> RunResult:
        return self.stages[-1]

    def summary(self) -> dict[str, Any]:
        return {"root": str(self.root), "stages": [stage.summary() for stage in self.stages]}


def teacher_assistant_chain(
    cfg: RunConfig, assistants: Sequence[str], *, progress: bool = True
) -> PipelineResult:
    """Mirzadeh, Farajtabar, Li, Levine, Matsukawa, Ghasemzadeh 2020, "Improved Knowledge
    Distillation via Teacher Assistant", AAAI 2020, arXiv:1902.03393.

    teacher -> ``assistants[0]`` -> ... -> ``cfg.student``: every stage is distilled with
    ``cfg.method`` from the best checkpoint of the stage before. When ``cfg.teacher`` has no
    checkpoint, stage 0 first trains ``cfg.teacher.name`` on labels, so the chain produces every
    checkpoint it uses. Each stage is an ordinary run (same data, optimiser, schedule, epochs).
    """
    _check_distills(cfg, "teacher_assistant_chain")
    if cfg.teacher is None:
        raise ConfigError(
            "teacher_assistant_chain needs cfg.teacher (its name, and a checkpoint "
            "or not: without one the chain trains it first)"
        )
    root = cfg.run_dir
    stages: list[RunResult] = []
    teacher = _teacher_stage(cfg, cfg.teacher, root, stages, progress)
    chain = [ModelConfig(name=name) for name in assistants] + [cfg.student]
    first = len(stages)
    for j, model in enumerate(chain):
        role = "student" if j == len(chain) - 1 else "assistant"
        stage = _stage(cfg, root, f"{first + j}-{role}-{model.name}", model, teacher, cfg.method)
        stages.append(_run(stage, progress))
        teacher = ModelConfig(name=model.name, kwargs=model.kwargs, checkpoint=stage.run_dir)
    return _finish(root, stages)


def born_again(cfg: RunConfig, generations: int = 2, *, progress: bool = True) -> PipelineResult:
    """Furlanello, Lipton, Tschannen, Itti, Anandkumar 2018, "Born-Again Neural Networks", ICML
    2018, arXiv:1805.04770.

    Generation 0 is ``cfg.teacher``'s checkpoint, or, without one, ``cfg.student`` trained on
    labels; generation k (1..``generations``) is a fresh ``cfg.student`` distilled with
    ``cfg.method`` from generation k - 1. Generation k is seeded ``cfg.train.seed + k`` so each
    starts from its own initialisation. The paper's students learn from the teacher's outputs
    alone: pass ``method: {name: kd, params: {alpha: 1.0, temperature: 1.0}}`` for that. BAN's
    ensemble of generations is not built.
    """
    _check_distills(cfg, "born_again")
    if generations < 1:
        raise ValueError(f"generations must be >= 1, got {generations}")
    root = cfg.run_dir
    stages: list[RunResult] = []
    gen0 = cfg.teacher or ModelConfig(name=cfg.student.name, kwargs=cfg.student.kwargs)
    teacher = _teacher_stage(cfg, gen0, root, stages, progress)
    for k in range(1, generations + 1):
        stage = _stage(
            cfg,
            root,
            f"{k}-gen{k}-{cfg.student.name}",
            cfg.student,
            teacher,
            cfg.method,
            seed=cfg.train.seed + k,
        )
        stages.append(_run(stage, progress))
        teacher = ModelConfig(
            name=cfg.student.name, kwargs=cfg.student.kwargs, checkpoint=stage.run_dir
        )
    return _finish(root, stages)


def _check_distills(cfg: RunConfig, pipeline: str) -> None:
    if not create_method(cfg.method.name, **cfg.method.params).needs.teacher:
        raise ConfigError(
            f"{pipeline} distills every stage with cfg.method, which must be a method that uses a "
            f"teacher (kd, dkd, fitnet, ...); got {cfg.method.name!r}"
        )


def _teacher_stage(cfg, teacher: ModelConfig, root, stages, progress) -> ModelConfig:
    """The first teacher as a config with a checkpoint, training it (stage 0) if it has none."""
    if teacher.checkpoint is not None:
        return teacher
    model = ModelConfig(name=teacher.name, kwargs=teacher.kwargs)
    stage = _stage(cfg, root, f"0-teacher-{teacher.name}", model, None, MethodConfig(name="none"))
    stages.append(_run(stage, progress))
    return ModelConfig(name=teacher.name, kwargs=teacher.kwargs, checkpoint=stage.run_dir)


def _stage(
    cfg: RunConfig,
    root: Path,
    name: str,
    student: ModelConfig,
    teacher: ModelConfig | None,
    method: MethodConfig,
    seed: int | None = None,
) -> RunConfig:
    data = cfg.model_dump()
    data.update(
        name=name,
        out_dir=root,
        student=student.model_dump(),
        teacher=teacher.model_dump() if teacher else None,
        method=method.model_dump(),
    )
    if seed is not None:
        data["train"]["seed"] = seed
    return RunConfig.model_validate(data)


def _run(stage: RunConfig, progress: bool) -> RunResult:
    return run(stage, progress=progress)


def _finish(root: Path, stages: list[RunResult]) -> PipelineResult:
    result = PipelineResult(root, stages)
    (root / "pipeline.json").write_text(json.dumps(result.summary(), indent=2))
    return result
