"""Python entry points: run a config, or distill users' own modules and datasets."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich import get_console
from torch import nn
from torch.utils.data import DataLoader, Dataset

from kdscope.config import (
    ConfigError,
    DataConfig,
    OptimConfig,
    RunConfig,
    ScheduleConfig,
    TrainConfig,
)
from kdscope.data import AUGMENTS, DATASETS, load_data, load_teacher_view
from kdscope.methods import METHODS, Method, create_method
from kdscope.metrics import SCORE_NAMES, task_score
from kdscope.models import MODEL_PREFIXES, MODELS, create_model, describe
from kdscope.train import FitResult, RunDirectory, Trainer, load_model
from kdscope.train.checkpoint import load_weights, read_checkpoint, resolve_checkpoint
from kdscope.train.seeding import seed_everything


def check_config(cfg: RunConfig) -> list[str]:
    """Every unknown dataset, model, method or augmentation name in ``cfg``, and every method
    parameter out of its declared range, as messages (empty if the config can run)."""
    problems = []
    if cfg.data.name not in DATASETS:
        problems.append(f"data.name: {DATASETS.unknown_message(cfg.data.name)}")
    if cfg.data.augment not in AUGMENTS:
        problems.append(f"data.augment: {cfg.data.augment!r} is not one of {', '.join(AUGMENTS)}")
    for field, model in (("student", cfg.student), ("teacher", cfg.teacher)):
        external = model is not None and model.name.startswith(MODEL_PREFIXES)
        if model is not None and not external and model.name not in MODELS:
            problems.append(f"{field}.name: {MODELS.unknown_message(model.name)}")
    if cfg.method.name not in METHODS:
        problems.append(f"method.name: {METHODS.unknown_message(cfg.method.name)}")
        return problems
    try:
        method = create_method(cfg.method.name, **cfg.method.params)
    except (TypeError, ValueError) as err:
        problems.append(f"method.params: {err}")
        return problems
    if method.needs.teacher and cfg.teacher is None:
        problems.append(f"teacher: method {cfg.method.name!r} needs a teacher; none is configured")
    return problems


@dataclass
class RunResult:
    run_dir: Path
    fit: FitResult
    test_acc: float
    teacher_test_acc: float | None
    tested: str = "best"  # the checkpoint tested: best (validation) or last
    # What test_acc and the validation figures measure (metrics.task_score): accuracy, mean_iou
    # (segmentation) or map (detection).
    score: str = "accuracy"

    def summary(self) -> dict[str, Any]:
        return {
            "run_dir": str(self.run_dir),
            "test_acc": self.test_acc,
            "score": self.score,
            "tested_checkpoint": self.tested,
            "teacher_test_acc": self.teacher_test_acc,
            "best_val_acc": self.fit.best_val_acc,
            "final_val_acc": self.fit.final_val_acc,
            "teacher_val_acc": self.fit.teacher_val_acc,
            "epochs": self.fit.epochs,
            "best_epoch": self.fit.best_epoch,
            "stopped_early": self.fit.stopped_early,
            "cache": self.fit.cache,
            "cache_fill_s": self.fit.cache_fill_s,
        }


def run(
    cfg: RunConfig,
    resume: bool = False,
    progress: bool = True,
    teacher_test_acc: float | None = None,
    trust: bool = False,
) -> RunResult:
    """Train the run ``cfg`` describes into ``cfg.out_dir / cfg.name`` and test its best checkpoint
    (its last, without a validation set).

    Writes ``config.yaml``, ``metrics.jsonl``, ``checkpoints/{last,best}.pt`` and ``summary.json``,
    holding the directory's lock throughout. Refuses a directory that already holds a run unless
    ``resume``, and a resume whose config changes the result. The teacher's test accuracy is
    measured on the test split unless its caller, which trained the teacher on the same data (a
    study, a pipeline), passes it as ``teacher_test_acc``. ``trust``: load checkpoints that hold
    more than tensors (see :func:`kdscope.train.read_checkpoint`).
    """
    problems = check_config(cfg)
    if problems:
        raise ConfigError("Invalid configuration:\n" + "\n".join(f"  {p}" for p in problems))
    _check_out_dir(cfg.out_dir)
    run_dir = RunDirectory(cfg.run_dir, cfg.model_dump(mode="json"))
    main = int(os.environ.get("RANK", "0")) == 0  # under torchrun, rank 0 alone holds the lock
    if main:
        run_dir.lock()
    try:
        return _run(cfg, run_dir, resume, progress, teacher_test_acc, trust)
    finally:
        run_dir.unlock()


def _check_out_dir(out_dir: Path) -> None:
    for folder in (out_dir, *out_dir.parents):
        if folder.exists() and not folder.is_dir():
            raise ConfigError(
                f"out_dir {str(out_dir)!r} cannot hold runs: {str(folder)!r} is a file"
            )


def _run(cfg, run_dir: RunDirectory, resume, progress, teacher_test_acc, trust) -> RunResult:
    if not resume and run_dir.holds_run():
        raise ConfigError(
            f"Run directory {str(run_dir.path)!r} already holds a run; pass --resume to continue "
            "it or choose another name (--set name=...)"
        )
    seed_everything(cfg.train.seed, cfg.train.deterministic)
    data = load_data(cfg.data)
    if progress and data.source:
        get_console().print(f"data: {data.name} from {data.source}", soft_wrap=True)
    student = create_model(
        cfg.student.name, data.num_classes, data.in_channels, **cfg.student.kwargs
    )
    if cfg.student.checkpoint:
        load_weights(
            student,
            read_checkpoint(resolve_checkpoint(cfg.student.checkpoint), trust)["model"],
            str(cfg.student.checkpoint),
        )
    method = create_method(cfg.method.name, **cfg.method.params)
    teacher = _load_teacher(cfg, method, data.num_classes, data.in_channels, trust)
    if teacher is not None:
        run_dir.checkpoints.mkdir(parents=True, exist_ok=True)
        spec = describe(teacher).spec
        (run_dir.checkpoints / "teacher.json").write_text(
            json.dumps(
                {"checkpoint": str(cfg.teacher.checkpoint), "spec": spec.to_dict()}, indent=2
            )
        )
    view = _teacher_view(cfg, data, trust) if teacher is not None else None
    if view is not None and progress:
        get_console().print(
            f"teacher view: {view.view} {view.image_size} (the student sees {data.view} "
            f"{data.image_size}), paired by example index"
        )
    trainer = Trainer(
        student,
        data.train,
        data.val,
        teacher_view=(view.train, view.val) if view is not None else None,
        teacher=teacher,
        method=method,
        augment=data.augment,
        data=cfg.data,
        optim=cfg.optim,
        schedule=cfg.schedule,
        train=cfg.train,
        run_dir=run_dir,
        progress=progress,
    )
    fit = trainer.fit(resume=resume)
    which = "best" if (run_dir.checkpoints / "best.pt").exists() else "last"
    best = load_model(run_dir.path, which)
    device = trainer.device
    test_acc = task_score(best.to(device), data.test, cfg.data.eval_batch_size, device)
    if teacher is not None and teacher_test_acc is None:
        teacher_test = view.test if view is not None else data.test
        teacher_test_acc = task_score(teacher, teacher_test, cfg.data.eval_batch_size, device)
    score = SCORE_NAMES[describe(best).output]
    result = RunResult(run_dir.path, fit, test_acc, teacher_test_acc, which, score)
    if trainer.dist.is_main:
        (run_dir.path / "summary.json").write_text(json.dumps(result.summary(), indent=2))
    return result


def _teacher_view(cfg: RunConfig, data, trust: bool):
    """The teacher's representation of the run's examples, when it was trained on another."""
    recorded = read_checkpoint(resolve_checkpoint(cfg.teacher.checkpoint), trust).get("config")
    return load_teacher_view(cfg.data, (recorded or {}).get("data"), data)


def _load_teacher(
    cfg: RunConfig, method: Method, num_classes: int, in_channels: int, trust: bool
) -> nn.Module | None:
    if cfg.teacher is None:
        return None
    if cfg.teacher.checkpoint is None:
        raise ConfigError(
            "teacher.checkpoint is required: a teacher must be trained first "
            "(kdscope train ...) and referenced by its run directory or .pt file"
        )
    teacher = load_model(cfg.teacher.checkpoint, trust=trust)
    info = describe(teacher)
    if (method.same_label_space and info.num_classes != num_classes) or (
        info.in_channels != in_channels
    ):
        raise ConfigError(
            f"teacher {str(cfg.teacher.checkpoint)!r} was built for {info.num_classes} classes "
            f"and {info.in_channels} input channels, but data {cfg.data.name!r} has "
            f"{num_classes} classes and {in_channels} channels"
        )
    return teacher


class IndexedDataset(Dataset):
    """Wrap a user's dataset of ``(x, y)`` pairs so it yields ``(x, y, index)`` as kdscope
    expects."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        x, y = self.dataset[i][:2]
        return x, torch.as_tensor(y), i


def distill(
    teacher: nn.Module | None,
    student: nn.Module,
    train: Dataset | DataLoader,
    val: Dataset | DataLoader | None = None,
    *,
    method: str | Method = "kd",
    method_params: dict[str, Any] | None = None,
    epochs: int = 10,
    batch_size: int | None = None,
    optim: OptimConfig | dict[str, Any] | None = None,
    schedule: ScheduleConfig | dict[str, Any] | None = None,
    run_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    **train_options: Any,
) -> FitResult:
    """Distill ``teacher`` into ``student`` with users' own modules and data.

    ``train``/``val`` are datasets of ``(x, y)`` (or ``(x, y, index)``) or DataLoaders over them
    (their batch size is used). ``method`` is a registered name (``kdscope methods``) or a Method
    instance; ``teacher=None`` with ``method="none"`` trains the student alone. Further keyword
    arguments are :class:`~kdscope.config.TrainConfig` fields (``seed``, ``cache``, ``device``,
    ``ce_weight``, ...).

    >>> result = kdscope.distill(teacher, student, train_ds, val_ds, method="kd", epochs=5)
    """
    train_set, train_bs = _as_dataset(train)
    val_set, _ = _as_dataset(val) if val is not None else (None, None)
    if isinstance(method, str):
        method = create_method(method, **(method_params or {}))
    trainer = Trainer(
        student,
        train_set,
        val_set,
        teacher=teacher,
        method=method,
        data=DataConfig(batch_size=batch_size or train_bs or 128),
        optim=_validated(OptimConfig, optim),
        schedule=_validated(ScheduleConfig, schedule),
        train=TrainConfig(epochs=epochs, **train_options),
        run_dir=run_dir,
        progress=progress,
    )
    return trainer.fit(resume=resume)


def _validated(model_cls, value):
    return value if isinstance(value, model_cls) else model_cls.model_validate(value or {})


def _as_dataset(data: Dataset | DataLoader) -> tuple[Dataset, int | None]:
    batch_size = None
    if isinstance(data, DataLoader):
        batch_size = data.batch_size
        data = data.dataset
    sample = data[0]
    if isinstance(sample, (tuple, list)) and len(sample) == 2:
        data = IndexedDataset(data)
    return data, batch_size


__all__ = ["IndexedDataset", "RunResult", "distill", "run"]
