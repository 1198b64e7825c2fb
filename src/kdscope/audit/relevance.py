"""FSS and RS of an audit's students (Adhane et al., UniCAM, WACV 2025): each distilled and
random-control student against the independent control of its seed (the base model, trained
without a teacher), on ROAD-perturbed test inputs (:func:`kdscope.explain.relevance.
perturbed_relevance`), averaged over the stage layers; then paired tests across seeds.

Columns: ``fss_gradcam`` / ``fss_unicam`` (dCor of student and base features on inputs kept by
their Grad-CAM / UniCAM maps), ``rs_student`` / ``rs_base`` (dCor of each model's Grad-CAM-kept
features with the label embeddings), ``rs_distilled`` / ``rs_residual`` (UniCAM). A control row
carries its own RS as ``rs_student`` (measured as the base of its seed's students), so that RS is
compared across arms like any measure.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader

from kdscope.analysis import _words as w
from kdscope.analysis.report import Section, Table
from kdscope.analysis.stats import compare_paired, holm, mean_ci
from kdscope.analysis.tidy import Row, by_seed, paired
from kdscope.config import DataConfig
from kdscope.data import collate, load_data
from kdscope.explain.relevance import RELEVANCE_COLUMNS, perturbed_relevance, relevance_rows
from kdscope.metrics.relevance import label_embeddings
from kdscope.study.tasks import evaluation_split
from kdscope.train import load_model

# (comparison, measures): FSS is a distance from the control, so only the two distilled arms
# compare on it; RS compares every arm.
TESTS = (
    ("kd vs random_control", ("fss_gradcam", "fss_unicam", "rs_student")),
    ("kd vs control", ("rs_student",)),
)
ARMS = ("control", "kd", "random_control")


def relevance_task(
    data: dict[str, Any],
    student_dir: str,
    base_dir: str,
    evaluation: dict[str, Any],
    max_batches: int,
    which: str = "best",
) -> dict[str, Any]:
    """Perturbed FSS/RS of one student against its base on the (subset of the) test split: the
    layer means of :data:`RELEVANCE_COLUMNS` and the per-layer rows."""
    bundle = load_data(DataConfig.model_validate(data))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    student = load_model(student_dir, which).to(device)
    base = load_model(base_dir, which).to(device)
    loader = DataLoader(
        evaluation_split(bundle, evaluation["test_size"]),
        batch_size=min(evaluation["batch_size"], 64),
        shuffle=True,
        generator=torch.Generator().manual_seed(0),
        collate_fn=collate,
    )
    result = perturbed_relevance(
        student,
        base,
        loader,
        label_embeddings(bundle.class_names).float(),
        mean=bundle.mean,
        std=bundle.std,
        max_batches=max_batches,
    ).to_dict()
    layers = relevance_rows(result)
    means = {}
    for column in RELEVANCE_COLUMNS:
        values = [r[column] for r in layers if r[column] is not None]
        means[column] = sum(values) / len(values) if values else None
    return means | {"relevance_layers": layers, "relevance_batches": result["batches_used"]}


def relevance_section(
    rows: Sequence[Row], *, level: float = 0.95, alpha: float = 0.05, min_seeds: int = 3
) -> Section:
    """Per-arm means of FSS/RS and the paired tests of :data:`TESTS` (Holm within each
    comparison), per method."""
    section = Section("Features: FSS and RS (UniCAM)", id="relevance")
    measured = [r for r in rows if r.get("rs_student") is not None]
    if not measured:
        section.notes.append("FSS/RS were not measured.")
        return section
    arms = {a: [r for r in measured if r["arm"] == a] for a in ARMS}
    methods = list(dict.fromkeys(r["method"] for r in arms["kd"]))
    table, tests = [], []
    for method in methods:
        cells = {
            "control": arms["control"],
            "kd": [r for r in arms["kd"] if r["method"] == method],
            "random_control": [r for r in arms["random_control"] if r["method"] == method],
        }
        for column in RELEVANCE_COLUMNS:
            per_arm = [list(by_seed(cells[a], column).values()) for a in ARMS]
            if any(per_arm):
                table.append([method, column, *(mean_ci(v, level) if v else None for v in per_arm)])
        for comparison, measures in TESTS:
            other = comparison.split(" vs ")[1]
            family = []
            for m in measures:
                _, a, b = paired(by_seed(cells["kd"], m), by_seed(cells[other], m))
                if a:
                    family.append((m, compare_paired(a, b, level)))
            adjusted = holm([c.t_test.p if c.n >= min_seeds else math.nan for _, c in family])
            for (m, c), p in zip(family, adjusted, strict=True):
                tests.append({
                    "method": method, "comparison": comparison, "measure": m, "n": c.n,
                    "mean kd": c.mean_a, "mean other": c.mean_b,
                    f"\u0394 kd \u2212 other [{level:.0%} CI]": c.diff, "p (t)": c.t_test.p,
                    "p Holm (t)": float(p), "p (Wilcoxon)": c.wilcoxon.p, "d_z": c.cohens_dz,
                    "verdict": w.paired_verdict(c, float(p), alpha, min_seeds, "kd"),
                })  # fmt: skip
    section.blocks.append(
        Table(
            ["method", "measure", *ARMS],
            table,
            f"FSS/RS per arm against the control of the same seed: mean [{level:.0%} t-interval] "
            "over seeds, layer means",
            "relevance-arms",
            group=1,
        )
    )
    if tests:
        section.blocks.append(
            Table.from_records(
                tests,
                "FSS/RS tests, paired by seed; Holm within each comparison",
                "relevance-tests",
            )
        )
        diff = next(k for k in tests[0] if k.startswith("\u0394"))
        for key in dict.fromkeys((t["method"], t["comparison"]) for t in tests):
            family = [t for t in tests if (t["method"], t["comparison"]) == key]
            parts = "; ".join(
                f"{t['measure']} \u0394 = {w.ci(t[diff])}, {t['verdict']}" for t in family
            )
            section.findings.append(f"{key[0]}, {key[1]} (n = {family[0]['n']} seeds): {parts}.")
    return section
