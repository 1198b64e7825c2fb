"""Evaluate trained runs (directories or checkpoints) against their teacher (`kdscope evaluate`),
and sample text from trained language models (`kdscope generate`)."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdscope.config import DataConfig
from kdscope.data import load_data, load_teacher_view
from kdscope.explain import explain_student
from kdscope.metrics import evaluate
from kdscope.metrics.tokens import TOKEN_FIGURE, agreement_profile_figure
from kdscope.models import describe
from kdscope.models.generate import generate_text
from kdscope.train.checkpoint import load_model, read_checkpoint, resolve_checkpoint


def run_data_config(run: Path, trust: bool = False) -> DataConfig | None:
    """The data section a run was trained with (from its checkpoint), if it recorded one."""
    config = read_checkpoint(resolve_checkpoint(run), trust).get("config") or {}
    return DataConfig.model_validate(config["data"]) if "data" in config else None


def _bundle(student: Path, data: str | None, trust: bool = False):
    recorded = run_data_config(student, trust)
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
    trust: bool = False,
):
    """Load the three models, evaluate on ``split`` (calibrating KRS on the validation split) and
    merge the result into the JSON at ``out`` (default: ``eval.json`` in the student's run
    directory): the metrics computed now replace their earlier values, the others are kept, and
    ``inputs`` records per metric what produced it. For language models the student's top-1
    agreement by position in the block and by teacher confidence is drawn beside it, in
    ``token-agreement.png`` (which the run's report shows with its transfer metrics).

    Returns ``(EvaluationResult, path written)``.
    """
    if split not in ("test", "val"):
        raise ValueError(f"split must be 'test' or 'val', got {split!r}")
    bundle = _bundle(student, data, trust)
    models = {"teacher": teacher, "student": student, "base": base}
    loaded = {role: load_model(p, trust=trust) for role, p in models.items() if p is not None}
    _check_inputs(loaded, bundle)
    metrics = metrics or ["agreement", "krs"]
    # A teacher of another representation (cross-representation KD) reads its own view.
    view = load_teacher_view(_data_config(bundle, student, data, trust),
                             _recorded_data(teacher, trust), bundle)  # fmt: skip
    result = evaluate(
        loaded["teacher"],
        loaded["student"],
        bundle.test if split == "test" else bundle.val,
        base=loaded.get("base"),
        metrics=metrics,
        calibration=bundle.val if split == "test" else None,
        class_names=bundle.class_names if "rs" in metrics else None,
        teacher_data=None if view is None else (view.test if split == "test" else view.val),
        teacher_calibration=view.val if view is not None and split == "test" else None,
    )
    path = out or (student if Path(student).is_dir() else Path(student).parent) / "eval.json"
    inputs = {role: str(p) for role, p in models.items() if p is not None}
    merge_eval_json(path, result, inputs | {"data": bundle.name, "split": split})
    if result.tokens:
        figure = agreement_profile_figure(
            result.tokens["student"], f"{Path(student).name}, {split}"
        )
        figure.savefig(Path(path).parent / TOKEN_FIGURE, dpi=110)
    return result, path


def _recorded_data(run: Path, trust: bool) -> dict | None:
    return (read_checkpoint(resolve_checkpoint(run), trust).get("config") or {}).get("data")


def _data_config(bundle, student: Path, data: str | None, trust: bool) -> DataConfig:
    cfg = run_data_config(student, trust) or DataConfig(name=bundle.name)
    return cfg if data is None else cfg.model_copy(update={"name": data})


def merge_eval_json(path: Path, result, inputs: dict[str, Any]) -> dict[str, Any]:
    """Write ``result`` into the evaluation JSON at ``path`` without dropping what it did not
    recompute: each computed metric's section is replaced and its ``inputs`` (models, data, split,
    n, calibration, layers, estimators, time) recorded; other metrics stay as they were."""
    path = Path(path)
    old = json.loads(path.read_text()) if path.exists() else {}
    new = result.to_dict()
    merged = {**old, **{k: new[k] for k in ("n", "task", "calibration", "layers", "estimators")}}
    provenance = {
        **inputs,
        "n": new["n"],
        "calibration": new["calibration"],
        "layers": new["layers"],
        "estimators": new["estimators"],
        "computed": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    merged["inputs"] = dict(old.get("inputs") or {})
    for metric in new["metrics"]:
        merged[metric] = new[metric]
        merged["inputs"][metric] = provenance
    if new["tokens"]:  # a language model's token-level figures come with its agreement
        merged["tokens"] = new["tokens"]
    merged["metrics"] = sorted(set(old.get("metrics") or []) | set(new["metrics"]))
    merged["cka_skipped_examples"] = new["cka_skipped_examples"]
    path.write_text(json.dumps(merged, indent=2))
    return merged


def _check_inputs(models: dict[str, nn.Module], bundle) -> None:
    """Refuse models that cannot read the data or be compared with the student."""
    for role, model in models.items():
        channels = describe(model).in_channels
        if channels is not None and channels != bundle.in_channels:
            raise ValueError(
                f"the {role} takes {channels} input channel(s) but data {bundle.name!r} has "
                f"{bundle.in_channels}"
            )
    classes = {role: describe(m).num_classes for role, m in models.items()}
    if len(set(classes.values())) > 1:
        raise ValueError(f"the models predict different numbers of classes: {classes}")


def generate_runs(
    runs: list[Path],
    prompt: str,
    tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    seed: int = 0,
    data: str | None = None,
    trust: bool = False,
) -> list[tuple[Path, str]]:
    """Text sampled from each trained language model in ``runs`` (run directories or .pt files):
    ``prompt`` followed by ``tokens`` tokens (:func:`~kdscope.models.generate.generate_text`),
    decoded with the vocabulary of the data the first run was trained on. Each run samples with a
    generator seeded with ``seed``, so runs are compared on the same draws of randomness."""
    if not runs:
        raise ValueError("generate needs at least one run")
    bundle = _bundle(runs[0], data, trust)
    vocab = getattr(bundle, "vocab", None)
    if vocab is None:
        raise ValueError(
            f"{runs[0]} was trained on {bundle.name!r}, which has no character vocabulary: "
            "generate samples from language models of tinyshakespeare or text data"
        )
    samples = []
    for run in runs:
        model = load_model(run, trust=trust)
        if describe(model).output != "tokens":
            raise ValueError(f"{run} is not a language model (its output is not next-token logits)")
        generator = torch.Generator(next(model.parameters()).device).manual_seed(seed)
        text = generate_text(model, vocab, prompt, tokens, temperature, top_k, generator)
        samples.append((run, text))
    return samples


def explain_runs(
    student: Path,
    base: Path,
    teacher: Path | None = None,
    layers: list[str] | None = None,
    num_images: int = 16,
    *,
    data: str | None = None,
    out: Path | None = None,
    trust: bool = False,
    max_batches: int | None = 8,
    batch_size: int = 64,
):
    """Explain a student run against its base (and teacher) run; figures go to ``out`` (default:
    the student's run directory). The base must have the student's architecture (UniCAM compares
    the same layers of the two); ``max_batches`` bounds the ROAD-perturbed FSS/RS batches of
    ``batch_size``. Returns ``(relevance dict, output directory)``."""
    bundle = _bundle(student, data, trust)
    models = {"student": student, "base": base, "teacher": teacher}
    loaded = {role: load_model(p, trust=trust) for role, p in models.items() if p is not None}
    _check_inputs(loaded, bundle)
    s_spec, b_spec = describe(loaded["student"]).spec, describe(loaded["base"]).spec
    if s_spec and b_spec and (s_spec.name, s_spec.kwargs) != (b_spec.name, b_spec.kwargs):
        raise ValueError(
            f"the base must have the student's architecture: the student is {s_spec.name!r}, the "
            f"base {b_spec.name!r} (train a base of the student's model on labels alone)"
        )
    out_dir = out or (student if Path(student).is_dir() else Path(student).parent)
    result = explain_student(
        loaded["student"],
        loaded["base"],
        bundle,
        teacher=loaded.get("teacher"),
        layers=layers,
        num_images=num_images,
        out_dir=out_dir,
        max_batches=max_batches,
        batch_size=batch_size,
    )
    return result, out_dir
