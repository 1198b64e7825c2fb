"""From a tidy table of runs to findings, figures and one self-contained HTML report.

- :mod:`~kdscope.analysis.tidy`: the row schema every analysis reads, and JSONL/CSV I/O.
- :mod:`~kdscope.analysis.stats`: paired tests, Holm, effect sizes, intervals, correlations.
- :func:`functional_transfer`, :func:`krs_validation`: the two study analyses; each returns a
  report :class:`Section` whose tables and figures can also be read back by id.
- :func:`write_report`: the one HTML report writer, for single runs and studies alike; a section's
  :class:`Lead` opens the page, e.g. :func:`forest_figure` of :class:`ForestRow` differences and
  :func:`forest_sentences` under it.
"""

from kdscope.analysis.forest import ForestRow, forest_figure, forest_sentences
from kdscope.analysis.functional import functional_transfer
from kdscope.analysis.krs_validation import krs_validation
from kdscope.analysis.report import (
    Code,
    Figure,
    Lead,
    Section,
    Table,
    Text,
    key_value_table,
    relative_paths,
    render_report,
    write_report,
)
from kdscope.analysis.tidy import read_rows, write_rows

__all__ = [
    "Code",
    "Figure",
    "ForestRow",
    "Lead",
    "Section",
    "Table",
    "Text",
    "forest_figure",
    "forest_sentences",
    "functional_transfer",
    "key_value_table",
    "krs_validation",
    "read_rows",
    "relative_paths",
    "render_report",
    "write_report",
    "write_rows",
]
