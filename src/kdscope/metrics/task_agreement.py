"""What the Evaluator measures on each task's outputs: the agreement section and the KRS output
term (AOA), chosen by the model's output layout (:class:`~kdscope.models.ModelInfo`).

- classification: :class:`~kdscope.metrics.agreement.AgreementAccumulator` (softmax agreement,
  split by whether the teacher is right) and the KL-based AOA
  (:class:`~kdscope.metrics.retention.OutputAgreement`).
- segmentation: each model's mean IoU and pixel accuracy against the labels and the per-image
  mean IoU of the student's masks against the teacher's (:class:`SegmentationAgreement`); AOA is
  that mask IoU (the KRS paper's segmentation term, its Eq. 9-11), which needs no calibration.
- detection: each model's COCO mAP and the box-level agreement of the student with the teacher
  (:mod:`~kdscope.metrics.box_agreement`: matched at IoU >= 0.5; precision, recall, F1; recall
  split by whether the teacher's box is correct); AOA is the paper's KL-based term for "vector
  predictions" over the detection head's per-location class distributions
  (:class:`~kdscope.metrics.dense.DetectionOutputAgreement`).

KRS weights are the paper's per task (:data:`~kdscope.metrics.retention.TASK_WEIGHTS`): alpha 0.3 on
FSS and beta 0.7 on AOA for classification, alpha 0.7 and beta 0.3 for detection and segmentation.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from torch import Tensor

from kdscope.data.dense import IGNORE_INDEX
from kdscope.metrics.agreement import AgreementAccumulator
from kdscope.metrics.box_agreement import BoxAgreement, BoxAgreementResult
from kdscope.metrics.dense import (
    ConfusionMatrix,
    DetectionOutputAgreement,
    DetectionScores,
    MaskAgreement,
    MeanAveragePrecision,
    SegmentationScores,
)
from kdscope.metrics.retention import OutputAgreement

# The task each output layout is evaluated as.
# Language models are evaluated with every position as a classified example.
TASK_OF_OUTPUT = {
    "classes": "classification",
    "tokens": "language-modelling",
    "pixels": "segmentation",
    "detections": "detection",
}
# Tasks whose AOA is a KL against a calibration constant C.
CALIBRATED = ("classification", "language-modelling", "detection")


def task_of(output: str) -> str:
    """The evaluated task of an output layout; a ValueError for one the Evaluator cannot read."""
    if output not in TASK_OF_OUTPUT:
        raise ValueError(f"the Evaluator reads outputs {', '.join(TASK_OF_OUTPUT)}, got {output!r}")
    return TASK_OF_OUTPUT[output]


@dataclass
class SegmentationAgreement:
    """Teacher and student scored against the labels, and the mean over images of the IoU of the
    student's predicted masks against the teacher's (the segmentation AOA)."""

    teacher: SegmentationScores
    student: SegmentationScores
    mask_agreement: float

    def to_dict(self) -> dict:
        return asdict(self)


class SegmentationAgreementAccumulator:
    """Streams :class:`SegmentationAgreement` from per-pixel logits (B, classes, H, W)."""

    def __init__(self, num_classes: int, ignore_index: int | None = IGNORE_INDEX):
        self._teacher = ConfusionMatrix(num_classes, ignore_index)
        self._student = ConfusionMatrix(num_classes, ignore_index)
        self._masks = MaskAgreement(num_classes)

    def update(self, teacher: Tensor, student: Tensor, labels: Tensor) -> None:
        self._teacher.update(teacher, labels)
        self._student.update(student, labels)
        self._masks.update(teacher, student)

    def compute(self) -> SegmentationAgreement:
        return SegmentationAgreement(
            self._teacher.compute(), self._student.compute(), self._masks.compute()
        )


@dataclass
class DetectionAgreement:
    """Teacher and student COCO mAP against the ground truth, and the student's box-level
    agreement with the teacher."""

    teacher: DetectionScores
    student: DetectionScores
    boxes: BoxAgreementResult

    def to_dict(self) -> dict:
        return asdict(self)


class DetectionAgreementAccumulator:
    """Streams :class:`DetectionAgreement` from torchvision-format detections."""

    def __init__(self, iou_threshold: float = 0.5, score_threshold: float = 0.5):
        self._teacher = MeanAveragePrecision()
        self._student = MeanAveragePrecision()
        self._boxes = BoxAgreement(iou_threshold, score_threshold)

    def update(self, teacher: list[dict], student: list[dict], targets: list[dict]) -> None:
        teacher, student = _on_cpu(teacher), _on_cpu(student)
        targets = _on_cpu(targets)
        self._teacher.update(teacher, targets)
        self._student.update(student, targets)
        self._boxes.update(student, teacher, targets)

    def compute(self) -> DetectionAgreement:
        return DetectionAgreement(
            self._teacher.compute(), self._student.compute(), self._boxes.compute()
        )


def _on_cpu(detections: list[dict]) -> list[dict]:
    return [{k: v.detach().float().cpu() for k, v in d.items()} for d in detections]


def agreement_accumulator(task: str, num_classes: int, temperature: float = 1.0):
    """The agreement accumulator of ``task``: ``update(teacher_predictions, predictions,
    labels)`` with the predictions an OutputReader's ``predict`` gives."""
    if task == "segmentation":
        return SegmentationAgreementAccumulator(num_classes)
    if task == "detection":
        return DetectionAgreementAccumulator()
    return AgreementAccumulator(temperature)


def aoa_accumulator(task: str, num_classes: int, c: float | None = None):
    """The KRS output-agreement accumulator of ``task``: ``update(teacher_logits, logits)``; a
    calibrated one (:data:`CALIBRATED`) computes with ``compute(c)``, the mask IoU with
    ``compute()``."""
    if task == "segmentation":
        return MaskAgreement(num_classes)
    if task == "detection":
        return DetectionOutputAgreement(c)
    return OutputAgreement(c)


def dense_table_rows(task: str, ag: list) -> list[tuple[str, list[float | None]]]:
    """The terminal table's rows of segmentation or detection agreement results, one column per
    compared model."""
    if task == "segmentation":
        return [
            ("student mean IoU", [a.student.mean_iou for a in ag]),
            ("teacher mean IoU", [a.teacher.mean_iou for a in ag]),
            ("student pixel accuracy", [a.student.pixel_accuracy for a in ag]),
            ("mask IoU with teacher", [a.mask_agreement for a in ag]),
        ]
    return [
        ("student mAP@[.5:.95]", [a.student.map for a in ag]),
        ("teacher mAP@[.5:.95]", [a.teacher.map for a in ag]),
        ("student mAP@.5", [a.student.map_50 for a in ag]),
        ("box recall of teacher", [a.boxes.all.recall for a in ag]),
        ("  teacher box correct", [a.boxes.teacher_correct.recall for a in ag]),
        ("  teacher box wrong", [a.boxes.teacher_incorrect.recall for a in ag]),
        ("box precision", [a.boxes.all.precision for a in ag]),
        ("box F1", [a.boxes.all.f1 for a in ag]),
    ]
