"""Output agreement between teacher and student: how much of the teacher's function moved.

Per example, with p_T, p_S the softmax outputs at temperature T: top-1 agreement, KL(p_T || p_S), JS
divergence (natural log), activation distance ||p_T - p_S||_2, cosine of p_T and p_S; plus both
accuracies and expected calibration errors (15 equal-width confidence bins, Guo et al. 2017). Every
figure is reported on all examples and on the splits where the teacher is correct / incorrect
(Mason-Williams et al. 2025, "Rethinking Knowledge Distillation"; docs: functional-transfer.md).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import Tensor
from torch.nn import functional as F

SPLITS = ("all", "teacher_correct", "teacher_incorrect")
_SUMS = ("agree", "kl", "js", "activation_distance", "cosine", "teacher_correct", "student_correct")


def _check_outputs(teacher_logits: Tensor, student_logits: Tensor, labels: Tensor | None) -> None:
    if teacher_logits.ndim != 2 or teacher_logits.shape != student_logits.shape:
        raise ValueError(
            "teacher and student logits must both be (n, classes), got "
            f"{tuple(teacher_logits.shape)} and {tuple(student_logits.shape)}"
        )
    for name, t in (("teacher logits", teacher_logits), ("student logits", student_logits)):
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{name} contain NaN or inf values")
    if labels is not None:
        if labels.shape != (teacher_logits.shape[0],):
            raise ValueError(
                f"labels must have shape ({teacher_logits.shape[0]},), got {tuple(labels.shape)}"
            )
        classes = teacher_logits.shape[1]
        if len(labels) and (labels.min() < 0 or labels.max() >= classes):
            raise ValueError(
                f"labels must lie in [0, {classes}), got {labels.min()}..{labels.max()}"
            )


def kl_per_example(
    teacher_logits: Tensor, student_logits: Tensor, temperature: float = 1.0
) -> Tensor:
    """KL(p_T || p_S) per example (float64, natural log)."""
    _check_outputs(teacher_logits, student_logits, None)
    log_t = F.log_softmax(teacher_logits.double() / temperature, dim=1)
    log_s = F.log_softmax(student_logits.double() / temperature, dim=1)
    return (log_t.exp() * (log_t - log_s)).sum(1)


@dataclass
class AgreementFigures:
    """Agreement figures on one split of the examples; values are None on an empty split."""

    n: int
    top1_agreement: float | None
    kl: float | None
    js: float | None
    activation_distance: float | None
    cosine: float | None
    teacher_accuracy: float | None
    student_accuracy: float | None
    teacher_ece: float | None
    student_ece: float | None


@dataclass
class AgreementResult:
    """Figures on all examples and on the teacher-correct (C) / teacher-incorrect (I) splits.

    ``same_error`` is the fraction of I where the student predicts the teacher's exact wrong class;
    by construction it equals ``teacher_incorrect.top1_agreement``; it is kept under this name
    as the share of the teacher's mistakes the student took on (functional-transfer study).
    """

    all: AgreementFigures
    teacher_correct: AgreementFigures
    teacher_incorrect: AgreementFigures
    same_error: float | None
    temperature: float
    n_bins: int

    def to_dict(self) -> dict:
        return asdict(self)


def agreement_per_example(
    teacher_logits: Tensor, student_logits: Tensor, labels: Tensor, temperature: float = 1.0
) -> dict[str, Tensor]:
    """The per-example terms every agreement figure averages (float64, one value per example):
    ``agree`` (same top-1 class), ``kl`` KL(p_T || p_S), ``js``, ``activation_distance``,
    ``cosine``, ``teacher_correct``, ``student_correct`` (0/1) and both models' top-1
    ``*_confidence``; averages of them over a split are the split's figures, so they also give
    bootstrap intervals across examples."""
    teacher_logits, student_logits = teacher_logits.detach(), student_logits.detach()
    labels = labels.detach().to(teacher_logits.device).long()
    _check_outputs(teacher_logits, student_logits, labels)
    log_t = F.log_softmax(teacher_logits.double() / temperature, dim=1)
    log_s = F.log_softmax(student_logits.double() / temperature, dim=1)
    p_t, p_s = log_t.exp(), log_s.exp()
    log_m = torch.logaddexp(log_t, log_s) - math.log(2.0)
    pred_t, pred_s = p_t.argmax(1), p_s.argmax(1)
    return {
        "agree": (pred_t == pred_s).double(),
        "kl": (p_t * (log_t - log_s)).sum(1),
        "js": 0.5 * (p_t * (log_t - log_m)).sum(1) + 0.5 * (p_s * (log_s - log_m)).sum(1),
        "activation_distance": (p_t - p_s).pow(2).sum(1).sqrt(),
        "cosine": F.cosine_similarity(p_t, p_s, dim=1),
        "teacher_correct": (pred_t == labels).double(),
        "student_correct": (pred_s == labels).double(),
        "teacher_confidence": p_t.max(1).values,
        "student_confidence": p_s.max(1).values,
    }


class AgreementAccumulator:
    """Streaming :func:`agreement`: ``update`` per batch, ``compute`` at the end; memory O(bins)."""

    def __init__(self, temperature: float = 1.0, n_bins: int = 15):
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if n_bins < 1:
            raise ValueError(f"n_bins must be >= 1, got {n_bins}")
        self.temperature = temperature
        self.n_bins = n_bins
        # Per split: count and _SUMS; per model and split: bins of count, confidence, correct.
        self._count = torch.zeros(3, dtype=torch.float64)
        self._sums = torch.zeros(3, len(_SUMS), dtype=torch.float64)
        self._bins = torch.zeros(2, 3, 3, n_bins, dtype=torch.float64)

    @torch.no_grad()
    def update(self, teacher_logits: Tensor, student_logits: Tensor, labels: Tensor) -> None:
        figures = agreement_per_example(teacher_logits, student_logits, labels, self.temperature)
        terms = torch.stack([figures[k] for k in _SUMS], dim=1)
        t_correct, s_correct = figures["teacher_correct"].bool(), figures["student_correct"].bool()
        masks = torch.stack([torch.ones_like(t_correct), t_correct, ~t_correct]).double()
        self._count += masks.sum(1).cpu()
        self._sums += (masks @ terms).cpu()
        confidences = (figures["teacher_confidence"], figures["student_confidence"])
        for m, (conf, correct) in enumerate(zip(confidences, (t_correct, s_correct), strict=True)):
            index = ((conf * self.n_bins).ceil().long() - 1).clamp(0, self.n_bins - 1)
            one_hot = F.one_hot(index, self.n_bins).double()
            stats = torch.stack([torch.ones_like(conf), conf, correct.double()])  # (3, b)
            self._bins[m] += torch.einsum("sb,kb,bi->ski", masks, stats, one_hot).cpu()

    def compute(self) -> AgreementResult:
        figures = [self._figures(s) for s in range(3)]
        incorrect = figures[2]
        return AgreementResult(
            *figures,
            same_error=incorrect.top1_agreement,
            temperature=self.temperature,
            n_bins=self.n_bins,
        )

    def _figures(self, split: int) -> AgreementFigures:
        n = int(self._count[split].item())
        if n == 0:
            return AgreementFigures(0, *([None] * 9))
        means = (self._sums[split] / n).tolist()
        eces = []
        for m in range(2):
            _, conf, correct = self._bins[m, split]
            eces.append((conf - correct).abs().sum().item() / n)
        agree, kl, js, dist, cos, t_acc, s_acc = means
        return AgreementFigures(n, agree, kl, js, dist, cos, t_acc, s_acc, *eces)


def agreement(
    teacher_logits: Tensor,
    student_logits: Tensor,
    labels: Tensor,
    temperature: float = 1.0,
    n_bins: int = 15,
) -> AgreementResult:
    """Student-teacher agreement on all examples and on the teacher correct/incorrect splits.

    >>> result = agreement(teacher_logits, student_logits, labels)
    >>> result.teacher_incorrect.top1_agreement  # share of the teacher's mistakes repeated
    """
    acc = AgreementAccumulator(temperature, n_bins)
    acc.update(teacher_logits, student_logits, labels)
    return acc.compute()
