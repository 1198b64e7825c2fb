"""The units of work a study hands to an executor: train a run, calibrate a teacher, evaluate a row.

Module-level functions of plain (JSON-like) arguments, so a process pool or Ray can ship them.
"""

from __future__ import annotations

import functools
import json
import time
from typing import Any

import torch
from rich import get_console
from torch.utils.data import Dataset, Subset

from kdscope import api
from kdscope.config import DataConfig, RunConfig
from kdscope.data import load_data, load_teacher_view, stratified_sample
from kdscope.metrics import AgreementResult, evaluate
from kdscope.metrics.evaluator import paired_batches
from kdscope.metrics.task_agreement import CALIBRATED, aoa_accumulator, task_of
from kdscope.models import describe, reader
from kdscope.train import load_model
from kdscope.train.checkpoint import read_checkpoint, resolve_checkpoint

SPLIT_SUFFIX = {"all": "all", "teacher_correct": "C", "teacher_incorrect": "I"}
FIGURE_PREFIX = {
    "top1_agreement": "agree",
    "kl": "kl",
    "js": "js",
    "activation_distance": "l2",
    "cosine": "cos",
}


def train(
    config: dict[str, Any],
    resume: bool,
    teacher_test_acc: float | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Train one run with :func:`kdscope.api.run` (given the test accuracy its teacher's run
    recorded); its test score, what that score is (``accuracy``, ``mean_iou`` or ``map``) and
    its wall time. With ``progress`` the run's name, bars and epoch lines are shown, as
    ``kdscope distill`` shows them."""
    start = time.perf_counter()
    cfg = RunConfig.model_validate(config)
    if progress:
        get_console().print(f"{cfg.run_dir.name}: {'resuming' if resume else 'training'}")
    result = api.run(cfg, resume=resume, progress=progress, teacher_test_acc=teacher_test_acc)
    return {
        "test_acc": result.test_acc,
        "score": result.score,
        "seconds": time.perf_counter() - start,
    }


@functools.lru_cache(maxsize=2)
def _bundle(data_json: str):
    return load_data(DataConfig.model_validate(json.loads(data_json)))


@functools.lru_cache(maxsize=2)
def _teacher_bundle(data_json: str, teacher_dir: str):
    """The bundle the teacher reads: the study's, or the teacher's own representation of the same
    examples when it was trained on another (cross-representation pairs)."""
    bundle = _bundle(data_json)
    recorded = (read_checkpoint(resolve_checkpoint(teacher_dir)).get("config") or {}).get("data")
    cfg = DataConfig.model_validate(json.loads(data_json))
    return load_teacher_view(cfg, recorded, bundle) or bundle


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _model(run_dir: str, which: str = "best") -> torch.nn.Module:
    return load_model(run_dir, which).to(_device())


@torch.no_grad()
def calibrate(
    data: dict[str, Any], teacher_dir: str, student_dirs: list[str], evaluation: dict[str, Any]
) -> float | None:
    """The KRS constant C shared by a teacher's students: the largest per-example KL(p_T || p_S)
    of any of them on the validation split (None without one: the evaluation set then sets C;
    None for segmentation, whose output agreement needs no C). A teacher trained on another
    representation reads its own view of the split, paired example by example."""
    key = json.dumps(data, sort_keys=True)
    bundle = _bundle(key)
    val = bundle.val
    teacher = _model(teacher_dir).eval()
    task = task_of(describe(teacher).output)
    if len(val) == 0 or task not in CALIBRATED:
        return None
    t_bundle = _teacher_bundle(key, teacher_dir)
    t_val = t_bundle.val if t_bundle is not bundle else None
    students = [_model(s).eval() for s in student_dirs]
    kl = [aoa_accumulator(task, describe(teacher).num_classes) for _ in students]
    # A language model's positions are its examples: (B, T, V) logits are read as (B * T, V).
    tokens = task == "language-modelling"

    def logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        z = reader(model).logits(model, x)
        return z.flatten(0, 1) if tokens else z

    for batch, t_batch in paired_batches(val, t_val, evaluation["batch_size"]):
        t_logits = logits(teacher, t_batch[0].to(_device()))
        x = batch[0].to(_device())
        for acc, student in zip(kl, students, strict=True):
            acc.update(t_logits, logits(student, x))
    return max(acc.max_kl for acc in kl)


def evaluation_split(bundle, test_size: int | None) -> Dataset:
    """The test split, or a subset of ``test_size`` examples of it (always the same): stratified
    by class for classification, the first ones otherwise (scenes are drawn independently, so
    any prefix is a random sample; a language model's first blocks)."""
    test = bundle.test
    if test_size is None or test_size >= len(test):
        return test
    if bundle.task != "classification":
        return Subset(test, list(range(test_size)))
    labels = [int(test[i][1]) for i in range(len(test))]
    return Subset(test, stratified_sample(labels, test_size, seed=0).tolist())


def evaluate_row(
    data: dict[str, Any],
    teacher_dir: str,
    student_dir: str,
    c: float | None,
    evaluation: dict[str, Any],
    which: str = "best",
) -> dict[str, Any]:
    """Agreement and KRS of one student (its ``which`` checkpoint: best or last) against its
    teacher on the test split, as tidy columns."""
    key = json.dumps(data, sort_keys=True)
    bundle, t_bundle = _bundle(key), _teacher_bundle(key, teacher_dir)
    student = _model(student_dir, which)
    result = evaluate(
        _model(teacher_dir),
        student,
        evaluation_split(bundle, evaluation["test_size"]),
        c=c,
        batch_size=evaluation["batch_size"],
        teacher_data=(
            evaluation_split(t_bundle, evaluation["test_size"]) if t_bundle is not bundle else None
        ),
    )
    return tidy_measures(result) | {
        "student_params": sum(p.numel() for p in student.parameters()),
    }


def tidy_measures(result) -> dict[str, Any]:
    """The tidy-table columns (:mod:`kdscope.analysis.tidy`) of an EvaluationResult's student.
    For dense tasks ``accuracy`` is the task's score (mean IoU, mAP@[.5:.95]), so the KRS
    analyses correlate KRS with it, as the KRS paper does, and ``task`` says which it is."""
    krs = result.krs["student"]
    row = task_columns(result.task, result.agreement["student"]) | {
        "task": result.task,
        "krs": krs.krs,
        "fss": krs.fss,
        "aoa": krs.aoa,
        "c": result.calibration["c"],
        "n_test": result.n,
    }
    tokens = result.tokens.get("student")
    if tokens is not None:  # a language model's: n_test counts positions
        row |= {
            "perplexity": tokens.student_perplexity,
            "teacher_perplexity": tokens.teacher_perplexity,
            "topk_overlap": tokens.topk_overlap,
        }
    return row


def task_columns(task: str, ag) -> dict[str, Any]:
    """The tidy-table columns of a task's agreement figures: :func:`agreement_columns` for
    classification; each model's score, pixel accuracy and mask IoU with the teacher for
    segmentation; mAP and box agreement (recall on all, C and I teacher boxes) for detection."""
    if task == "segmentation":
        return {
            "accuracy": ag.student.mean_iou,
            "teacher_accuracy": ag.teacher.mean_iou,
            "pixel_accuracy": ag.student.pixel_accuracy,
            "mask_iou_teacher": ag.mask_agreement,
        }
    if task == "detection":
        boxes = ag.boxes
        return {
            "accuracy": ag.student.map,
            "teacher_accuracy": ag.teacher.map,
            "map_50": ag.student.map_50,
            "box_recall_all": boxes.all.recall,
            "box_recall_C": boxes.teacher_correct.recall,
            "box_recall_I": boxes.teacher_incorrect.recall,
            "box_precision": boxes.all.precision,
            "box_f1": boxes.all.f1,
        }
    return agreement_columns(ag)


def agreement_columns(ag: AgreementResult) -> dict[str, Any]:
    """The tidy-table columns of an AgreementResult: accuracies, ECE, ``same_wrong_I`` and every
    figure per split (``agree_all``, ``agree_C``, ``agree_I``, ``kl_all``, ...)."""
    row = {
        "accuracy": ag.all.student_accuracy,
        "teacher_accuracy": ag.all.teacher_accuracy,
        "ece": ag.all.student_ece,
        "same_wrong_I": ag.same_error,
    }
    for split, suffix in SPLIT_SUFFIX.items():
        figures = getattr(ag, split)
        for name, prefix in FIGURE_PREFIX.items():
            row[f"{prefix}_{suffix}"] = getattr(figures, name)
    return row
