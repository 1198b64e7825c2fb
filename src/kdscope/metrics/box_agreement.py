"""Box-level agreement of a student detector with its teacher: how many of the teacher's boxes the
student reproduces, on all of them and on those where the teacher is right or wrong (the functional
view of :mod:`kdscope.metrics.agreement`, Mason-Williams et al. 2025, with boxes for examples).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import Tensor

from kdscope.metrics.dense import Detections


@dataclass
class BoxAgreementFigures:
    """Agreement on one split of the teacher's boxes. ``recall`` = matched / n_teacher (the share
    of the teacher's boxes the student reproduces). ``precision`` = matched / n_student and ``f1``
    are given on all boxes only: a student box with no teacher match has no teacher box to split
    it by."""

    n_teacher: int
    matched: int
    recall: float | None
    n_student: int | None = None
    precision: float | None = None
    f1: float | None = None


@dataclass
class BoxAgreementResult:
    all: BoxAgreementFigures
    teacher_correct: BoxAgreementFigures
    teacher_incorrect: BoxAgreementFigures
    iou_threshold: float
    score_threshold: float

    def to_dict(self) -> dict:
        return asdict(self)


def _box_iou(a: Tensor, b: Tensor) -> Tensor:
    # torchvision is imported where boxes are compared: it takes seconds to import, and the
    # Evaluator (which imports this module) also serves models that have no boxes.
    from torchvision.ops import box_iou

    return box_iou(a.double(), b.double())


def _match(student: dict[str, Tensor], teacher: dict[str, Tensor], iou_threshold: float) -> Tensor:
    """Which teacher boxes a student box matches: greedily, student boxes by descending score,
    each to the unmatched same-label teacher box of highest IoU >= ``iou_threshold`` (COCO's
    matching, with the teacher's boxes as ground truth)."""
    matched = torch.zeros(len(teacher["boxes"]), dtype=torch.bool)
    if not len(matched) or not len(student["boxes"]):
        return matched
    iou = _box_iou(student["boxes"], teacher["boxes"])
    iou[student["labels"][:, None] != teacher["labels"][None, :]] = -1
    for s in torch.argsort(student["scores"], descending=True, stable=True).tolist():
        candidates = iou[s].masked_fill(matched, -1)
        best = int(candidates.argmax())
        if candidates[best] >= iou_threshold:
            matched[best] = True
    return matched


class BoxAgreement:
    """Box-level agreement of a student's detections with its teacher's, streamed over batches.

    Per image, detections scoring below ``score_threshold`` are dropped (teacher and student
    alike); student boxes are matched one-to-one to teacher boxes of the same label at IoU >=
    ``iou_threshold`` (:func:`_match`). A teacher box is correct when it has IoU >= 0.5 with a
    ground-truth box of its label. Counts are summed over all images before dividing.
    """

    def __init__(self, iou_threshold: float = 0.5, score_threshold: float = 0.5):
        for name, v in (("iou_threshold", iou_threshold), ("score_threshold", score_threshold)):
            if not 0 <= v <= 1:
                raise ValueError(f"{name} must lie in [0, 1], got {v}")
        self.iou_threshold = iou_threshold
        self.score_threshold = score_threshold
        # Teacher boxes and matched ones, for correct / incorrect teacher boxes; student boxes.
        self._counts = np.zeros((2, 2), dtype=np.int64)
        self._n_student = 0

    @torch.no_grad()
    def update(self, student: Detections, teacher: Detections, targets: Detections) -> None:
        if not len(student) == len(teacher) == len(targets):
            raise ValueError(
                f"one entry per image needed: {len(student)} student, {len(teacher)} teacher, "
                f"{len(targets)} target"
            )
        for s, t, gt in zip(student, teacher, targets, strict=True):
            s, t = self._confident(s), self._confident(t)
            gt = {k: v.detach().cpu() for k, v in gt.items()}
            matched = _match(s, t, self.iou_threshold)
            correct = torch.zeros(len(matched), dtype=torch.bool)
            if len(matched) and len(gt["boxes"]):
                iou = _box_iou(t["boxes"], gt["boxes"])
                same = t["labels"][:, None] == gt["labels"][None, :]
                correct = ((iou >= 0.5) & same).any(1)
            for split, mask in ((0, correct), (1, ~correct)):
                self._counts[split] += [int(mask.sum()), int(matched[mask].sum())]
            self._n_student += len(s["boxes"])

    def _confident(self, d: dict[str, Tensor]) -> dict[str, Tensor]:
        keep = d["scores"].detach().cpu() >= self.score_threshold
        return {k: d[k].detach().cpu()[keep] for k in ("boxes", "scores", "labels")}

    def compute(self) -> BoxAgreementResult:
        def figures(n_teacher: int, matched: int) -> BoxAgreementFigures:
            return BoxAgreementFigures(
                n_teacher, matched, matched / n_teacher if n_teacher else None
            )

        total = figures(*self._counts.sum(0).tolist())
        total.n_student = self._n_student
        total.precision = total.matched / self._n_student if self._n_student else None
        if total.precision is not None and total.recall is not None:
            both = total.precision + total.recall
            total.f1 = 2 * total.precision * total.recall / both if both else 0.0
        return BoxAgreementResult(
            total,
            figures(*self._counts[0].tolist()),
            figures(*self._counts[1].tolist()),
            self.iou_threshold,
            self.score_threshold,
        )


def box_agreement(
    student: Detections,
    teacher: Detections,
    targets: Detections,
    iou_threshold: float = 0.5,
    score_threshold: float = 0.5,
) -> BoxAgreementResult:
    """:class:`BoxAgreement` of one set of detections.

    >>> result = box_agreement(student_dets, teacher_dets, targets)
    >>> result.teacher_incorrect.recall  # share of the teacher's wrong boxes the student repeats
    """
    acc = BoxAgreement(iou_threshold, score_threshold)
    acc.update(student, teacher, targets)
    return acc.compute()
