"""Dense metrics against hand-computed values and the libraries the field trusts (torchmetrics,
pycocotools through torchmetrics)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from kdscope.metrics.box_agreement import BoxAgreement, box_agreement
from kdscope.metrics.dense import (
    ConfusionMatrix,
    DetectionOutputAgreement,
    MaskAgreement,
    MeanAveragePrecision,
    detection_calibration_constant,
    detection_kl_per_image,
    detection_map,
    mask_agreement,
    mean_iou,
)
from kdscope.metrics.retention import segmentation_agreement

# --- mean IoU ----------------------------------------------------------------------------------


def test_mean_iou_hand_values():
    pred = torch.tensor([[[0, 0, 1, 1], [2, 2, 1, 0]]])
    target = torch.tensor([[[0, 1, 1, 1], [2, 255, 1, 2]]])
    scores = mean_iou(pred, target, num_classes=4)
    assert scores.per_class_iou[:3] == pytest.approx([1 / 3, 3 / 4, 1 / 2])
    assert scores.per_class_iou[3] is None  # in neither (its one prediction is on an ignored pixel)
    assert scores.mean_iou == pytest.approx(19 / 36)
    assert scores.pixel_accuracy == pytest.approx(5 / 7)
    assert scores.n_pixels == 7
    logits = F.one_hot(pred, 4).permute(0, 3, 1, 2).float()
    assert mean_iou(logits, target, 4) == scores


def test_mean_iou_matches_torchmetrics():
    from torchmetrics.classification import MulticlassJaccardIndex

    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 5, (6, 16, 16), generator=g)  # class 5 never appears
    pred = torch.where(torch.rand(6, 16, 16, generator=g) < 0.6, target, 0)
    pred = torch.where(torch.rand(6, 16, 16, generator=g) < 0.1, 4, pred)
    target[:, 0] = 255
    ours = mean_iou(pred, target, num_classes=6)
    per_class = MulticlassJaccardIndex(6, average="none", ignore_index=255)(pred, target)
    macro = MulticlassJaccardIndex(6, average="macro", ignore_index=255)(pred, target)
    assert ours.per_class_iou[5] is None
    assert ours.per_class_iou[:5] == pytest.approx(per_class[:5].tolist(), abs=1e-6)
    assert ours.mean_iou == pytest.approx(macro.item(), abs=1e-6)
    # Streaming over batches gives the same confusion.
    acc = ConfusionMatrix(6)
    for i in range(0, 6, 2):
        acc.update(pred[i : i + 2], target[i : i + 2])
    assert acc.compute() == ours


def test_mean_iou_errors():
    with pytest.raises(ValueError, match="differ in shape"):
        mean_iou(torch.zeros(1, 4, 4, dtype=torch.long), torch.zeros(1, 4, 5, dtype=torch.long), 3)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\) or the ignore index 255"):
        mean_iou(torch.zeros(1, 2, 2, dtype=torch.long), torch.full((1, 2, 2), 7), 3)
    empty = mean_iou(torch.zeros(1, 2, 2, dtype=torch.long), torch.full((1, 2, 2), 255), 3)
    assert empty.mean_iou is None and empty.pixel_accuracy is None


# --- segmentation output agreement --------------------------------------------------------------


def test_mask_agreement_is_the_mean_per_image_iou():
    teacher = torch.tensor([[[0, 0], [0, 0]], [[0, 0], [1, 1]]])
    student = torch.tensor([[[0, 0], [0, 0]], [[0, 1], [1, 1]]])
    # Image 1 agrees exactly (IoU 1); image 2: class 0 1/2, class 1 2/3, so 7/12.
    assert mask_agreement(teacher, student, num_classes=2) == pytest.approx((1 + 7 / 12) / 2)
    # Not the pooled IoU of retention.segmentation_agreement: (5/6 + 2/3) / 2.
    assert segmentation_agreement(teacher, student, 2) == pytest.approx(3 / 4)
    logits = F.one_hot(student, 2).permute(0, 3, 1, 2).float()
    assert mask_agreement(teacher, logits, 2) == pytest.approx(19 / 24)
    acc = MaskAgreement(2)
    acc.update(teacher[:1], student[:1])
    acc.update(teacher[1:], student[1:])
    assert acc.compute() == pytest.approx(19 / 24)
    assert mask_agreement(student, student, 2) == 1.0
    with pytest.raises(ValueError, match="at least one image"):
        MaskAgreement(2).compute()


# --- detection output agreement (KL over the head's class logits) ----------------------------


def test_detection_kl_hand_value_and_properties():
    # p_T = sigmoid(0) = 1/2, p_S = sigmoid(ln 3) = 3/4: KL = 1/2 ln(2/3) + 1/2 ln 2 = 1/2 ln(4/3).
    t = torch.zeros(1, 1, 1)
    s = torch.full((1, 1, 1), math.log(3))
    assert detection_kl_per_image(t, s).item() == pytest.approx(0.5 * math.log(4 / 3))
    g = torch.Generator().manual_seed(0)
    t, s = torch.randn(3, 50, 4, generator=g) * 3, torch.randn(3, 50, 4, generator=g) * 3
    pt, ps = torch.sigmoid(t.double()), torch.sigmoid(s.double())
    bern = pt * (pt / ps).log() + (1 - pt) * ((1 - pt) / (1 - ps)).log()
    torch.testing.assert_close(detection_kl_per_image(t, s), bern.sum(2).mean(1))
    assert (detection_kl_per_image(t, s) > 0).all()
    assert detection_kl_per_image(t, t).abs().max() < 1e-12
    with pytest.raises(ValueError, match=r"\(B, locations, classes\)"):
        detection_kl_per_image(t[0], s[0])


def test_detection_output_agreement():
    g = torch.Generator().manual_seed(1)
    t, s = torch.randn(6, 20, 3, generator=g), torch.randn(6, 20, 3, generator=g)
    kl = detection_kl_per_image(t, s)
    c = detection_calibration_constant(t, s)
    assert c == pytest.approx(kl.max().item())
    given = DetectionOutputAgreement(c=c / 2)
    given.update(t[:3], s[:3])
    given.update(t[3:], s[3:])
    assert given.compute() == pytest.approx((1 - kl / (c / 2)).clamp(0, 1).mean().item())
    unset = DetectionOutputAgreement()
    unset.update(t, s)
    assert unset.compute() == pytest.approx(1 - kl.mean().item() / kl.max().item())
    same = DetectionOutputAgreement(c=1.0)
    same.update(t, t)
    assert same.compute() == pytest.approx(1.0)


# --- mAP ---------------------------------------------------------------------------------------


def dets(boxes, labels, scores=None) -> dict:
    d = {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.tensor(labels, dtype=torch.long),
    }
    if scores is not None:
        d["scores"] = torch.tensor(scores, dtype=torch.float32)
    return d


def test_detection_map_hand_values():
    target = [dets([[0, 0, 10, 10]], [1])]
    perfect = detection_map([dets([[0, 0, 10, 10]], [1], [0.9])], target)
    assert (perfect.map, perfect.map_50) == (pytest.approx(1.0), pytest.approx(1.0))
    # IoU 0.62 passes the thresholds .50, .55 and .60 of ten: AP@[.5:.95] = 0.3.
    partial = detection_map([dets([[0, 0, 10, 6.2]], [1], [0.9])], target)
    assert partial.map == pytest.approx(0.3) and partial.map_50 == pytest.approx(1.0)
    assert partial.per_class == {1: pytest.approx(0.3)}
    wrong_class = detection_map([dets([[0, 0, 10, 10]], [2], [0.9])], target)
    assert wrong_class.map == 0.0 and wrong_class.per_class == {1: 0.0, 2: None}
    nothing = detection_map([dets([], [], [])], [dets([], [])])
    assert nothing.map is None and nothing.n_images == 1


def map_fixtures():
    g = torch.Generator().manual_seed(3)

    def boxes(n):
        xy = torch.rand(n, 2, generator=g) * 40
        return torch.cat([xy, xy + 4 + torch.rand(n, 2, generator=g) * 20], 1)

    preds, targets = [], []
    for i in range(6):
        gt = boxes(3)
        gt_labels = torch.tensor([1, 2, 3])
        jitter = gt + torch.randn(3, 4, generator=g) * 2
        pred = torch.cat([jitter, boxes(2)])
        labels = torch.tensor([1, 2, 1, 2, 4])  # class 3 is never predicted; 4 never labelled
        scores = torch.rand(5, generator=g)
        if i == 2:  # an image with no predictions
            pred, labels, scores = pred[:0], labels[:0], scores[:0]
        if i == 4:  # an image with no ground truth
            gt, gt_labels = gt[:0], gt_labels[:0]
        preds.append({"boxes": pred, "labels": labels, "scores": scores})
        targets.append({"boxes": gt, "labels": gt_labels})
    return preds, targets


def test_detection_map_matches_torchmetrics():
    from torchmetrics.detection import MeanAveragePrecision as TorchmetricsMAP

    preds, targets = map_fixtures()
    ours = detection_map(preds, targets)
    # COCOeval's own thresholds: torchmetrics' defaults are float32 linspaces, and recall 0.2
    # then misses the threshold 0.2 (0.2000000030), which moved mAP here by 0.0014.
    reference = TorchmetricsMAP(
        class_metrics=True,
        iou_thresholds=np.linspace(0.5, 0.95, 10).tolist(),
        rec_thresholds=np.linspace(0.0, 1.0, 101).tolist(),
    )
    reference.update(preds, targets)
    ref = reference.compute()
    assert ours.map == pytest.approx(ref["map"].item(), abs=1e-6)
    assert ours.map_50 == pytest.approx(ref["map_50"].item(), abs=1e-6)
    assert 0 < ours.map < ours.map_50 < 1
    ref_per_class = dict(zip(ref["classes"].tolist(), ref["map_per_class"].tolist(), strict=True))
    assert ours.per_class[3] == 0.0 == pytest.approx(ref_per_class[3])
    assert ours.per_class[4] is None  # predicted but never labelled: no AP
    for k in (1, 2):
        assert ours.per_class[k] == pytest.approx(ref_per_class[k], abs=1e-6)
    # Streaming over batches is the same evaluation.
    acc = MeanAveragePrecision()
    acc.update(preds[:3], targets[:3])
    acc.update(preds[3:], targets[3:])
    assert acc.compute() == ours


# --- box agreement -----------------------------------------------------------------------------

GT = dets([[0, 0, 10, 10], [20, 20, 30, 30]], [1, 2])
TEACHER = dets(
    [[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50], [0, 0, 10, 10]],
    [1, 2, 1, 2],
    [0.9, 0.9, 0.8, 0.3],  # the last is below the score threshold
)  # correct, correct, incorrect (no ground truth there)
STUDENT = dets(
    [[0, 0, 10, 9], [20, 20, 30, 30], [40, 40, 50, 50], [0, 0, 10, 10], [60, 60, 62, 62]],
    [1, 1, 1, 1, 2],
    [0.9, 0.8, 0.7, 0.6, 0.2],
)  # matches 1st; wrong label; matches the teacher's error; duplicate of 1st; below threshold


def test_box_agreement_hand_values():
    result = box_agreement([STUDENT], [TEACHER], [GT])
    a = result.all
    assert (a.n_teacher, a.n_student, a.matched) == (3, 4, 2)
    assert a.precision == pytest.approx(0.5) and a.recall == pytest.approx(2 / 3)
    assert a.f1 == pytest.approx(4 / 7)
    c, i = result.teacher_correct, result.teacher_incorrect
    assert (c.n_teacher, c.matched, c.recall) == (2, 1, pytest.approx(0.5))
    assert (i.n_teacher, i.matched, i.recall) == (1, 1, pytest.approx(1.0))
    assert c.precision is None and c.f1 is None
    # A lower score threshold lets in the teacher's 4th box, which the student's duplicate does
    # not match (its label differs), and the student's 5th box, unmatched.
    low = box_agreement([STUDENT], [TEACHER], [GT], score_threshold=0.1).all
    assert (low.n_teacher, low.n_student, low.matched) == (4, 5, 2)


def test_box_agreement_streams_and_handles_empty_images():
    empty = dets([], [], [])
    acc = BoxAgreement()
    acc.update([STUDENT], [TEACHER], [GT])
    acc.update([empty, STUDENT], [empty, empty], [GT, dets([], [])])
    result = acc.compute()
    # The second batch adds 4 unmatched student boxes and no teacher box.
    assert (result.all.n_teacher, result.all.n_student, result.all.matched) == (3, 8, 2)
    assert result.all.precision == pytest.approx(0.25)
    same = box_agreement([TEACHER], [TEACHER], [GT])
    assert same.all.precision == same.all.recall == same.all.f1 == 1.0
    nothing = box_agreement([empty], [empty], [dets([], [])]).all
    assert nothing.recall is None and nothing.precision is None
    with pytest.raises(ValueError, match="one entry per image"):
        box_agreement([STUDENT], [], [GT])
    with pytest.raises(ValueError, match="score_threshold must lie in"):
        BoxAgreement(score_threshold=2.0)
