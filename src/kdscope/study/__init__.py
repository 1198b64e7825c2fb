"""Studies: grids of ordinary runs (teachers, controls, distilled students) with seeds, their tidy
table, and the report of the analyses they name.

- :mod:`~kdscope.study.config`: :class:`StudyConfig` and :func:`load_study`.
- :mod:`~kdscope.study.plan`: :func:`expand` a config into runs and rows.
- :mod:`~kdscope.study.runner`: :func:`run_study` (resumable; failures recorded).
- :mod:`~kdscope.study.executors`: where tasks run (this process, a process pool, Ray).
- :mod:`~kdscope.study.report`: :func:`study_report` writes ``report.html``.
"""

from kdscope.study.config import StudyConfig, load_study
from kdscope.study.executors import make_executor
from kdscope.study.plan import Plan, expand
from kdscope.study.report import study_report
from kdscope.study.runner import StudyResult, run_status, run_study

__all__ = [
    "Plan",
    "StudyConfig",
    "StudyResult",
    "expand",
    "load_study",
    "make_executor",
    "run_status",
    "run_study",
    "study_report",
]
