"""Commands over many runs: the demo, studies, their reports and the audit."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kdscope.cli.app import FileList, SetOpt, command, console
from kdscope.config import ConfigError


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
