"""The tidy table of runs every analysis reads: one row per finished run, a plain ``dict``.

Identity columns (strings unless stated):

- ``study``: the study config's name; runs are only ever paired within one study.
- ``dataset``, ``teacher``, ``student``: registry names (``student`` is the architecture).
- ``method``: distillation method name; ``"none"`` for students trained on labels alone.
- ``arm``: ``kd`` (the method under test), ``control`` (independent student on labels alone; the
  base student of the KRS study), ``random_control`` (KD loss with the teacher's distribution
  replaced by noise) or ``teacher_replica`` (a teacher retrained with another seed, compared to the
  teacher; its ``student`` is the teacher architecture).
- ``seed`` (int): pairs arms; the control of seed s is compared with the KD student of seed s.
- ``alpha``, ``temperature`` (float or None): the KD loss weight and temperature (None for arms
  without a teacher signal).
- ``student_params`` (int, optional): the student's parameter count, orders student-size sweeps.
- ``task`` (optional, ``classification`` when absent): ``classification``, ``segmentation`` or
  ``detection``; for the dense tasks ``accuracy`` holds test mean IoU or mAP@[.5:.95].

Measures (float; None or NaN when not measured), all on the test set against the run's teacher
(shared/specs/metrics.md sections 2-3): ``accuracy``, ``ece``; ``agree_*`` top-1 agreement,
``kl_*`` KL(p_T || p_S), ``js_*`` JS divergence, ``l2_*`` activation distance ||p_T - p_S||_2,
``cos_*`` cosine similarity, each with suffix ``all`` (every example), ``C`` (teacher correct) or
``I`` (teacher incorrect); ``same_wrong_I`` (student makes the teacher's exact wrong prediction, on
I); ``krs``, ``fss``, ``aoa`` (Knowledge Retention Score and its components, in [0, 1]). For
language models every predicted position is an example (``accuracy`` is next-token accuracy) and
rows add ``perplexity``, ``teacher_perplexity`` and ``topk_overlap``.

Extra columns are carried along and ignored.
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

Row = Mapping[str, Any]

ARMS = ("control", "kd", "random_control", "teacher_replica")
ID_COLUMNS = ("study", "dataset", "teacher", "student", "method", "arm", "seed")

# name -> (description, True when a larger value means the student is closer to the teacher,
# False when a smaller one does, None when the measure is not about the teacher)
MEASURES: dict[str, tuple[str, bool | None]] = {
    "accuracy": ("student test accuracy", None),
    "ece": ("expected calibration error (15 bins)", None),
    "same_wrong_I": ("makes the teacher's exact wrong prediction, on I", True),
    "krs": ("Knowledge Retention Score", True),
    "fss": ("KRS feature similarity (CKA)", True),
    "aoa": ("KRS output agreement", True),
    "perplexity": ("student perplexity (language models)", None),
    "topk_overlap": ("top-k overlap with the teacher (language models)", True),
}
for _split, _where in (("all", "all examples"), ("C", "teacher correct"), ("I", "teacher wrong")):
    MEASURES[f"agree_{_split}"] = (f"top-1 agreement with teacher, {_where}", True)
    MEASURES[f"kl_{_split}"] = (f"KL(teacher || student), {_where}", False)
    MEASURES[f"js_{_split}"] = (f"JS divergence, {_where}", False)
    MEASURES[f"l2_{_split}"] = (f"activation distance, {_where}", False)
    MEASURES[f"cos_{_split}"] = (f"cosine similarity of outputs, {_where}", True)


def check_rows(rows: Sequence[Row], required: Iterable[str]) -> None:
    """Raise ValueError naming the first row that lacks a required column or has an unknown arm."""
    required = tuple(required)
    for i, row in enumerate(rows):
        missing = [c for c in required if c not in row]
        if missing:
            raise ValueError(f"row {i} lacks column(s) {missing}; required: {list(required)}")
        if "arm" in row and row["arm"] not in ARMS:
            raise ValueError(f"row {i} has arm {row['arm']!r}; accepted: {list(ARMS)}")


def number(row: Row, column: str) -> float | None:
    """The row's value as float, or None when absent, None or NaN."""
    value = row.get(column)
    if value is None or value == "":
        return None
    value = float(value)
    return None if math.isnan(value) else value


def present_measures(rows: Sequence[Row], candidates: Iterable[str]) -> list[str]:
    """The candidate columns that hold at least one number in ``rows``, in candidate order."""
    return [c for c in candidates if any(number(r, c) is not None for r in rows)]


def group(rows: Iterable[Row], keys: Sequence[str]) -> dict[tuple, list[Row]]:
    """Rows grouped by the tuple of their ``keys`` values, groups in order of first appearance."""
    out: dict[tuple, list[Row]] = {}
    for row in rows:
        out.setdefault(tuple(row.get(k) for k in keys), []).append(row)
    return out


def by_seed(rows: Iterable[Row], column: str) -> dict[int, float]:
    """Seed -> value of ``column`` for the rows of one cell (rows without a value are skipped).

    Two rows with the same seed in one cell mean the grid is ill-formed: ValueError names them.
    """
    out: dict[int, float] = {}
    for row in rows:
        value = number(row, column)
        if value is None:
            continue
        seed = int(row["seed"])
        if seed in out:
            cell = {k: row.get(k) for k in ID_COLUMNS}
            raise ValueError(f"two runs with seed {seed} in one cell: {cell}")
        out[seed] = value
    return out


def paired(
    a: Mapping[int, float], b: Mapping[int, float]
) -> tuple[list[int], list[float], list[float]]:
    """Seeds present in both seed -> value maps, and the two aligned value lists."""
    seeds = sorted(set(a) & set(b))
    return seeds, [a[s] for s in seeds], [b[s] for s in seeds]


def natural_key(value: Any) -> tuple:
    """Sort key that orders 'resnet8' before 'resnet14' and numbers numerically."""
    if isinstance(value, (int, float)):
        return (0, float(value))
    parts = re.split(r"(\d+(?:\.\d+)?)", str(value))
    return (1, tuple((0, float(p)) if i % 2 else (1, p) for i, p in enumerate(parts)))


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """Load a tidy table from ``.jsonl`` (one JSON object a line) or ``.csv`` (header row; numeric
    strings become numbers, empty cells None)."""
    path = Path(path)
    if path.suffix == ".jsonl":
        with path.open() as f:
            return [json.loads(line) for line in f if line.strip()]
    if path.suffix == ".csv":
        with path.open(newline="") as f:
            return [{k: _parse(v) for k, v in row.items()} for row in csv.DictReader(f)]
    raise ValueError(f"unsupported table file {path.name!r}; accepted suffixes: .jsonl, .csv")


def write_rows(path: str | Path, rows: Sequence[Row]) -> None:
    """Write a tidy table as ``.jsonl`` or ``.csv`` (columns: the union, in order of appearance)."""
    path = Path(path)
    if path.suffix == ".jsonl":
        with path.open("w") as f:
            f.writelines(json.dumps(dict(r)) + "\n" for r in rows)
        return
    if path.suffix == ".csv":
        columns = list(dict.fromkeys(k for r in rows for k in r))
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, columns)
            writer.writeheader()
            writer.writerows(rows)
        return
    raise ValueError(f"unsupported table file {path.name!r}; accepted suffixes: .jsonl, .csv")


def _parse(text: str | None) -> Any:
    if text is None or text == "":
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text
