"""A study's report: the state of its grid (every missing or failed cell, and why), then the
analyses its config names, over the rows of its tidy table that were measured.

A study directory needs only ``study.yaml`` and its table (``results.jsonl`` or ``results.csv``):
without the ``plan.json`` a run writes, the planned grid is expanded from the config again, so a
folder holding a config and a table (``docs/studies/<name>/``) can be reported on. Paths in the
report are relative to the study directory."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from kdscope.analysis import tidy
from kdscope.analysis.functional import functional_transfer
from kdscope.analysis.krs_validation import krs_validation
from kdscope.analysis.report import Code, Section, Table, relative_paths, write_report
from kdscope.config import ConfigError
from kdscope.study.config import StudyConfig
from kdscope.study.plan import expand
from kdscope.study.runner import run_status

CELL = ("arm", "teacher", "student", "method", "alpha", "temperature")


def study_report(study_dir: str | Path) -> Path:
    """Write ``report.html`` in ``study_dir`` from its tidy table: the grid's state (with every
    missing or failed cell and why), then the analyses the study config names."""
    study_dir = Path(study_dir)
    if not (study_dir / "study.yaml").is_file():
        raise ConfigError(
            f"{str(study_dir)!r} is not a study directory (no study.yaml): run kdscope study first"
        )
    cfg_text = (study_dir / "study.yaml").read_text()
    cfg = StudyConfig.model_validate(yaml.safe_load(cfg_text))
    if (study_dir / "plan.json").is_file():
        planned = json.loads((study_dir / "plan.json").read_text())["rows"]
    else:
        planned = [{"id": r.id, **r.labels} for r in expand(cfg).rows]
    tables = [study_dir / f"results.{ext}" for ext in ("jsonl", "csv")]
    rows = next((tidy.read_rows(t) for t in tables if t.exists()), [])
    found = {f"{r['run']}@{r['teacher_run']}": r for r in rows}
    ok = [r for r in rows if r.get("status") == "ok"]
    status = Section("Study grid", id="study-grid")
    status.findings.append(
        f"Grid: {len(ok)} of {len(planned)} planned rows measured "
        f"({cfg.data.name}, seeds {', '.join(map(str, cfg.seeds))})."
    )
    runs_used = {(r["run"], r.get("fingerprint")) for r in ok}
    status.findings.append(
        f"Runs used: {len(runs_used)} run directories under runs/; each row of results.csv names "
        "its run and the fingerprint of the settings it was trained with (a run trained under "
        "other settings is kept aside as runs/<run>@<fingerprint>, never mixed in)."
    )
    missing: dict[tuple, list] = {}
    for p in planned:
        row = found.get(p["id"])
        if row is not None and row.get("status") == "ok":
            continue
        reason = (
            relative_paths(str(row["error"]), study_dir)
            if row is not None
            else _not_run(study_dir, p["id"].split("@")[0])
        )
        missing.setdefault((*(p[k] for k in CELL), reason), []).append(p["seed"])
    if missing:
        status.blocks.append(Table(
            [*CELL, "missing seeds", "why"],
            [[*k[:-1], ", ".join(map(str, s)), k[-1][:300]] for k, s in missing.items()],
            "Missing cells: planned runs with no result", "study-missing",
        ))  # fmt: skip
        status.notes.append(
            f"Partial study: {len(planned) - len(ok)} of {len(planned)} planned rows missing in "
            f"{len(missing)} cell(s) (table 'Missing cells'); analyses use the rows present."
        )
    status.blocks.append(Code(relative_paths(cfg_text, study_dir), caption="study.yaml (resolved)"))
    sections = [status]
    # With both checkpoints measured, each analysis runs once per checkpoint: never mixed.
    by_checkpoint: dict[str | None, list] = {}
    for row in ok:
        by_checkpoint.setdefault(row.get("checkpoint"), []).append(row)
    names = {
        None: "",
        "best": " (best-validation checkpoints)",
        "last": " (last-epoch checkpoints)",
    }
    for which, rows_of in by_checkpoint.items() or {None: []}.items():
        if "functional" in cfg.analyses:
            sections.append(
                functional_transfer(rows_of, title=f"Functional transfer{names[which]}")
            )
        if "krs" in cfg.analyses:
            sections.append(krs_validation(rows_of, title=f"KRS validation{names[which]}"))
    subtitle = (
        f"{cfg.data.name}, seeds {', '.join(map(str, cfg.seeds))}; table: results.csv next to "
        "this report"
    )
    return write_report(study_dir / "report.html", f"Study {cfg.name}", sections, subtitle)


def _not_run(study_dir: Path, run: str) -> str:
    return {
        "finished": "trained, not evaluated yet",
        "interrupted": "interrupted (rerun the study to resume)",
        "new": "not run yet",
    }[run_status(study_dir / "runs" / run)]
