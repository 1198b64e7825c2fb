"""``kdscope`` command line: thin wrappers that parse, build a config and call the library.

Every command reports a failure as one sentence and exits 2 (3 for a non-finite loss, 130 on
Ctrl-C); ``kdscope --debug ...`` or ``KDSCOPE_DEBUG=1`` shows the traceback instead.
"""

from __future__ import annotations

import functools
import inspect
import os
import signal
import sys
from pathlib import Path
from typing import Annotated

import click
import typer
import typer.core
from rich.console import Console
from rich.table import Table

from kdscope.api import run
from kdscope.config import ConfigError, build_config, load_config
from kdscope.data import fetch, load_data
from kdscope.evaluation import evaluate_runs, explain_runs, generate_runs
from kdscope.explain.relevance import RELEVANCE_COLUMNS, relevance_rows
from kdscope.methods import METHODS, method_info
from kdscope.models import MODEL_FITS, describe, zoo_table
from kdscope.train import NonFiniteLossError, load_model

app = typer.Typer(
    help="kdscope: distill neural networks and measure what knowledge moved.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
_debug = {"on": False}

ConfigArg = Annotated[Path | None, typer.Argument(help="YAML run config (see configs/).")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="Override a field: key.sub=value.")]
TrustOpt = Annotated[
    bool,
    typer.Option(
        "--trust-checkpoints",
        help="Load checkpoints that hold more than tensors (unpickling can run code: only for "
        "files from a source you trust).",
    ),
]


@app.callback()
def _options(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks of errors.")] = False,
) -> None:
    _debug["on"] = debug or os.environ.get("KDSCOPE_DEBUG", "") not in ("", "0")


def _fail(message: str, code: int = 2) -> None:
    console.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


class GreedyOptions(typer.core.TyperCommand):
    """A command whose options named in ``greedy`` take every value up to the next option:
    ``--from-logits t.npy s0.npy s1.npy`` is read as ``--from-logits t.npy --from-logits s0.npy
    --from-logits s1.npy`` (click options otherwise take one value each)."""

    greedy: tuple[str, ...] = ()

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        spread, flag = [], None
        for arg in args:
            if arg.startswith("-"):
                name = arg.partition("=")[0]
                flag = name if name in self.greedy else None
                spread.append(arg)
            elif flag is not None and spread[-1] != flag:
                spread += [flag, arg]
            else:
                spread.append(arg)
        return super().parse_args(ctx, spread)


def command(fn=None, *, greedy: tuple[str, ...] = ()):
    """Register ``fn`` as a command whose errors are reported as one sentence (``greedy``: see
    :class:`GreedyOptions`)."""
    if fn is None:
        return functools.partial(command, greedy=greedy)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except Exception as err:
            if _debug["on"]:
                raise
            code = 3 if isinstance(err, NonFiniteLossError) else 2
            known = isinstance(err, (ValueError, TypeError, OSError, RuntimeError, ImportError))
            text = str(err) if known and str(err) else f"{type(err).__name__}: {err}"
            _fail(f"{text} (--debug shows the traceback)" if not known else text, code)

    if not greedy:
        return app.command()(wrapper)
    cls = type("Greedy", (GreedyOptions,), {"greedy": greedy})
    return app.command(cls=cls)(wrapper)


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


@command
def train(
    config: ConfigArg = None,
    set_: SetOpt = None,
    model: Annotated[str | None, typer.Option(help="Model to train (student.name).")] = None,
    data: Annotated[str | None, typer.Option(help="Dataset name (data.name).")] = None,
    epochs: Annotated[int | None, typer.Option(help="train.epochs")] = None,
    name: Annotated[str | None, typer.Option(help="Run name (directory under --out).")] = None,
    out: Annotated[Path | None, typer.Option(help="Directory of runs.")] = None,
    resume: Annotated[bool, typer.Option(help="Continue from checkpoints/last.pt.")] = False,
    trust: TrustOpt = False,
) -> None:
    """Train a model on labels alone (a teacher, or a baseline student)."""
    shortcuts = {
        "student.name": model,
        "data.name": data,
        "train.epochs": epochs,
        "name": name,
        "out_dir": out,
    }
    _run_config(config, set_, shortcuts, resume, need_teacher=False, trust=trust)


@command
def distill(
    config: ConfigArg = None,
    set_: SetOpt = None,
    teacher: Annotated[Path | None, typer.Option(help="Teacher run directory or .pt.")] = None,
    student: Annotated[str | None, typer.Option(help="Student model (student.name).")] = None,
    method: Annotated[str | None, typer.Option(help="Distillation method (method.name).")] = None,
    data: Annotated[str | None, typer.Option(help="Dataset name (data.name).")] = None,
    epochs: Annotated[int | None, typer.Option(help="train.epochs")] = None,
    name: Annotated[str | None, typer.Option(help="Run name (directory under --out).")] = None,
    out: Annotated[Path | None, typer.Option(help="Directory of runs.")] = None,
    resume: Annotated[bool, typer.Option(help="Continue from checkpoints/last.pt.")] = False,
    trust: TrustOpt = False,
) -> None:
    """Distill a trained teacher into a student."""
    shortcuts = {
        "teacher.checkpoint": teacher,
        "student.name": student,
        "method.name": method,
        "data.name": data,
        "train.epochs": epochs,
        "name": name,
        "out_dir": out,
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
        _fail(f"--split must be 'test' or 'val', got {split!r}")
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


@command
def models(
    num_classes: Annotated[int, typer.Option(min=2, help="Classes of the classifier.")] = 10,
    in_channels: Annotated[int, typer.Option(min=1, help="Input channels.")] = 3,
    input_size: Annotated[int, typer.Option(min=1, help="Input height = width.")] = 32,
    data: Annotated[
        str | None,
        typer.Option(help="List the models for this dataset, sized on one of its examples."),
    ] = None,
) -> None:
    """List the model zoo with parameters and multiply-adds (MACs) at the given input size, and
    which models fit which data (task and kind of input)."""
    if data is None:
        rows = zoo_table(num_classes, in_channels, input_size)
        shape = "C x H x W"
    else:
        bundle = load_data(data)
        example = fetch(bundle.train, [0])[0]
        rows = zoo_table(
            bundle.num_classes,
            bundle.in_channels,
            task=bundle.task,
            inputs=bundle.inputs,
            example=example,
        )
        shape = "per example"
        view = f" ({bundle.view})" if bundle.view else ""
        console.print(f"{data}: {bundle.task}, {bundle.num_classes} classes, one example is "
                      f"{bundle.inputs}{view} of shape {tuple(example.shape[1:])}")  # fmt: skip
    table = Table("model", "params (M)", "MMACs", f"feature layers ({shape})")
    for row in rows:
        layers = ", ".join(f"{k} {'x'.join(map(str, v))}" for k, v in row["features"].items())
        table.add_row(row["name"], f"{row['params'] / 1e6:.3f}", f"{row['macs'] / 1e6:.1f}", layers)
    console.print(table)
    if data is None:
        console.print(
            "Any torchvision classifier is also available as tv:<name> (e.g. tv:resnet18), any "
            "timm model as timm:<name> (e.g. timm:resnet10t; pip install 'kdscope[timm]')."
        )
        _print_fits()
    elif bundle.task == "language-modelling":
        console.print("Any local Hugging Face causal LM folder is also available as hf:<path>.")


def _print_fits() -> None:
    """The zoo by task and kind of input, and how datasets name theirs."""
    fits = Table("task", "inputs", "models", title="which models fit which data")
    groups: dict[tuple[str, str], list[str]] = {}
    for name, fit in sorted(MODEL_FITS.items()):
        for kind in fit.inputs:
            groups.setdefault((fit.task, kind), []).append(name)
    for (task, kind), names in sorted(groups.items()):
        fits.add_row(task, kind, ", ".join(names))
    console.print(fits)
    console.print(
        "Datasets give their task and inputs (kdscope models --data NAME): fsdd is image "
        "(log-mel) or waveform (data.options.input=waveform), sst2 tokens; any Hugging Face "
        "sequence classifier is hf:<local path>."
    )


@command
def methods(
    name: Annotated[str | None, typer.Argument(help="Show one method's documentation.")] = None,
) -> None:
    """List distillation methods with family, paper and defaults (or one method's docs)."""
    if name is not None:
        cls = METHODS.get(name)
        info = method_info(name)
        console.print(f"[bold]{name}[/bold] ({info['family']}) - {info['paper']}")
        console.print(inspect.cleandoc(cls.__doc__ or ""))
        console.print(f"default layers: {info['layers']}; needs: {', '.join(info['needs'])}")
        table = Table("parameter", "default", "accepted")
        for key, value in info["defaults"].items():
            table.add_row(key, repr(value), info["ranges"].get(key, "-"))
        console.print(table)
        return
    table = Table("method", "family", "paper", "defaults", "needs")
    for n in METHODS.names():
        info = method_info(n)
        defaults = ", ".join(f"{k}={v}" for k, v in info["defaults"].items())
        table.add_row(n, info["family"], info["paper"], defaults, ", ".join(info["needs"]))
    console.print(table)


@command
def demo(
    out: Annotated[Path, typer.Option(help="Directory of runs.")] = Path("runs"),
    epochs: Annotated[
        int | None, typer.Option(help="Epochs for every model (default: the setup's).")
    ] = None,
    data: Annotated[
        str | None,
        typer.Option(help="fashion-mnist or digits (default: Fashion-MNIST when installed)."),
    ] = None,
) -> None:
    """Teacher, baseline and KD student on Fashion-MNIST (or the bundled digits), then what
    moved from the teacher to the student."""
    from kdscope.demo import run_demo  # here: its report (matplotlib, scipy) takes seconds to load

    run_demo(out / "demo", epochs=epochs, console=console, data=data)


@command
def study(
    config: Annotated[Path, typer.Argument(help="YAML study config (see configs/studies/).")],
    set_: SetOpt = None,
    executor: Annotated[str, typer.Option(help="Where runs execute: local or ray.")] = "local",
    workers: Annotated[int, typer.Option(help="Parallel local runs (processes).")] = 1,
) -> None:
    """Train and evaluate a grid of runs, then write its table and report; rerun to resume."""
    # here, as in report: the study's analyses (matplotlib, scipy) take seconds to import
    from kdscope.study import load_study, make_executor, run_study, study_report

    cfg = load_study(config, set_)
    if executor == "ray" and workers != 1:
        raise ConfigError("--workers is for the local executor; Ray schedules by its CPUs")
    try:
        with make_executor(executor, workers) as runner:
            result = run_study(cfg, runner, log=lambda m: console.print(m, markup=False))
    except KeyboardInterrupt:
        console.print("interrupted; rerun the same command to resume (finished runs are kept)")
        raise typer.Exit(130) from None
    path = study_report(result.study_dir)
    console.print(f"report written to {path}", highlight=False)


@command
def report(
    study_dir: Annotated[Path, typer.Argument(help="A study directory (runs/studies/<name>).")],
) -> None:
    """Re-read a study's table, run its analyses and write STUDY_DIR/report.html."""
    from kdscope.study import study_report

    if (study_dir / "audit.json").is_file():
        raise ConfigError(
            f"{study_dir} is an audit: rerun its kdscope audit command to rewrite its report "
            "(finished runs are reused)"
        )
    path = study_report(study_dir)
    console.print(f"report written to {path}", highlight=False)


FileList = list[Path] | None


@command(greedy=("--from-logits", "--control", "--from-features", "--method"))
def audit(
    teacher: Annotated[
        str | None, typer.Option(help="Teacher: a kdscope run directory or a model to train.")
    ] = None,
    student: Annotated[str | None, typer.Option(help="Student architecture.")] = None,
    method: Annotated[
        list[str] | None, typer.Option(help="Distillation method(s) to audit (default kd).")
    ] = None,
    data: Annotated[str | None, typer.Option(help="Dataset (default: the teacher run's).")] = None,
    seeds: Annotated[int, typer.Option(help="Students per arm (seeds 0..N-1).")] = 5,
    epochs: Annotated[int | None, typer.Option(help="Epochs per student.")] = None,
    out: Annotated[
        Path | None, typer.Option(help="Audit directory (default runs/audits/<name>).")
    ] = None,
    set_: SetOpt = None,
    dry_run: Annotated[
        bool, typer.Option(help="Print what would be trained and its cost; train nothing.")
    ] = False,
    relevance: Annotated[bool, typer.Option(help="Measure UniCAM's FSS/RS (runs).")] = True,
    workers: Annotated[int, typer.Option(help="Parallel local runs (processes).")] = 1,
    from_logits: Annotated[
        FileList, typer.Option(help="Saved logits: the teacher's file, then the students'.")
    ] = None,
    control: Annotated[
        FileList, typer.Option(help="Saved logits of independent students, one per seed.")
    ] = None,
    labels: Annotated[Path | None, typer.Option(help="Saved labels (with --from-logits).")] = None,
    from_features: Annotated[
        FileList, typer.Option(help="Saved features: the teacher's, then the students'.")
    ] = None,
) -> None:
    """Did the student learn the teacher's function, or was distillation a regulariser? Trains
    distilled, control and random-control students per seed (or reads saved logits) and writes
    DIR/report.html and DIR/audit.json."""
    # here, as in study: the analyses (matplotlib, scipy) take seconds to import
    from kdscope.audit import audit_config, audit_logits, audit_runs
    from kdscope.study import make_executor

    if from_logits:
        given = {"--teacher": teacher, "--student": student, "--method": method, "--data": data}
        clash = [k for k, v in given.items() if v]
        if clash:
            raise ConfigError(f"--from-logits audits saved outputs; drop {', '.join(clash)}")
        if labels is None:
            raise ConfigError("--from-logits needs --labels FILE (the examples' classes)")
        result = audit_logits(
            from_logits[0],
            from_logits[1:],
            labels,
            out or Path("runs/audits") / Path(from_logits[0]).stem,
            controls=control or [],
            features=from_features or [],
        )
    else:
        if control or labels or from_features:
            raise ConfigError("--control, --labels and --from-features go with --from-logits")
        if teacher is None or student is None:
            raise ConfigError("audit needs --teacher and --student (or --from-logits FILES)")
        cfg = audit_config(teacher, student, method or ["kd"], data, seeds, epochs, out, set_ or [])
        try:
            with make_executor("local", workers) as runner:
                result = audit_runs(
                    cfg,
                    runner,
                    log=lambda m: console.print(m, markup=False, highlight=False, soft_wrap=True),
                    relevance=relevance,
                    dry_run=dry_run,
                )
        except KeyboardInterrupt:
            console.print("interrupted; rerun the same command to resume (finished runs are kept)")
            raise typer.Exit(130) from None
        if result is None:
            return
    for line in result.summary:
        console.print(line, markup=False, highlight=False, soft_wrap=True)
    console.print(f"report: {result.report}; numbers: {result.json}", soft_wrap=True)


def main() -> None:
    # SIGTERM (cluster pre-emption, `kill`) takes the same exact-checkpoint path as Ctrl-C.
    signal.signal(signal.SIGTERM, lambda *_: signal.raise_signal(signal.SIGINT))
    sys.exit(app())


if __name__ == "__main__":
    main()
