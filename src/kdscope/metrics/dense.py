"""Metrics for dense prediction: segmentation IoU, detection mAP, and teacher-student agreement.

- :func:`mean_iou` / :class:`ConfusionMatrix`: per-class IoU, mean IoU over the classes present in
  the predictions or the labels, and pixel accuracy, from label maps.
- :func:`detection_map` / :class:`MeanAveragePrecision`: COCO mAP@[.5:.95] and mAP@.5 by
  pycocotools' ``COCOeval`` (Lin et al. 2014, "Microsoft COCO", arXiv:1405.0312).
- Output agreement, the AOA term of the Knowledge Retention Score (Alba & Villaverde 2025):
  segmentation, :class:`MaskAgreement`, the mean over images of the IoU between teacher and
  student masks; detection, :class:`DetectionOutputAgreement`, the paper's KL-based AOA over the
  detection head's per-location class predictions.

Box-level agreement of detections is in :mod:`kdscope.metrics.box_agreement`.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from kdscope.metrics.agreement import kl_per_example
from kdscope.metrics.retention import OutputAgreement, aoa_terms, segmentation_agreement

Detections = Sequence[dict[str, Tensor]]


def _labels(masks: Tensor) -> Tensor:
    """Label maps (n, H, W) from label maps or per-pixel logits (n, classes, H, W)."""
    return masks.argmax(1) if masks.ndim == 4 else masks


@dataclass
class SegmentationScores:
    """``per_class_iou[c]`` is None for a class absent from both predictions and labels."""

    per_class_iou: list[float | None]
    mean_iou: float | None
    pixel_accuracy: float | None
    n_pixels: int

    def to_dict(self) -> dict:
        return asdict(self)


class ConfusionMatrix:
    """Streaming :func:`mean_iou`: ``update(pred, target)`` per batch, ``compute()`` at the end.

    Intersections and unions are summed over all pixels seen (the dataset-level IoU of the
    PASCAL VOC and Cityscapes benchmarks), not averaged per image.
    """

    def __init__(self, num_classes: int, ignore_index: int | None = 255):
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.float64)

    @torch.no_grad()
    def update(self, pred: Tensor, target: Tensor) -> None:
        """``pred``: label maps (n, H, W) or logits (n, classes, H, W); ``target``: (n, H, W)."""
        pred = _labels(pred.detach())
        if pred.shape != target.shape:
            raise ValueError(
                f"predictions {tuple(pred.shape)} and labels {tuple(target.shape)} differ in shape"
            )
        p, t = pred.reshape(-1).long().cpu(), target.reshape(-1).long().cpu()
        if self.ignore_index is not None:
            keep = t != self.ignore_index
            p, t = p[keep], t[keep]
        k = self.num_classes
        for name, m in (("predictions", p), ("labels", t)):
            if m.numel() and (m.min() < 0 or m.max() >= k):
                ignored = f" or the ignore index {self.ignore_index}" if name == "labels" else ""
                raise ValueError(f"{name} must lie in [0, {k}){ignored}, got {m.min()}..{m.max()}")
        self.matrix += torch.bincount(t * k + p, minlength=k * k).reshape(k, k).double()

    def compute(self) -> SegmentationScores:
        """Rows of the matrix are labels, columns predictions."""
        correct = self.matrix.diag()
        union = self.matrix.sum(0) + self.matrix.sum(1) - correct
        present = union > 0
        iou = torch.where(present, correct / union.clamp_min(1), torch.nan)
        total = self.matrix.sum().item()
        return SegmentationScores(
            per_class_iou=[v if present[c] else None for c, v in enumerate(iou.tolist())],
            mean_iou=iou[present].mean().item() if bool(present.any()) else None,
            pixel_accuracy=correct.sum().item() / total if total else None,
            n_pixels=int(total),
        )


def mean_iou(
    pred: Tensor, target: Tensor, num_classes: int, ignore_index: int | None = 255
) -> SegmentationScores:
    """Per-class IoU = TP / (TP + FP + FN), their mean over the classes present in ``pred`` or
    ``target``, and pixel accuracy, over pixels whose label is not ``ignore_index``.

    >>> scores = mean_iou(logits.argmax(1), masks, num_classes=11)
    >>> scores.mean_iou, scores.per_class_iou[3]
    """
    matrix = ConfusionMatrix(num_classes, ignore_index)
    matrix.update(pred, target)
    return matrix.compute()


class MaskAgreement:
    """Segmentation AOA: the mean over images of the IoU between the teacher's and the student's
    predicted masks (the KRS paper's output agreement for segmentation).

    An image's IoU is :func:`~kdscope.metrics.retention.segmentation_agreement` of its two masks,
    the mean over the classes either model predicts there: the paper's "mean over x", as
    ``retention.knowledge_retention_score`` computes it for masks held in memory.
    """

    def __init__(self, num_classes: int):
        self.num_classes = num_classes
        self.n = 0
        self._sum = 0.0

    @torch.no_grad()
    def update(self, teacher: Tensor, student: Tensor) -> None:
        """Masks (n, H, W) or logits (n, classes, H, W) of the same images."""
        teacher, student = _labels(teacher.detach()), _labels(student.detach())
        if teacher.shape != student.shape or teacher.ndim != 3:
            raise ValueError(
                f"teacher and student masks must both be (n, H, W), got "
                f"{tuple(teacher.shape)} and {tuple(student.shape)}"
            )
        for t, s in zip(teacher, student, strict=True):
            self._sum += segmentation_agreement(t[None], s[None], self.num_classes)
        self.n += len(teacher)

    def compute(self) -> float:
        if self.n == 0:
            raise ValueError("mask agreement needs at least one image")
        return self._sum / self.n


def mask_agreement(teacher: Tensor, student: Tensor, num_classes: int) -> float:
    """:class:`MaskAgreement` of one set of masks or logits."""
    acc = MaskAgreement(num_classes)
    acc.update(teacher, student)
    return acc.compute()


def detection_kl_per_image(teacher_logits: Tensor, student_logits: Tensor) -> Tensor:
    """Per image: the mean over head locations of the KL between teacher and student class
    predictions, summed over classes (float64, natural log).

    Logits are (B, locations, classes) from a detection head (``FCOSDetector.class_logits``).
    FCOS and RetinaNet score classes with independent sigmoids (focal loss), so a location's
    prediction is one Bernoulli distribution per class and its KL is the sum of the Bernoulli
    KLs: sum_c KL(Bern(sigmoid(t_c)) || Bern(sigmoid(s_c))). A softmax over the classes would be a
    distribution the head never models.
    """
    if teacher_logits.ndim != 3 or teacher_logits.shape != student_logits.shape:
        raise ValueError(
            "teacher and student head logits must both be (B, locations, classes), got "
            f"{tuple(teacher_logits.shape)} and {tuple(student_logits.shape)}"
        )
    b, locations, classes = teacher_logits.shape

    # Bernoulli(sigmoid(z)) is the softmax of the two logits (0, z).
    def pairs(z: Tensor) -> Tensor:
        z = z.detach().reshape(-1, 1)
        return torch.cat([torch.zeros_like(z), z], dim=1)

    kl = kl_per_example(pairs(teacher_logits), pairs(student_logits))
    return kl.view(b, locations, classes).sum(2).mean(1)


def detection_calibration_constant(teacher_logits: Tensor, student_logits: Tensor) -> float:
    """C for detection AOA: the largest per-image KL on a calibration split."""
    return detection_kl_per_image(teacher_logits, student_logits).max().item()


class DetectionOutputAgreement(OutputAgreement):
    """Detection AOA (the KRS paper's KL-based term for vector predictions): mean over images of
    clip(1 - KL_x / C, 0, 1), KL_x from :func:`detection_kl_per_image`, C from a calibration split
    (:func:`detection_calibration_constant`) or, unset, the largest KL seen; ``compute`` is
    :class:`~kdscope.metrics.retention.OutputAgreement`'s. ``update`` takes head logits
    (B, locations, classes)."""

    @torch.no_grad()
    def update(self, teacher_logits: Tensor, student_logits: Tensor) -> None:
        kl = detection_kl_per_image(teacher_logits, student_logits)
        self.n += kl.numel()
        self.max_kl = max(self.max_kl, kl.max().item()) if kl.numel() else self.max_kl
        self._sum_kl += kl.sum().item()
        if self.c is not None:
            self._sum_terms += aoa_terms(kl, self.c).sum().item()


@dataclass
class DetectionScores:
    """COCO AP; None where no image has a ground-truth box (of that class, per class)."""

    map: float | None
    map_50: float | None
    per_class: dict[int, float | None]
    n_images: int

    def to_dict(self) -> dict:
        return asdict(self)


def _xywh(boxes: Tensor) -> list[list[float]]:
    b = boxes.detach().double().cpu().reshape(-1, 4)
    return torch.cat([b[:, :2], b[:, 2:] - b[:, :2]], 1).tolist()


class MeanAveragePrecision:
    """Streaming :func:`detection_map`: ``update(preds, targets)`` per batch, ``compute()``."""

    def __init__(self):
        self._gt: list[dict] = []
        self._dt: list[dict] = []
        self._images = 0

    def update(self, preds: Detections, targets: Detections) -> None:
        if len(preds) != len(targets):
            raise ValueError(f"{len(preds)} predictions for {len(targets)} targets")
        for pred, target in zip(preds, targets, strict=True):
            image = self._images
            self._images += 1
            for box, label in zip(_xywh(target["boxes"]), target["labels"].tolist(), strict=True):
                self._gt.append({"image_id": image, "category_id": int(label), "bbox": box})
            scores = pred["scores"].tolist()
            labels = pred["labels"].tolist()
            for box, label, score in zip(_xywh(pred["boxes"]), labels, scores, strict=True):
                self._dt.append(
                    {"image_id": image, "category_id": int(label), "bbox": box, "score": score}
                )

    def compute(self) -> DetectionScores:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        categories = sorted({a["category_id"] for a in self._gt + self._dt})
        per_class: dict[int, float | None] = dict.fromkeys(categories)
        if not self._gt:
            return DetectionScores(None, None, per_class, self._images)

        def coco(annotations: list[dict]) -> COCO:
            # Ids start at 1: COCOeval takes id 0 for "unmatched".
            anns = [
                {**a, "id": i + 1, "area": a["bbox"][2] * a["bbox"][3], "iscrowd": 0}
                for i, a in enumerate(annotations)
            ]
            c = COCO()
            c.dataset = {
                "images": [{"id": i} for i in range(self._images)],
                "categories": [{"id": k} for k in categories],
                "annotations": anns,
            }
            with contextlib.redirect_stdout(io.StringIO()):
                c.createIndex()
            return c

        evaluation = COCOeval(coco(self._gt), coco(self._dt), iouType="bbox")
        with contextlib.redirect_stdout(io.StringIO()):  # COCOeval prints its progress and table
            evaluation.evaluate()
            evaluation.accumulate()
            evaluation.summarize()
        # precision: (IoU thresholds, recall points, classes, area ranges, max detections);
        # area "all" and 100 detections; -1 marks a class with no ground truth.
        precision = evaluation.eval["precision"][:, :, :, 0, -1]
        for k, category in enumerate(evaluation.params.catIds):
            p = precision[:, :, k]
            per_class[category] = float(p[p > -1].mean()) if (p > -1).any() else None
        stats = [float(v) if v > -1 else None for v in evaluation.stats[:2]]
        return DetectionScores(stats[0], stats[1], per_class, self._images)


def detection_map(preds: Detections, targets: Detections) -> DetectionScores:
    """COCO mAP@[.5:.95] (``map``), mAP@.5 (``map_50``) and AP@[.5:.95] per class, by pycocotools.

    ``preds``: one dict per image with ``boxes`` (N, 4) xyxy pixels, ``scores`` (N,), ``labels``
    (N,) (torchvision's detector output); ``targets``: ``boxes`` and ``labels``. COCO's defaults:
    IoU thresholds .50:.05:.95, 101 recall points, the 100 best detections per image. A class's AP
    is averaged only where it has ground truth; detections of a class that has none count nowhere.
    Deviation: a ground-truth box's area is its box's (COCO uses the mask's), which only matters
    for the small/medium/large breakdowns not reported here.
    """
    acc = MeanAveragePrecision()
    acc.update(preds, targets)
    return acc.compute()
