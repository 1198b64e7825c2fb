"""``kdscope demo``: teacher, baseline and KD student on the bundled digits, and what moved between
them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table as RichTable

from kdscope.analysis.report import Figure, Section, Table, write_report
from kdscope.analysis.run_report import curves_figure, read_history
from kdscope.api import run
from kdscope.config import build_config
from kdscope.data import load_data
from kdscope.explain import explain_student
from kdscope.explain.relevance import RELEVANCE_COLUMNS, relevance_rows
from kdscope.metrics import evaluate
from kdscope.train import load_model

TEACHER, STUDENT = "resnet56", "resnet8"


def _stage(out_dir: Path, name: str, epochs: int, console: Console, **fields: Any) -> Path:
    """Run one stage unless it already finished; resume it if it was interrupted."""
    run_dir = out_dir / name
    if (run_dir / "summary.json").exists():
        console.print(f"[dim]{name}: already trained, reusing {run_dir}[/dim]")
        return run_dir
    cfg = build_config(
        {
            "name": name,
            "out_dir": str(out_dir),
            "data": {"name": "digits", "batch_size": 64},
            "optim": {"lr": 0.05},
            "train": {"epochs": epochs, "seed": 0},
            **fields,
        }
    )
    console.print(f"[bold]{name}[/bold]: {cfg.student.name}, method {cfg.method.name}")
    run(cfg, resume=(run_dir / "checkpoints" / "last.pt").exists())
    return run_dir


def run_demo(out_dir: Path, epochs: int = 15, console: Console | None = None) -> dict[str, Any]:
    """Train the three models (or reuse finished ones), evaluate and explain the KD student, print
    the tables and write ``out_dir/report.html``."""
    console = console or Console()
    out_dir = Path(out_dir)
    teacher_dir = _stage(out_dir, "teacher", epochs, console, student={"name": TEACHER})
    base_dir = _stage(out_dir, "baseline", epochs, console, student={"name": STUDENT})
    kd_dir = _stage(
        out_dir,
        "kd",
        epochs,
        console,
        student={"name": STUDENT},
        teacher={"name": TEACHER, "checkpoint": str(teacher_dir)},
        method={"name": "kd"},
    )
    data = load_data("digits")
    teacher, base, student = (load_model(d) for d in (teacher_dir, base_dir, kd_dir))
    console.print("[bold]evaluating[/bold]: agreement and KRS on the test split")
    result = evaluate(teacher, student, data.test, base=base, calibration=data.val)
    result.save_json(kd_dir / "eval.json")
    rows = _rows(result, {"teacher": teacher, "baseline": base, "kd": student})
    (out_dir / "summary.json").write_text(json.dumps(rows, indent=2))
    console.print(_table(rows))
    console.print("[bold]explaining[/bold]: Grad-CAM, UniCAM and relevance, KD student vs baseline")
    relevance = explain_student(student, base, data, num_images=8, max_batches=2, out_dir=kd_dir)
    rs = relevance_rows(relevance["base"])
    console.print(_rs_table(rs))
    report = write_report(
        out_dir / "report.html",
        "kdscope demo: what moved from teacher to student (digits)",
        _sections(rows, rs, {"teacher": teacher_dir, "baseline": base_dir, "kd": kd_dir}),
    )
    console.print(f"runs in {out_dir}; open {report} in a browser")
    return {"rows": rows, "eval": result, "relevance": relevance, "report": report}


def _rows(result, models) -> list[dict[str, Any]]:
    teacher_acc = result.agreement["student"].all.teacher_accuracy
    rows = [
        {
            "model": "teacher",
            "arch": TEACHER,
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
        model = models["baseline" if key == "base" else "kd"]
        rows.append(
            {
                "model": label,
                "arch": STUDENT,
                "params": _params(model),
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


def _table(rows: list[dict[str, Any]]) -> RichTable:
    table = RichTable(
        "model",
        "arch",
        "params",
        "test acc",
        "agree",
        "KRS",
        "FSS",
        "AOA",
        title="kdscope demo: digits, teacher -> student",
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


def _sections(rows, rs, run_dirs: dict[str, Path]) -> list[Section]:
    base, kd = rows[1], rows[2]
    findings = [
        f"Agreement: the KD student agrees with the teacher on {kd['agreement']:.1%} of test "
        f"images against {base['agreement']:.1%} for the baseline trained on labels alone.",
        f"Retention: KRS {kd['krs']:.3f} after KD against {base['krs']:.3f} before (FSS "
        f"{kd['fss']:.3f} vs {base['fss']:.3f}, AOA {kd['aoa']:.3f} vs {base['aoa']:.3f}).",
        f"Accuracy: teacher {rows[0]['test_acc']:.3f}, baseline {base['test_acc']:.3f}, KD student "
        f"{kd['test_acc']:.3f} (one seed: a demonstration, not a claim).",
    ]
    summary = Table(
        ["model", "arch", "params", "test acc", "agreement", "KRS", "FSS", "AOA"],
        [[r[k] for k in SUMMARY_KEYS] for r in rows],
        "test split of digits; KRS = 0.3 FSS (minibatch debiased CKA) + 0.7 AOA",
        id="demo-summary",
    )
    figures = run_dirs["kd"] / "figures"
    return [
        Section("What moved", findings=findings, blocks=[summary]),
        Section(
            "Training",
            blocks=[
                Figure(
                    curves_figure({name: read_history(d) for name, d in run_dirs.items()}),
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
