"""kdscope's one HTML report writer, for a single training run and for a study alike.

A report is a title and a list of :class:`Section`. A section's :class:`Lead` (the figure that
answers the report's question and a few plain sentences under it) opens the page, above everything
else, so that the first screen holds the answer. Each section carries findings (sentences with
numbers) and notes (caveats: missing cells, too few seeds), which the page gathers into a summary,
then its blocks in order: :class:`Text`, :class:`Table`, :class:`Figure`, :class:`Code` (folded).
The page is self-contained: inline CSS, figures embedded as base64 PNG, no script, no external
resource, so it opens from disk and can be mailed as one file.

A run report, for example::

    write_report("runs/x/report.html", "resnet20 <- resnet56, kd", [
        Section("Configuration", blocks=[Code(config_yaml, caption="config.yaml")]),
        Section("Training", blocks=[Figure(curves_fig, caption="loss and accuracy per epoch")]),
        Section("Evaluation", findings=["accuracy 0.912 ..."], blocks=[key_value_table(metrics)]),
    ])

A study report uses the sections returned by the analyses (``functional_transfer``,
``krs_validation``), whose tables and figures can also be read back by id for tests and CSV export.
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata, resources
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure as MplFigure

from kdscope.analysis.stats import Estimate

# Inlined into every report, so a report is one self-contained file.
_CSS = resources.files(__package__).joinpath("report.css").read_text()

_DPI = 110
# The least width (inches) of a figure that opens a report (a section's lead): the forest's.
LEAD_WIDTH = 9.6


@dataclass
class Text:
    """Prose; blank lines separate paragraphs. Plain text, escaped on output."""

    text: str


@dataclass
class Code:
    """Preformatted text such as a resolved YAML config, folded (``<details>``) under its caption
    unless ``open``."""

    text: str
    caption: str = ""
    id: str | None = None
    open: bool = False


@dataclass
class Table:
    """Columns and rows of cells: str, int, float (4 significant digits), bool, None (shown as a
    dash) or :class:`~kdscope.analysis.stats.Estimate` (value with interval). ``group``: the number
    of leading columns whose runs of equal values are shown once (e.g. a condition over its
    measures)."""

    columns: list[str]
    rows: list[list[Any]]
    caption: str = ""
    id: str | None = None
    group: int = 0

    def __post_init__(self) -> None:
        for i, row in enumerate(self.rows):
            if len(row) != len(self.columns):
                raise ValueError(
                    f"table {self.id or self.caption!r}: row {i} has {len(row)} cells, "
                    f"expected {len(self.columns)} ({self.columns})"
                )

    @classmethod
    def from_records(
        cls,
        records: Sequence[Mapping[str, Any]],
        caption: str = "",
        id: str | None = None,
        group: int = 0,
    ) -> Table:
        """A table whose columns are the keys of the first record (all records share them)."""
        columns = list(records[0]) if records else []
        return cls(columns, [[r[c] for c in columns] for r in records], caption, id, group)

    def records(self) -> list[dict[str, Any]]:
        """The rows as dicts keyed by column name."""
        return [dict(zip(self.columns, row, strict=True)) for row in self.rows]

    def column(self, name: str) -> list[Any]:
        """One column's cells."""
        if name not in self.columns:
            raise KeyError(f"no column {name!r}; columns: {self.columns}")
        i = self.columns.index(name)
        return [row[i] for row in self.rows]


@dataclass
class Figure:
    """An image: a matplotlib Figure (rendered to PNG when written), PNG bytes or a PNG file."""

    image: MplFigure | bytes | str | Path
    caption: str = ""
    id: str | None = None
    alt: str = ""

    def png(self) -> bytes:
        if isinstance(self.image, MplFigure):
            buf = io.BytesIO()
            self.image.savefig(buf, format="png", dpi=_DPI, bbox_inches="tight")
            return buf.getvalue()
        if isinstance(self.image, bytes):
            return self.image
        return Path(self.image).read_bytes()


Block = Text | Code | Table | Figure


@dataclass
class Lead:
    """What the first screen shows: the figure that answers the question (e.g.
    :func:`~kdscope.analysis.forest.forest_figure`) and a few short plain sentences under it. A
    matplotlib figure narrower than :data:`LEAD_WIDTH` is widened to it, so every report opens on
    a figure of one size."""

    figure: Figure
    sentences: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        image = self.figure.image
        if isinstance(image, MplFigure):
            width, height = image.get_size_inches()
            image.set_size_inches(max(width, LEAD_WIDTH), height)


@dataclass
class Section:
    """A titled part of a report: its lead opens the page, findings and notes go to the summary,
    blocks follow in order.

    A finding's text up to its first ': ' is its subject, set in bold in the summary.
    """

    title: str
    findings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    blocks: list[Block] = field(default_factory=list)
    id: str | None = None
    lead: Lead | None = None

    def table(self, id: str) -> Table:
        """The table with this id (KeyError naming the ids present otherwise)."""
        return self._find(Table, id)

    def figure(self, id: str) -> Figure:
        """The figure with this id (KeyError naming the ids present otherwise)."""
        return self._find(Figure, id)

    def _find(self, kind: type, id: str):
        found = [b for b in self.blocks if isinstance(b, kind)]
        for block in found:
            if block.id == id:
                return block
        raise KeyError(f"no {kind.__name__.lower()} {id!r}; present: {[b.id for b in found]}")


def key_value_table(values: Mapping[str, Any], caption: str = "", id: str | None = None) -> Table:
    """A two-column name/value table, e.g. a run's evaluation metrics."""
    return Table(["name", "value"], [[k, v] for k, v in values.items()], caption, id)


def relative_paths(text: str, root: str | Path) -> str:
    """``text`` with the absolute paths of ``root`` (a study or run directory) and of its parent
    written relative to ``root``, so that a report names no absolute path of the machine that
    wrote it: ``/x/runs/kd/best.pt`` -> ``best.pt``, ``/x/runs/teacher`` -> ``../teacher``."""
    here = Path(root).resolve()
    for base, rel in ((here, ""), (here.parent, "../")):
        if base.parent == base:  # the filesystem root: every path would match
            break
        text = text.replace(f"{base}/", rel).replace(str(base), rel.rstrip("/") or ".")
    return text


def write_report(
    path: str | Path, title: str, sections: Sequence[Section], subtitle: str = ""
) -> Path:
    """Write the self-contained HTML report to ``path`` (atomically) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(render_report(title, sections, subtitle), encoding="utf-8")
    os.replace(tmp, path)
    return path


def render_report(title: str, sections: Sequence[Section], subtitle: str = "") -> str:
    """The report as one HTML string (see :func:`write_report`)."""
    ids = _Ids()
    ids.take("title")
    ids.take("summary")
    section_ids = [ids.take(s.id or "sec-" + _slug(s.title)) for s in sections]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body><main>",
        f'<header><h1 id="title">{_e(title)}</h1>',
        f'<p class="subtitle">{_e(subtitle)}</p>' if subtitle else "",
        "</header>",
        _leads(sections, ids),
        _contents(sections, section_ids),
        _summary(sections, section_ids),
    ]
    for section, sid in zip(sections, section_ids, strict=True):
        parts.append(f'<section id="{sid}"><h2>{_e(section.title)}</h2>')
        parts.extend(_block(b, ids) for b in section.blocks)
        parts.append("</section>")
    parts.append(f"<footer>Written by kdscope {_version()}.</footer></main></body></html>")
    return "\n".join(p for p in parts if p)


def _leads(sections: Sequence[Section], ids: _Ids) -> str:
    """Each section's lead, in order; titled by its section when there are several."""
    leads = [s for s in sections if s.lead is not None]
    parts = []
    for section in leads:
        title = f"<h2>{_e(section.title)}</h2>" if len(leads) > 1 else ""
        sentences = "".join(f"<p>{_e(t)}</p>" for t in section.lead.sentences)
        parts.append(
            f'<section class="lead">{title}{_block(section.lead.figure, ids)}'
            f'<div class="answer">{sentences}</div></section>'
        )
    return "".join(parts)


def _contents(sections: Sequence[Section], section_ids: list[str]) -> str:
    if len(sections) < 2:
        return ""
    items = "".join(
        f'<li><a href="#{sid}">{_e(s.title)}</a></li>'
        for s, sid in zip(sections, section_ids, strict=True)
    )
    return f'<nav><ol><li><a href="#summary">Summary</a></li>{items}</ol></nav>'


def _summary(sections: Sequence[Section], section_ids: list[str]) -> str:
    body = []
    for section, sid in zip(sections, section_ids, strict=True):
        if not (section.findings or section.notes):
            continue
        body.append(f'<h3><a href="#{sid}">{_e(section.title)}</a></h3>')
        if section.findings:
            body.append(
                "<ul>" + "".join(f"<li>{_finding(f)}</li>" for f in section.findings) + "</ul>"
            )
        if section.notes:
            notes = "".join(f"<li>{_e(n)}</li>" for n in section.notes)
            body.append(f'<ul class="notes">{notes}</ul>')
    if not body:
        body.append("<p>No findings were recorded.</p>")
    return f'<section id="summary" class="summary"><h2>Summary</h2>{"".join(body)}</section>'


def _finding(text: str) -> str:
    subject, sep, rest = text.partition(": ")
    return f"<strong>{_e(subject)}:</strong> {_e(rest)}" if sep else _e(text)


def _block(block: Block, ids: _Ids) -> str:
    if isinstance(block, Text):
        paragraphs = [p.strip() for p in re.split(r"\n\s*\n", block.text) if p.strip()]
        return "".join(f"<p>{_e(p)}</p>" for p in paragraphs)
    if isinstance(block, Code):
        bid = ids.take(block.id or "code-" + _slug(block.caption or "block"))
        summary = _e(block.caption or "show")
        opened = " open" if block.open else ""
        return (
            f'<details id="{bid}" class="code"{opened}><summary>{summary}</summary>'
            f"<pre>{_e(block.text)}</pre></details>"
        )
    if isinstance(block, Table):
        return _table(block, ids.take(block.id or "table-" + _slug(block.caption or "table")))
    if isinstance(block, Figure):
        bid = ids.take(block.id or "figure-" + _slug(block.caption or "figure"))
        data = base64.b64encode(block.png()).decode("ascii")
        alt = _e(block.alt or block.caption or bid)
        caption = f"<figcaption>{_e(block.caption)}</figcaption>" if block.caption else ""
        return (
            f'<figure id="{bid}" class="plot"><img src="data:image/png;base64,{data}" '
            f'alt="{alt}">{caption}</figure>'
        )
    raise TypeError(
        f"unknown report block {type(block).__name__}; accepted: Text, Code, Table, Figure"
    )


def _table(table: Table, tid: str) -> str:
    head = "".join(f'<th scope="col">{_e(c)}</th>' for c in table.columns)
    spans = _spans(table)
    rows = []
    for i, row in enumerate(table.rows):
        cells = []
        for j, cell in enumerate(row):
            if j < table.group and spans[j][i] == 0:
                continue
            text, cls = _cell(cell)
            classes, span = [cls] if cls else [], ""
            if j < table.group:
                classes.append("group")
                span = f' rowspan="{spans[j][i]}"' if spans[j][i] > 1 else ""
            attrs = (f' class="{" ".join(classes)}"' if classes else "") + span
            cells.append(f"<td{attrs}>{_e(text)}</td>")
        start = any(spans[j][i] > 0 for j in range(table.group))
        rows.append(
            f'<tr class="start">{"".join(cells)}</tr>' if start else f"<tr>{''.join(cells)}</tr>"
        )
    caption = f"<caption>{_e(table.caption)}</caption>" if table.caption else ""
    return (
        f'<div class="table-wrap"><table id="{tid}">{caption}<thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )


def _spans(table: Table) -> list[list[int]]:
    """Per grouped column, the rowspan of each row: the run length where a run of equal values
    (within the enclosing column's run) starts, 0 inside a run."""
    spans: list[list[int]] = []
    for j in range(table.group):
        col = [0] * len(table.rows)
        start = 0
        for i in range(1, len(table.rows) + 1):
            if (
                i == len(table.rows)
                or table.rows[i][j] != table.rows[start][j]
                or any(spans[k][i] > 0 for k in range(j))
            ):
                col[start] = i - start
                start = i
        spans.append(col)
    return spans


def _cell(value: Any) -> tuple[str, str]:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "\u2013", "na"
    if isinstance(value, bool):
        return ("yes" if value else "no"), ""
    if isinstance(value, int):
        return str(value), "num"
    if isinstance(value, float):
        return f"{value:.4g}", "num"
    if isinstance(value, Estimate):
        return str(value), "num"
    text = str(value)
    return text, "long" if len(text) > 24 else ""


class _Ids:
    """Hands out unique element ids, suffixing repeats with -2, -3, ..."""

    def __init__(self) -> None:
        self._used: set[str] = set()

    def take(self, wanted: str) -> str:
        base = _slug(wanted) or "item"
        candidate, k = base, 2
        while candidate in self._used:
            candidate, k = f"{base}-{k}", k + 1
        self._used.add(candidate)
        return candidate


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:60]


def _e(text: str) -> str:
    return html.escape(text, quote=True)


def _version() -> str:
    try:
        return metadata.version("kdscope")
    except metadata.PackageNotFoundError:
        return "(unreleased)"
