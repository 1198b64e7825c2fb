"""From a tidy table of runs to findings, figures and one self-contained HTML report.

- :mod:`~kdscope.analysis.tidy`: the row schema every analysis reads, and JSONL/CSV I/O.
- :mod:`~kdscope.analysis.stats`: paired tests, Holm, effect sizes, intervals, correlations.
- :func:`functional_transfer`, :func:`krs_validation`: the two study analyses; each returns a
  report :class:`Section` whose tables and figures can also be read back by id.
- :func:`write_report`: the one HTML report writer, for single runs and studies alike.
"""

from kdscope.analysis.functional import functional_transfer
from kdscope.analysis.krs_validation import krs_validation
from kdscope.analysis.report import (
    Code,
    Figure,
    Section,
    Table,
    Text,
    key_value_table,
    render_report,
    write_report,
)
from kdscope.analysis.tidy import read_rows, write_rows

__all__ = [
    "Code",
    "Figure",
    "Section",
    "Table",
    "Text",
    "functional_transfer",
    "key_value_table",
    "krs_validation",
    "read_rows",
    "render_report",
    "write_report",
    "write_rows",
]
