"""Evaluate trained runs (directories or checkpoints) against their teacher (`kdscope evaluate`)."""

from __future__ import annotations

from pathlib import Path

from kdscope.config import DataConfig
from kdscope.train.checkpoint import load_model, read_checkpoint, resolve_checkpoint


def run_data_config(run: Path) -> DataConfig | None:
    """The data section a run was trained with (from its checkpoint), if it recorded one."""
    config = read_checkpoint(resolve_checkpoint(run)).get("config") or {}
    return DataConfig.model_validate(config["data"]) if "data" in config else None


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
    from kdscope.data import load_data
    from kdscope.metrics import evaluate

    cfg = run_data_config(student) or DataConfig()
    if data is not None:
        cfg = cfg.model_copy(update={"name": data})
    elif run_data_config(student) is None:
        raise ValueError(f"{student} records no dataset: pass --data NAME")
    bundle = load_data(
        cfg.name,
        data_dir=cfg.data_dir,
        download=cfg.download,
        val_fraction=cfg.val_fraction,
        seed=cfg.seed,
        train_size=cfg.train_size,
        **cfg.options,
    )
    models = {k: load_model(p) for k, p in (("teacher", teacher), ("student", student)) if p}
    base_model = load_model(base) if base is not None else None
    metrics = metrics or ["agreement", "krs"]
    result = evaluate(
        models["teacher"],
        models["student"],
        bundle.test if split == "test" else bundle.val,
        base=base_model,
        metrics=metrics,
        calibration=bundle.val if split == "test" else None,
        class_names=bundle.class_names if "rs" in metrics else None,
    )
    path = out or (student if Path(student).is_dir() else Path(student).parent) / "eval.json"
    result.save_json(path)
    return result, path
