"""Schemes that are sequences of ordinary runs: teacher-assistant chains, born-again generations,
sequence-level KD (a student trained on its teacher's generated text).

Each stage is a run directory written by :func:`kdscope.api.run` under the pipeline's root
(``cfg.out_dir / cfg.name``), named ``<i>-<role>-<model>``; ``pipeline.json`` lists the stages.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from kdscope.api import RunResult, run
from kdscope.config import ConfigError, MethodConfig, ModelConfig, RunConfig
from kdscope.data import collate, load_data
from kdscope.methods import create_method
from kdscope.models.generate import generate
from kdscope.train import load_model


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


def sequence_kd(
    cfg: RunConfig,
    *,
    prompt: int = 1,
    temperature: float = 0.0,
    top_k: int | None = None,
    batch_size: int = 256,
    progress: bool = True,
) -> PipelineResult:
    """Kim & Rush 2016, "Sequence-Level Knowledge Distillation", EMNLP 2016, arXiv:1606.07947,
    for a character-level language model (data ``tinyshakespeare`` or ``text``).

    Stage 0 is ``cfg.teacher`` (trained on labels first when it has no checkpoint). Then every
    training block keeps its first ``prompt`` tokens and the teacher writes the rest
    (:func:`~kdscope.models.generate.generate`; ``temperature`` 0 is greedy decoding, the mode
    that the paper's beam search approximates, with a generator seeded by ``cfg.train.seed``
    otherwise); the blocks, joined, are ``teacher-text.txt`` under the pipeline's root. Stage 1
    trains ``cfg.student`` on that text in place of the training split, with the data's validation
    and test splits and the teacher's vocabulary, by ``cfg.method``: ``none`` is the paper's
    Seq-KD, ``kd`` adds its word-level KD ("Seq-KD + Word-KD") against the same teacher.
    Deviation: the paper decodes a target for each source sentence; an unconditional LM has no
    source, so the prompts stand in for it.
    """
    if cfg.teacher is None:
        raise ConfigError("sequence_kd needs cfg.teacher, the model whose text the student learns")
    root = cfg.run_dir
    stages: list[RunResult] = []
    teacher_cfg = _teacher_stage(cfg, cfg.teacher, root, stages, progress)
    bundle = load_data(cfg.data)
    vocab = getattr(bundle, "vocab", None)
    if vocab is None:
        raise ConfigError(
            f"sequence_kd generates characters: data {cfg.data.name!r} has no character "
            "vocabulary (use tinyshakespeare or text)"
        )
    if not 1 <= prompt < bundle.block_size:
        raise ValueError(f"prompt must be in [1, {bundle.block_size - 1}] tokens, got {prompt}")
    teacher = load_model(teacher_cfg.checkpoint)
    device = next(teacher.parameters()).device
    generator = torch.Generator(device).manual_seed(cfg.train.seed)
    blocks = []
    for x, _, _ in DataLoader(bundle.train, batch_size, collate_fn=collate):
        written = generate(teacher, x[:, :prompt].to(device), x.shape[1] - prompt, temperature,
                           top_k, generator)  # fmt: skip
        blocks += [vocab.decode(row) for row in written.cpu()]
    root.mkdir(parents=True, exist_ok=True)
    text = root / "teacher-text.txt"
    text.write_text("".join(blocks), encoding="utf-8")
    data = cfg.data.model_copy(
        update={
            "train_size": None,
            "options": {**cfg.data.options, "train_text": str(text), "vocab": list(vocab.chars)},
        }
    )
    uses_teacher = create_method(cfg.method.name, **cfg.method.params).needs.teacher
    stage = _stage(
        cfg.model_copy(update={"data": data}),
        root,
        f"{len(stages)}-student-{cfg.student.name}",
        cfg.student,
        teacher_cfg if uses_teacher else None,
        cfg.method,
    )
    stages.append(_run(stage, progress))
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
