"""What every audit writes: ``DIR/report.html`` through the one report writer and ``DIR/audit.json``
with every number of the report, students keyed by name with the tidy-table columns
(``agree_all``, ``agree_C``, ``agree_I``, ``kl_all``, ...) and each table of the report by its id
(the tests, the payoff, ...), so that scripts read the answer without parsing HTML.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kdscope.analysis.report import Section, Table, write_report
from kdscope.analysis.stats import Estimate

VERSION = 1


@dataclass
class AuditResult:
    """An audit's directory, its files and the plain sentences that answer it."""

    out_dir: Path
    report: Path
    json: Path
    summary: list[str] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)


def plain(value: Any) -> Any:
    """``value`` as JSON: an Estimate as value/low/high/n/level, NaN and inf as null."""
    if isinstance(value, Estimate):
        return {k: plain(v) for k, v in asdict(value).items()}
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def relative(path: str | Path, start: Path) -> str:
    """``path`` relative to ``start`` (``..`` where needed), so that no page names a machine."""
    return os.path.relpath(Path(path).resolve(), start.resolve())


def write_audit(
    out_dir: Path,
    title: str,
    sections: Sequence[Section],
    students: Mapping[str, Mapping[str, Any]],
    meta: Mapping[str, Any],
    summary: list[str],
    subtitle: str = "",
) -> AuditResult:
    """Write ``report.html`` and ``audit.json`` in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tables = {
        block.id: block.records()
        for section in sections
        for block in section.blocks
        if isinstance(block, Table) and block.id
    }
    document = {
        "audit": VERSION,
        **meta,
        "summary": summary,
        "students": students,
        "tables": tables,
        "notes": [n for s in sections for n in s.notes],
    }
    json_path = out_dir / "audit.json"
    tmp = json_path.with_name(json_path.name + ".tmp")
    tmp.write_text(json.dumps(plain(document), indent=1, allow_nan=False))
    os.replace(tmp, json_path)
    report = write_report(out_dir / "report.html", title, sections, subtitle=subtitle)
    rows = [dict(r) for r in students.values()]
    return AuditResult(out_dir, report, json_path, summary, rows)
