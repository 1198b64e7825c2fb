"""The report of one training run: configuration, curves, evaluation and explanation figures."""

from __future__ import annotations

import json
from pathlib import Path

from matplotlib.figure import Figure as MplFigure
from matplotlib.ticker import MaxNLocator

from kdscope.analysis.plots import retention_curves
from kdscope.analysis.report import (
    Code,
    Figure,
    Section,
    Table,
    key_value_table,
    relative_paths,
    write_report,
)
from kdscope.metrics.tokens import TOKEN_FIGURE


def read_history(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def curves_figure(histories: dict[str, list[dict]]) -> MplFigure:
    """Loss and validation accuracy per epoch, one line per run."""
    fig = MplFigure(figsize=(10, 3.6))
    loss_ax, acc_ax = fig.subplots(1, 2)
    for k, (name, history) in enumerate(histories.items()):
        epochs = [r["epoch"] for r in history]
        loss_ax.plot(
            epochs, [r["loss"] for r in history], marker="o", ms=3, color=f"C{k}", label=name
        )
        val = [r.get("val_acc") for r in history]
        if any(v is not None for v in val):
            acc_ax.plot(epochs, val, marker="o", ms=3, color=f"C{k}", label=name)
    loss_ax.set(xlabel="epoch", ylabel="training loss (all terms)", yscale="log")
    acc_ax.set(xlabel="epoch", ylabel="validation accuracy")
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    acc_ax.legend(loc="lower right", fontsize=9)
    fig.tight_layout()
    return fig


def run_sections(run_dir: Path) -> list[Section]:
    """Sections describing one run directory (whatever of it exists)."""
    run_dir = Path(run_dir)
    sections = []
    history = read_history(run_dir)
    if history:
        last = history[-1]
        terms = {f"{k} (last epoch)": v for k, v in last["terms"].items()}
        sections.append(
            Section(
                "Training",
                blocks=[
                    Figure(curves_figure({run_dir.name: history}), "loss and accuracy per epoch"),
                    key_value_table(
                        {
                            "epochs": last["epoch"],
                            "final train accuracy": last["train_acc"],
                            "final validation accuracy": last.get("val_acc"),
                            **terms,
                            "images/s (last epoch)": last.get("images_per_s"),
                        },
                        id="training",
                    ),
                ],
            )
        )
    if any(key.startswith("probe_") for r in history for key in r):
        sections.append(_retention_section(run_dir.name, history))
    summary = run_dir / "summary.json"
    if summary.exists():
        result = {
            k: relative_paths(v, run_dir) if isinstance(v, str) else v
            for k, v in json.loads(summary.read_text()).items()
        }
        sections.append(Section("Result", blocks=[key_value_table(result, id="summary")]))
    eval_json = run_dir / "eval.json"
    if eval_json.exists():
        blocks = [_eval_table(json.loads(eval_json.read_text()))]
        if (run_dir / TOKEN_FIGURE).exists():
            blocks.append(
                Figure(run_dir / TOKEN_FIGURE, "top-1 agreement by position and teacher confidence")
            )
        sections.append(Section("Transfer metrics", blocks=blocks))
    figures = sorted((run_dir / "figures").glob("*.png")) if (run_dir / "figures").exists() else []
    if figures:
        sections.append(Section("Explanations", blocks=[Figure(p, p.stem) for p in figures]))
    config = run_dir / "config.yaml"
    if config.exists():
        text = relative_paths(config.read_text(), run_dir)
        sections.append(Section("Configuration", blocks=[Code(text, "config.yaml")]))
    return sections


def _retention_section(name: str, history: list[dict]) -> Section:
    last = history[-1]
    agree_c, agree_i = last.get("probe_agree_C"), last.get("probe_agree_I")
    findings = []
    if agree_c is not None and agree_i is not None:
        findings.append(
            f"Retention at the last epoch: the student agrees with the teacher on {agree_c:.1%} "
            f"of the probe examples the teacher gets right and repeats {agree_i:.1%} of its "
            "mistakes."
        )
    return Section(
        "Retention curves",
        findings=findings,
        blocks=[
            Figure(
                retention_curves({name: history}),
                "agreement with the teacher on the probe set (teacher correct: C, teacher wrong: "
                "I), AOA and CKA at the stages, per epoch (train.probe)",
                id="retention",
                alt="Retention curves: agreement with the teacher on teacher-correct and "
                "teacher-wrong probe examples, AOA and CKA per epoch",
            )
        ],
    )


def _eval_table(result: dict) -> Table:
    rows = []
    tokens = result.get("tokens", {})
    for model, krs in result.get("krs", {}).items():
        agreement = result.get("agreement", {}).get(model, {}).get("all", {})
        row = [model, agreement.get("student_accuracy"), agreement.get("top1_agreement")]
        row += [krs["krs"], krs["fss"], krs["aoa"]]
        rows.append(row + ([tokens.get(model, {}).get("student_perplexity")] if tokens else []))
    return Table(
        ["model", "accuracy", "top-1 agreement", "KRS", "FSS (CKA)", "AOA"]
        + (["perplexity"] if tokens else []),
        rows,
        f"against the teacher, n = {result.get('n')}",
        id="eval",
    )


def write_run_report(run_dir: Path) -> Path:
    """Write ``run_dir/report.html``."""
    run_dir = Path(run_dir)
    return write_report(
        run_dir / "report.html", f"kdscope run: {run_dir.name}", run_sections(run_dir)
    )
