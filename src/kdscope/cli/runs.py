"""Commands on single runs: train, distill, evaluate, explain, generate."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from kdscope.api import run
from kdscope.cli.app import (
    ConfigArg,
    DataOpt,
    EpochsOpt,
    NameOpt,
    OutOpt,
    ResumeOpt,
    SetOpt,
    TrustOpt,
    command,
    console,
    fail,
)
from kdscope.config import ConfigError, build_config, load_config
from kdscope.evaluation import evaluate_runs, explain_runs, generate_runs
from kdscope.explain.relevance import RELEVANCE_COLUMNS, relevance_rows
from kdscope.models import describe
from kdscope.train import load_model


def _run_config(config, overrides, shortcuts, resume, need_teacher: bool, trust: bool) -> None:
    extra = [f"{k}={v}" for k, v in shortcuts.items() if v is not None] + list(overrides or [])
    cfg = load_config(config, extra) if config else build_config({}, extra)
    if need_teacher and cfg.teacher is None:
        raise ConfigError("distill needs a teacher: set teacher.checkpoint (or --teacher RUN_DIR)")
    if not need_teacher and cfg.teacher is not None and cfg.method.name == "none":
        console.print("note: the config names a teacher but method 'none' does not use it")
    try:
        result = run(cfg, resume=resume, trust=trust)
    except KeyboardInterrupt:
        console.print("interrupted; the last checkpoint is saved, rerun with --resume to continue")
        raise typer.Exit(130) from None
    s = result.summary()
    teacher = f", teacher {s['teacher_test_acc']:.4f}" if s["teacher_test_acc"] is not None else ""
    score = s["score"].replace("_", " ")
    console.print(f"test {score} {s['test_acc']:.4f}{teacher}; run written to {s['run_dir']}")


def _run_fields(data, epochs, name, out) -> dict:
    """The config fields of the options train and distill share."""
    return {"data.name": data, "train.epochs": epochs, "name": name, "out_dir": out}


@command
def train(
    config: ConfigArg = None,
    set_: SetOpt = None,
    model: Annotated[str | None, typer.Option(help="Model to train (student.name).")] = None,
    data: DataOpt = None,
    epochs: EpochsOpt = None,
    name: NameOpt = None,
    out: OutOpt = None,
    resume: ResumeOpt = False,
    trust: TrustOpt = False,
) -> None:
    """Train a model on labels alone (a teacher, or a baseline student)."""
    shortcuts = {"student.name": model, **_run_fields(data, epochs, name, out)}
    _run_config(config, set_, shortcuts, resume, need_teacher=False, trust=trust)


@command
def distill(
    config: ConfigArg = None,
    set_: SetOpt = None,
    teacher: Annotated[Path | None, typer.Option(help="Teacher run directory or .pt.")] = None,
    student: Annotated[str | None, typer.Option(help="Student model (student.name).")] = None,
    method: Annotated[str | None, typer.Option(help="Distillation method (method.name).")] = None,
    data: DataOpt = None,
    epochs: EpochsOpt = None,
    name: NameOpt = None,
    out: OutOpt = None,
    resume: ResumeOpt = False,
    trust: TrustOpt = False,
) -> None:
    """Distill a trained teacher into a student."""
    shortcuts = {
        "teacher.checkpoint": teacher,
        "student.name": student,
        "method.name": method,
        **_run_fields(data, epochs, name, out),
    }
    if teacher is not None:
        shortcuts["teacher.name"] = describe(load_model(teacher, trust=trust)).spec.name
    _run_config(config, set_, shortcuts, resume, need_teacher=True, trust=trust)


@command
def evaluate(
    teacher: Annotated[Path, typer.Option(help="Teacher run directory or .pt.")],
    student: Annotated[Path, typer.Option(help="Student run directory or .pt.")],
    base: Annotated[Path | None, typer.Option(help="Base model trained without KD.")] = None,
    metrics: Annotated[
        str, typer.Option(help="Comma-separated: agreement, krs, fss (needs --base), rs.")
    ] = "agreement,krs",
    data: Annotated[
        str | None, typer.Option(help="Dataset name (default: the student run's dataset).")
    ] = None,
    split: Annotated[str, typer.Option(help="Split to evaluate on: test or val.")] = "test",
    out: Annotated[
        Path | None, typer.Option(help="JSON output (default: STUDENT/eval.json).")
    ] = None,
    trust: TrustOpt = False,
) -> None:
    """Measure what the student retained from its teacher (agreement, KRS, FSS, RS)."""
    if split not in ("test", "val"):
        fail(f"--split must be 'test' or 'val', got {split!r}")
    result, path = evaluate_runs(
        teacher,
        student,
        base,
        [m.strip() for m in metrics.split(",") if m.strip()],
        data=data,
        split=split,
        out=out,
        trust=trust,
    )
    console.print(result.to_table(), highlight=False, soft_wrap=True)
    console.print(f"written to {path}")


@command
def explain(
    student: Annotated[Path, typer.Option(help="Student run directory or .pt.")],
    base: Annotated[Path, typer.Option(help="Base run (same architecture, trained without KD).")],
    teacher: Annotated[
        Path | None, typer.Option(help="Teacher run, for its unique features.")
    ] = None,
    layers: Annotated[
        str | None, typer.Option(help="Comma-separated layers (default: the feature layers).")
    ] = None,
    num_images: Annotated[int, typer.Option(help="Rows of the figure grid.")] = 16,
    data: Annotated[
        str | None, typer.Option(help="Dataset name (default: the student run's dataset).")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Output directory (default: STUDENT).")] = None,
    batches: Annotated[int, typer.Option(min=1, help="Batches for the perturbed FSS/RS.")] = 8,
    batch_size: Annotated[
        int, typer.Option(min=4, help="Examples per batch of the perturbed FSS/RS.")
    ] = 64,
    trust: TrustOpt = False,
) -> None:
    """Grad-CAM and UniCAM figures and perturbed FSS/RS: what the student gained and dropped
    (sentence classifiers: tokens highlighted by relevance, no ROAD)."""
    names = [x.strip() for x in layers.split(",")] if layers else None
    result, out_dir = explain_runs(
        student,
        base,
        teacher,
        names,
        num_images,
        data=data,
        out=out,
        trust=trust,
        max_batches=batches,
        batch_size=batch_size,
    )
    if not result["base"]["layers"]:
        console.print(f"token relevance figures and relevance.json written to {out_dir}")
        return
    table = Table("layer", *RELEVANCE_COLUMNS, title="relevance on ROAD-perturbed inputs")
    for row in relevance_rows(result["base"]):
        cells = (row[k] for k in RELEVANCE_COLUMNS)
        table.add_row(row["layer"], *("-" if v is None else f"{v:.3f}" for v in cells))
    console.print(table)
    console.print(f"figures and relevance.json written to {out_dir}")


@command
def generate(
    runs: Annotated[
        list[Path], typer.Argument(help="Run directories (or .pt) of language models.")
    ],
    prompt: Annotated[str, typer.Option(help="Text the samples continue.")] = "\n",
    tokens: Annotated[int, typer.Option(min=0, help="Tokens to sample after the prompt.")] = 200,
    temperature: Annotated[
        float, typer.Option(min=0.0, help="Softmax temperature (0: greedy).")
    ] = 1.0,
    top_k: Annotated[
        int | None, typer.Option(min=1, help="Sample among the k likeliest tokens only.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the sampling (the same for every run).")] = 0,
    data: Annotated[
        str | None, typer.Option(help="Dataset name (default: the first run's dataset).")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Also write the samples to this file.")] = None,
    trust: TrustOpt = False,
) -> None:
    """Sample text from trained language models, one after the other from the same prompt."""
    samples = generate_runs(
        runs, prompt, tokens, temperature=temperature, top_k=top_k, seed=seed, data=data,
        trust=trust,
    )  # fmt: skip
    settings = f"temperature {temperature}, top-k {top_k or 'off'}, seed {seed}"
    parts = [f"## {run}\n\n({settings})\n\n```\n{text}\n```\n" for run, text in samples]
    for part in parts:
        console.print(part, markup=False, highlight=False)
    if out is not None:
        out.write_text("\n".join(parts))
        console.print(f"samples written to {out}", highlight=False)
