"""Evaluate trained runs (directories or checkpoints) against their teacher (`kdscope evaluate`)."""

from __future__ import annotations

from pathlib import Path

from kdscope.config import DataConfig
from kdscope.data import load_data
from kdscope.explain import explain_student
from kdscope.metrics import evaluate
from kdscope.train.checkpoint import load_model, read_checkpoint, resolve_checkpoint


def run_data_config(run: Path) -> DataConfig | None:
    """The data section a run was trained with (from its checkpoint), if it recorded one."""
    config = read_checkpoint(resolve_checkpoint(run)).get("config") or {}
    return DataConfig.model_validate(config["data"]) if "data" in config else None


def _bundle(student: Path, data: str | None):
    recorded = run_data_config(student)
    if recorded is None and data is None:
        raise ValueError(f"{student} records no dataset: pass --data NAME")
    cfg = recorded or DataConfig()
    if data is not None:
        cfg = cfg.model_copy(update={"name": data})
    return load_data(cfg)


def evaluate_runs(
    teacher: Path,
    student: Path,
    base: Path | None = None,
    metrics: list[str] | None = None,
    *,
    data: str | None = None,
    split: str = "test",
    out: Path | None = None,
):
    """Load the three models, evaluate on ``split`` (calibrating KRS on the validation split) and
    write the result as JSON to ``out`` (default: ``eval.json`` in the student's run directory).

    Returns ``(EvaluationResult, path written)``.
    """
    bundle = _bundle(student, data)
    base_model = load_model(base) if base is not None else None
    metrics = metrics or ["agreement", "krs"]
    result = evaluate(
        load_model(teacher),
        load_model(student),
        bundle.test if split == "test" else bundle.val,
        base=base_model,
        metrics=metrics,
        calibration=bundle.val if split == "test" else None,
        class_names=bundle.class_names if "rs" in metrics else None,
    )
    path = out or (student if Path(student).is_dir() else Path(student).parent) / "eval.json"
    result.save_json(path)
    return result, path


def explain_runs(
    student: Path,
    base: Path,
    teacher: Path | None = None,
    layers: list[str] | None = None,
    num_images: int = 16,
    *,
    data: str | None = None,
    out: Path | None = None,
):
    """Explain a student run against its base (and teacher) run; figures go to ``out`` (default:
    the student's run directory). Returns ``(relevance dict, output directory)``."""
    bundle = _bundle(student, data)
    out_dir = out or (student if Path(student).is_dir() else Path(student).parent)
    result = explain_student(
        load_model(student),
        load_model(base),
        bundle,
        teacher=load_model(teacher) if teacher is not None else None,
        layers=layers,
        num_images=num_images,
        out_dir=out_dir,
    )
    return result, out_dir
