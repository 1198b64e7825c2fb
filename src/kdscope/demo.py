"""``kdscope demo``: a teacher, a baseline student trained on labels alone and a KD student, then
the audit of what moved from the teacher to the student.

On Fashion-MNIST when it is installed (a 3000-image training subset, so that the demo takes under
three minutes on two CPU cores), else on the bundled digits. The setups (:data:`SETUPS`) are
chosen so that the teacher beats the baseline student: a student that outscores its teacher has
nothing to learn from it. ``configs/demo.yaml`` is the Fashion-MNIST KD student as a run config.
The last step, :func:`audit`, is one call from the trained runs to the report and its sentences.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table as RichTable

from kdscope.analysis.forest import ForestRow, forest_figure, forest_sentences
from kdscope.analysis.report import Figure, Lead, Section, Table, write_report
from kdscope.analysis.run_report import curves_figure, read_history
from kdscope.api import run
from kdscope.config import build_config
from kdscope.data import DatasetNotFoundError, load_data
from kdscope.data.fashion_mnist import find_files
from kdscope.explain import explain_student
from kdscope.explain.relevance import RELEVANCE_COLUMNS, relevance_rows
from kdscope.metrics import evaluate
from kdscope.study.tasks import evaluation_split
from kdscope.train import load_model

VERSUS = "the baseline trained on labels alone"


@dataclass(frozen=True)
class DemoSetup:
    """One dataset's demo: the subset, the models and their epochs (teacher, then students)."""

    data: str
    train_size: int | None
    val_fraction: float
    test_size: int | None
    teacher: str
    student: str
    teacher_epochs: int
    epochs: int
    lr: float = 0.05
    # One torch thread: these small convolutions gain little from a second one, and on shared
    # cores two threads ran resnet20 ten times slower (28 against 292 images/s, 2 cores, load 7).
    threads: int = 1


SETUPS = {
    "fashion-mnist": DemoSetup("fashion-mnist", 3000, 0.02, 2000, "resnet20", "resnet8", 6, 3),
    "digits": DemoSetup("digits", None, 0.1, None, "resnet20", "resnet8", 15, 4),
}


def demo_setup(data: str | None = None) -> DemoSetup:
    """The setup of ``data`` ('fashion-mnist' or 'digits'); by default Fashion-MNIST when its files
    are found, else digits."""
    if data is not None:
        if data not in SETUPS:
            raise ValueError(f"demo data {data!r} is not available; accepted: {sorted(SETUPS)}")
        return SETUPS[data]
    try:
        find_files(None, download=False)
    except DatasetNotFoundError:
        return SETUPS["digits"]
    return SETUPS["fashion-mnist"]


def run_demo(
    out_dir: Path,
    epochs: int | None = None,
    console: Console | None = None,
    data: str | None = None,
) -> dict[str, Any]:
    """Train the three models (or reuse finished ones), audit what moved, print the table, three
    plain sentences and where the report is. ``epochs`` (every model) overrides the setup's."""
    console = console or Console()
    setup = demo_setup(data)
    out_dir = Path(out_dir)
    console.print(
        f"[bold]kdscope demo[/bold] on {setup.data}: teacher {setup.teacher}, student "
        f"{setup.student}"
    )
    runs = train_models(out_dir, setup, epochs, console)
    result = audit(out_dir, setup, runs, console)
    # one line each (no wrapping), so that a log or a script reads them whole
    for sentence in result["sentences"]:
        console.print(sentence, highlight=False, markup=False, soft_wrap=True)
    console.print(f"report: {result['report']}", highlight=False, markup=False, soft_wrap=True)
    return result


def train_models(
    out_dir: Path, setup: DemoSetup, epochs: int | None, console: Console
) -> dict[str, Path]:
    """The teacher, the baseline and the KD student, each trained unless already finished."""
    teacher = _stage(
        out_dir, setup, "teacher", epochs or setup.teacher_epochs, console, setup.teacher
    )
    return {
        "teacher": teacher,
        "baseline": _stage(out_dir, setup, "baseline", epochs or setup.epochs, console),
        "kd": _stage(
            out_dir,
            setup,
            "kd",
            epochs or setup.epochs,
            console,
            teacher={"name": setup.teacher, "checkpoint": str(teacher)},
            method={"name": "kd"},
        ),
    }


def _stage(
    out_dir: Path,
    setup: DemoSetup,
    name: str,
    epochs: int,
    console: Console,
    arch: str | None = None,
    **fields: Any,
) -> Path:
    """Run one stage unless it already finished; resume it if it was interrupted."""
    run_dir = out_dir / name
    if (run_dir / "summary.json").exists():
        console.print(f"[dim]{name}: already trained, reusing {run_dir}[/dim]")
        return run_dir
    cfg = build_config(
        {
            "name": name,
            "out_dir": str(out_dir),
            "data": {
                "name": setup.data,
                "train_size": setup.train_size,
                "val_fraction": setup.val_fraction,
                "batch_size": 64,
            },
            "optim": {"lr": setup.lr},
            "train": {"epochs": epochs, "seed": 0, "threads": setup.threads},
            "student": {"name": arch or setup.student},
            **fields,
        }
    )
    console.print(f"[bold]{name}[/bold]: {cfg.student.name}, method {cfg.method.name}")
    run(cfg, resume=(run_dir / "checkpoints" / "last.pt").exists())
    return run_dir


def audit(out_dir: Path, setup: DemoSetup, runs: dict[str, Path], console: Console) -> dict:
    """What moved from the teacher to the KD student, against the baseline: agreement split by
    teacher-correct / teacher-incorrect, KRS with FSS and AOA, UniCAM and relevance; writes
    ``out_dir/report.html`` and returns the rows, the sentences and the report's path."""
    data = load_data(setup.data, train_size=setup.train_size, val_fraction=setup.val_fraction)
    teacher, base, student = (load_model(runs[k]) for k in ("teacher", "baseline", "kd"))
    console.print("[bold]evaluating[/bold]: agreement and KRS on the test split")
    result = evaluate(
        teacher,
        student,
        evaluation_split(data, setup.test_size),
        base=base,
        calibration=data.val,
    )
    result.save_json(runs["kd"] / "eval.json")
    rows = _rows(result, setup, {"teacher": teacher, "baseline": base, "kd": student})
    (out_dir / "summary.json").write_text(json.dumps(rows, indent=2))
    console.print(_table(rows, setup))
    console.print("[bold]explaining[/bold]: Grad-CAM, UniCAM and relevance, KD student vs baseline")
    relevance = explain_student(
        student, base, data, num_images=8, max_batches=2, out_dir=runs["kd"]
    )
    rs = relevance_rows(relevance["base"])
    console.print(_rs_table(rs))
    forest = _forest_rows(result)
    sentences = forest_sentences(forest, VERSUS)
    report = write_report(
        out_dir / "report.html",
        f"kdscope demo: what moved from teacher to student ({setup.data})",
        _sections(rows, rs, runs, forest, sentences, setup),
    )
    return {"rows": rows, "eval": result, "relevance": relevance, "sentences": sentences,
            "report": report}  # fmt: skip


def _forest_rows(result) -> list[ForestRow]:
    """KD - baseline on the headline measures, one seed: differences without intervals."""
    kd, base = result.agreement["student"], result.agreement["base"]
    values = {
        "accuracy": (kd.all.student_accuracy, base.all.student_accuracy),
        "agree_C": (kd.teacher_correct.top1_agreement, base.teacher_correct.top1_agreement),
        "agree_I": (kd.teacher_incorrect.top1_agreement, base.teacher_incorrect.top1_agreement),
    }
    rows = [ForestRow(m, a - b, float("nan"), float("nan"), False) for m, (a, b) in values.items()]
    (c_kd, c_base), (i_kd, i_base) = values["agree_C"], values["agree_I"]
    if c_base < 1 and i_base < 1:
        payoff = (i_kd - i_base) / (1 - i_base) - (c_kd - c_base) / (1 - c_base)
        rows.append(ForestRow("payoff", payoff, float("nan"), float("nan"), False))
    for m in ("krs", "fss", "aoa"):
        diff = getattr(result.krs["student"], m) - getattr(result.krs["base"], m)
        rows.append(ForestRow(m, diff, float("nan"), float("nan"), False))
    return rows


def _rows(result, setup: DemoSetup, models) -> list[dict[str, Any]]:
    teacher_acc = result.agreement["student"].all.teacher_accuracy
    rows = [
        {
            "model": "teacher",
            "arch": setup.teacher,
            "params": _params(models["teacher"]),
            "test_acc": teacher_acc,
            "agreement": None,
            "krs": None,
            "fss": None,
            "aoa": None,
        }
    ]
    for label, key in (("baseline", "base"), ("kd", "student")):
        ag, krs = result.agreement[key], result.krs[key]
        rows.append(
            {
                "model": label,
                "arch": setup.student,
                "params": _params(models[label]),
                "test_acc": ag.all.student_accuracy,
                "agreement": ag.all.top1_agreement,
                "krs": krs.krs,
                "fss": krs.fss,
                "aoa": krs.aoa,
            }
        )
    return rows


def _params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def _table(rows: list[dict[str, Any]], setup: DemoSetup) -> RichTable:
    table = RichTable(
        "model",
        "arch",
        "params",
        "test acc",
        "agree",
        "KRS",
        "FSS",
        "AOA",
        title=f"kdscope demo: {setup.data}, teacher -> student",
    )
    for r in rows:
        cells = [r[k] for k in ("test_acc", "agreement", "krs", "fss", "aoa")]
        table.add_row(
            r["model"],
            r["arch"],
            f"{r['params']:,}",
            *("-" if v is None else f"{v:.4f}" for v in cells),
        )
    return table


def _rs_table(rows: list[dict[str, Any]]) -> RichTable:
    table = RichTable(
        "layer",
        *RELEVANCE_COLUMNS,
        title="relevance (dCor, ROAD-perturbed inputs): KD student vs base",
        box=box.SIMPLE_HEAD,  # borderless: fits 80 columns (a log file) without cutting names
        show_edge=False,
        pad_edge=False,
        collapse_padding=True,
    )
    for r in rows:
        table.add_row(
            r["layer"], *("-" if r[k] is None else f"{r[k]:.3f}" for k in RELEVANCE_COLUMNS)
        )
    return table


SUMMARY_KEYS = ("model", "arch", "params", "test_acc", "agreement", "krs", "fss", "aoa")


def _sections(rows, rs, runs: dict[str, Path], forest, sentences, setup) -> list[Section]:
    base, kd = rows[1], rows[2]
    findings = [
        f"Accuracy: teacher {rows[0]['test_acc']:.3f}, baseline {base['test_acc']:.3f}, KD student "
        f"{kd['test_acc']:.3f} (one seed: a demonstration, not a claim).",
        f"Agreement: the KD student agrees with the teacher on {kd['agreement']:.1%} of test "
        f"images against {base['agreement']:.1%} for the baseline.",
        f"Retention: KRS {kd['krs']:.3f} after KD against {base['krs']:.3f} before (FSS "
        f"{kd['fss']:.3f} vs {base['fss']:.3f}, AOA {kd['aoa']:.3f} vs {base['aoa']:.3f}).",
    ]
    summary = Table(
        ["model", "arch", "params", "test acc", "agreement", "KRS", "FSS", "AOA"],
        [[r[k] for k in SUMMARY_KEYS] for r in rows],
        f"test split of {setup.data}; KRS = 0.3 FSS (minibatch debiased CKA) + 0.7 AOA",
        id="demo-summary",
    )
    lead = Lead(
        forest_figure(
            forest,
            caption=(
                f"KD student \u2212 {VERSUS}, one seed each: differences without intervals or "
                "tests (kdscope audit trains several seeds and tests them)"
            ),
            id="demo-forest",
            versus="baseline",
        ),
        sentences,
    )
    figures = Path(runs["kd"]) / "figures"
    return [
        Section("What moved", findings=findings, blocks=[summary], lead=lead),
        Section(
            "Training",
            blocks=[
                Figure(
                    curves_figure({name: read_history(d) for name, d in runs.items()}),
                    "all three runs",
                )
            ],
        ),
        Section(
            "Explanations",
            blocks=[
                Figure(
                    figures / "explanations.png",
                    "Grad-CAM of base and student; UniCAM distilled "
                    "(gained under KD) and residual (dropped) features, per layer",
                ),
                Table(
                    ["layer", *RELEVANCE_COLUMNS],
                    [[r["layer"], *(r[k] for k in RELEVANCE_COLUMNS)] for r in rs],
                    "FSS and RS on ROAD-perturbed inputs (bias-corrected dCor)",
                    id="demo-rs",
                ),
                Figure(figures / "relevance.png", "relevance per layer"),
            ],
        ),
    ]
