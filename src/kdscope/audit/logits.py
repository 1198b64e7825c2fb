"""The output-side audit of saved predictions (``kdscope audit --from-logits``), for models trained
in any framework: agreement with the teacher on all examples and split by teacher-correct (C) /
teacher-incorrect (I), KL and JS, AOA (Alba & Villaverde 2025) with a C shared by every compared
model, BCa bootstrap intervals across examples and, given one control file per student seed, the
paired tests and asymmetric payoff of the functional-transfer analysis (Mason-Williams et al.,
arXiv 2510.12615). Saved features add debiased linear CKA per layer, FSS and KRS.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from kdscope.analysis.functional import functional_transfer
from kdscope.analysis.krs_validation import krs_validation
from kdscope.analysis.report import Section, Table
from kdscope.analysis.stats import bootstrap_ci
from kdscope.audit.files import check_examples, read_features, read_labels, read_logits
from kdscope.audit.output import AuditResult, relative, write_audit
from kdscope.audit.summary import sentences
from kdscope.metrics import agreement, agreement_per_example, knowledge_retention_score
from kdscope.metrics.retention import aoa_terms
from kdscope.study.tasks import agreement_columns

# measure -> (per-example term, split) for the bootstrap table.
BOOTSTRAPPED = {
    "accuracy": ("student_correct", "all"),
    **{
        f"{prefix}_{split}": (term, split)
        for prefix, term in (("agree", "agree"), ("kl", "kl"), ("js", "js"))
        for split in ("all", "C", "I")
    },
    "aoa": ("aoa", "all"),
}
SHOWN = ("accuracy", "agree_all", "agree_C", "agree_I", "kl_all", "js_all", "aoa", "fss", "krs")
# Resamples of the bootstrap held in memory at once: bounds memory to ~ BATCH x n values.
BATCH = 200


def _names(paths: Sequence[Path]) -> list[str]:
    """File names, or the paths as given where two files share a name."""
    names = [p.name for p in paths]
    return [str(p) if names.count(p.name) > 1 else p.name for p in paths]


def audit_logits(
    teacher: str | Path,
    students: Sequence[str | Path],
    labels: str | Path,
    out: str | Path,
    *,
    controls: Sequence[str | Path] = (),
    features: Sequence[str | Path] = (),
    level: float = 0.95,
    n_resamples: int = 1999,
    seed: int = 0,
) -> AuditResult:
    """Audit saved logits; writes ``out/report.html`` and ``out/audit.json``.

    Args:
        teacher, students: logits files (examples, classes); several students are several seeds.
        labels: the examples' class labels.
        controls: logits of independent students (labels alone), one per student seed, paired
            with the students in order.
        features: the teacher's features file, then one per student (and optionally one per
            control after them), for CKA, FSS and KRS.
        n_resamples, seed: of the bootstrap intervals across examples.
    """
    out = Path(out)
    t_path, s_paths, c_paths = (
        Path(teacher),
        [Path(s) for s in students],
        [Path(c) for c in controls],
    )
    if not s_paths:
        raise ValueError("--from-logits needs the teacher's file and at least one student's")
    if c_paths and len(c_paths) != len(s_paths):
        raise ValueError(
            f"{len(c_paths)} control file(s) for {len(s_paths)} student file(s): give one control "
            "per student seed (they are paired in order)"
        )
    t_logits = read_logits(t_path)
    classes = t_logits.shape[1]
    models: list[tuple[str, int, Path]] = [("kd", i, p) for i, p in enumerate(s_paths)]
    models += [("control", i, p) for i, p in enumerate(c_paths)]
    names = _names([t_path, Path(labels), *(p for _, _, p in models)])
    t_name, model_names = names[0], names[2:]
    logits = {name: read_logits(p) for name, (_, _, p) in zip(model_names, models, strict=True)}
    for name, x in logits.items():
        if x.shape[1] != classes:
            raise ValueError(f"{name} has {x.shape[1]} classes but {t_name} has {classes}")
    y = read_labels(labels, classes)
    check_examples(
        {t_name: len(t_logits), names[1]: len(y)} | {k: len(v) for k, v in logits.items()}
    )
    feats = _features(features, t_name, model_names, len(s_paths), len(t_logits))
    terms = {k: agreement_per_example(t_logits, v, y) for k, v in logits.items()}
    # One C for every compared model, as the Evaluator shares one across student and base.
    c = max(float(t["kl"].max()) for t in terms.values())
    rows = []
    for (arm, i, _), name in zip(models, model_names, strict=True):
        row: dict[str, Any] = {
            "study": "audit", "dataset": "saved outputs", "teacher": t_name, "student": "student",
            "method": "kd" if arm == "kd" else "none", "arm": arm, "seed": i, "alpha": None,
            "temperature": None, "file": name,
        }  # fmt: skip
        row |= agreement_columns(agreement(t_logits, logits[name], y))
        terms[name]["aoa"] = aoa_terms(terms[name]["kl"], c)
        row |= {"aoa": float(terms[name]["aoa"].mean()), "c": c, "n_test": len(y)}
        if name in feats:
            krs = knowledge_retention_score(feats[t_name], feats[name], t_logits, logits[name], c=c)
            row |= {"krs": krs.krs, "fss": krs.fss} | {
                f"cka {k}": v for k, v in krs.per_layer.items()
            }
        rows.append(row)
    sections = _sections(rows, terms, y, t_logits, level, n_resamples, seed)
    summary = sentences(next((s for s in sections if s.id == "functional-transfer"), None), rows)
    sections[0].findings[:0] = summary
    meta = {
        "kind": "from-logits",
        "teacher": relative(t_path, out),
        "labels": relative(labels, out),
        "files": {
            name: relative(p, out) for (_, _, p), name in zip(models, model_names, strict=True)
        },
        "features": [relative(p, out) for p in features],
        "bootstrap": {"method": "BCa", "n_resamples": n_resamples, "seed": seed, "level": level},
        "c": c,
    }
    students_json = {r["file"]: r for r in rows}
    subtitle = (
        f"Saved outputs: teacher {t_name}, {len(s_paths)} student file(s), {len(c_paths)} "
        f"control file(s), {len(y)} examples"
    )
    return write_audit(
        out, "Audit of saved outputs", sections, students_json, meta, summary, subtitle
    )


def _features(paths, t_name, model_names, students, n) -> dict[str, dict[str, Tensor]]:
    """Features by model name: the teacher's, then the students' (and controls') in order."""
    if not paths:
        return {}
    paths = [Path(p) for p in paths]
    owners = [t_name, *model_names]
    if len(paths) not in (1 + students, len(owners)):
        raise ValueError(
            f"--from-features takes the teacher's file and one per student (then optionally one "
            f"per control): {1 + students} or {len(owners)} file(s), got {len(paths)}"
        )
    out = {owner: read_features(p) for owner, p in zip(owners, paths, strict=False)}
    check_examples(
        {f"features of {k}": len(next(iter(v.values()))) for k, v in out.items()}
        | {"the logits": n}
    )
    return out


def _paired_examples(rows, terms, split, level, n_resamples, seed) -> Table | None:
    """Each student minus the control of its seed, example by example, on agreement, KL and JS
    of C and I: a bootstrap interval across the examples of one pair of files (it holds no
    variation across seeds, which the paired tests over seeds measure)."""
    controls = {r["seed"]: r["file"] for r in rows if r["arm"] == "control"}
    records = []
    for measure, (term, where) in BOOTSTRAPPED.items():
        if where == "all" or term == "student_correct":
            continue
        record: dict[str, Any] = {"measure": measure, "n": int(split[where].sum())}
        for r in rows:
            if r["arm"] != "kd" or r["seed"] not in controls:
                continue
            d = (terms[r["file"]][term] - terms[controls[r["seed"]]][term]).numpy()[split[where]]
            record[f"{r['file']} \u2212 {controls[r['seed']]}"] = (
                bootstrap_ci(d, level=level, n_resamples=n_resamples, seed=seed, batch=BATCH)
                if len(d)
                else None
            )
        records.append(record)
    if not records or len(records[0]) == 2:
        return None
    return Table.from_records(
        records,
        f"Student minus the control of its seed, paired by example: mean difference with a "
        f"{level:.0%} BCa bootstrap interval across the n examples (one pair of files each; the "
        "tests over seeds are in Functional transfer)",
        "audit-vs-control",
    )


def _sections(rows, terms, y, t_logits, level, n_resamples, seed) -> list[Section]:
    t_correct = terms[rows[0]["file"]]["teacher_correct"].bool().numpy()
    split = {"all": np.ones_like(t_correct), "C": t_correct, "I": ~t_correct}
    audit = Section("Audit of saved outputs", id="audit")
    audit.findings.append(
        f"Teacher: right on {int(t_correct.sum())} of {len(y)} examples (C), wrong on "
        f"{int((~t_correct).sum())} (I)."
    )
    shown = [m for m in SHOWN if any(m in r for r in rows)]
    audit.blocks.append(
        Table(
            ["file", "arm", "seed", *shown],
            [[r["file"], r["arm"], r["seed"], *(r.get(m) for m in shown)] for r in rows],
            "Per file: the main measures against the teacher (every column is in audit.json)",
            "audit-students",
        )
    )
    records = []
    for measure, (term, where) in BOOTSTRAPPED.items():
        record: dict[str, Any] = {"measure": measure, "n": int(split[where].sum())}
        for r in rows:
            x = terms[r["file"]][term].numpy()[split[where]]
            record[r["file"]] = (
                bootstrap_ci(x, level=level, n_resamples=n_resamples, seed=seed, batch=BATCH)
                if len(x)
                else None
            )
        records.append(record)
    audit.blocks.append(
        Table.from_records(
            records,
            f"Per measure (rows) and file (columns): the mean over the n examples with a "
            f"{level:.0%} BCa bootstrap interval across them ({n_resamples} resamples); C = "
            "teacher correct, I = teacher wrong",
            "audit-bootstrap",
        )
    )
    audit.notes.append(
        f"AOA uses C = {rows[0]['c']:.4g}, the largest per-example KL(teacher || model) of any "
        "file given (no calibration split), shared by every file so that their AOA compare."
    )
    paired = _paired_examples(rows, terms, split, level, n_resamples, seed)
    if paired is not None:
        audit.blocks.append(paired)
    cka = [k for k in dict.fromkeys(k for r in rows for k in r) if k.startswith("cka ")]
    if cka:
        audit.blocks.append(
            Table(
                ["file", *cka],
                [[r["file"], *(r.get(k) for k in cka)] for r in rows if "fss" in r],
                "Debiased linear CKA with the teacher, per layer pair (student<->teacher)",
                "audit-cka",
            )
        )
    sections = [audit]
    if any(r["arm"] == "control" for r in rows):
        sections.append(functional_transfer(rows))
        if sum("krs" in r for r in rows) == len(rows):
            sections.append(krs_validation(rows))
    else:
        audit.notes.append(
            "No control files (--control): the paired tests against an independent student are "
            "not run."
        )
    return sections
