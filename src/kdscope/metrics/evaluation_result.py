"""What one evaluation measured (:class:`~kdscope.metrics.evaluator.Evaluator` fills it): the
figures per compared model, their JSON form and the terminal summary the CLI prints."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from kdscope.metrics.agreement import AgreementResult
from kdscope.metrics.relevance import BatchedScore
from kdscope.metrics.retention import KRSResult
from kdscope.metrics.task_agreement import (
    DetectionAgreement,
    SegmentationAgreement,
    dense_table_rows,
)
from kdscope.metrics.tokens import TokenAgreementResult


@dataclass
class EvaluationResult:
    """Everything one evaluation measured; ``to_dict``/``save_json`` give plain JSON.

    ``agreement`` and ``krs`` are keyed by the compared model (``student``, ``base``), ``fss`` by
    student layer (student vs base), ``rs`` by model then layer. ``layers`` are (student, teacher).
    ``agreement`` holds the task's figures (:mod:`~kdscope.metrics.task_agreement`).
    ``tokens``: a language model's token-level figures by compared model (with ``agreement``);
    ``n`` then counts positions.
    """

    n: int
    task: str
    metrics: list[str]
    layers: list[tuple[str, str]]
    calibration: dict
    estimators: dict[str, str]
    agreement: dict[str, AgreementResult | SegmentationAgreement | DetectionAgreement] = field(
        default_factory=dict
    )
    krs: dict[str, KRSResult] = field(default_factory=dict)
    fss: dict[str, BatchedScore] = field(default_factory=dict)
    rs: dict[str, dict[str, BatchedScore]] = field(default_factory=dict)
    tokens: dict[str, TokenAgreementResult] = field(default_factory=dict)
    cka_skipped_examples: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    def save_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2))

    def to_table(self) -> str:
        """A plain-text summary for the terminal (the CLI prints it)."""
        models = list(self.agreement or self.krs)
        rows: list[tuple[str, list[float | None]]] = []
        if self.agreement and self.task in ("segmentation", "detection"):
            rows += dense_table_rows(self.task, [self.agreement[m] for m in models])
        elif self.agreement:
            ag = [self.agreement[m] for m in models]
            rows += [
                ("student accuracy", [a.all.student_accuracy for a in ag]),
                ("teacher accuracy", [a.all.teacher_accuracy for a in ag]),
                ("top-1 agreement", [a.all.top1_agreement for a in ag]),
                ("  teacher correct", [a.teacher_correct.top1_agreement for a in ag]),
                ("  teacher wrong (same error)", [a.same_error for a in ag]),
                ("KL(teacher || model)", [a.all.kl for a in ag]),
                ("JS divergence", [a.all.js for a in ag]),
                ("ECE", [a.all.student_ece for a in ag]),
            ]
        if self.tokens:
            tk = [self.tokens[m] for m in models]
            rows += [
                ("perplexity", [t.student_perplexity for t in tk]),
                ("teacher perplexity", [t.teacher_perplexity for t in tk]),
                (f"top-{tk[0].k} overlap", [t.topk_overlap for t in tk]),
            ]
        if self.krs:
            kr = [self.krs[m] for m in models]
            rows += [("KRS", [k.krs for k in kr]), ("  FSS (CKA)", [k.fss for k in kr])]
            rows += [("  AOA", [k.aoa for k in kr])]
            rows += [(f"  CKA {p}", [k.per_layer[p] for k in kr]) for p in kr[0].per_layer]
        lines = [f"n = {self.n}, task = {self.task}"]
        if self.calibration.get("c") is not None:
            lines.append(f"C = {self.calibration['c']:.4g} ({self.calibration['source']})")
        width = max([len(r[0]) for r in rows] + [10])
        lines.append(" " * width + "".join(f"{m:>12}" for m in models))
        for label, values in rows:
            cells = "".join(f"{'-' if v is None else f'{v:.4f}':>12}" for v in values)
            lines.append(f"{label:<{width}}{cells}")
        lines += [f"FSS student~base {k}: {v.value:.4f}" for k, v in self.fss.items()]
        for model, per_layer in self.rs.items():
            lines += [f"RS {model} {k}: {v.value:.4f}" for k, v in per_layer.items()]
        return "\n".join(lines)
