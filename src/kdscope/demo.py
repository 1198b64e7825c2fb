"""``kdscope demo``: teacher, baseline and KD student on the bundled digits, and what moved between
them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from kdscope.api import run
from kdscope.config import build_config
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


def run_demo(out_dir: Path, epochs: int = 30, console: Console | None = None) -> dict[str, Any]:
    """Train the three models (or reuse finished ones), evaluate, print and save a summary table."""
    from kdscope.data import load_data
    from kdscope.metrics import evaluate

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
    result = evaluate(teacher, student, data.test, base=base, calibration=data.val)
    result.save_json(kd_dir / "eval.json")
    rows = _rows(result, {"teacher": teacher, "baseline": base, "kd": student})
    (out_dir / "summary.json").write_text(json.dumps(rows, indent=2))
    console.print(_table(rows))
    console.print(f"runs, checkpoints and eval.json in {out_dir}")
    return {"rows": rows, "eval": result}


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
    for label, key in (("baseline (before KD)", "base"), ("kd (after KD)", "student")):
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


def _table(rows: list[dict[str, Any]]) -> Table:
    table = Table(
        "model",
        "arch",
        "params",
        "test acc",
        "agreement w/ teacher",
        "KRS",
        "FSS (CKA)",
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
