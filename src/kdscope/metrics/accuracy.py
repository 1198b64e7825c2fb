"""Top-1 accuracy of a model on a dataset, and the score each task selects and reports models by."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import Dataset

from kdscope.data import check_labels, ordered_loader
from kdscope.metrics.dense import ConfusionMatrix, MeanAveragePrecision
from kdscope.models import describe, reader

# What task_score measures for each output layout (the name a run's summary records).
SCORE_NAMES = {
    "classes": "accuracy",
    "tokens": "accuracy",
    "pixels": "mean_iou",
    "detections": "map",
}


def _batches(model: nn.Module, dataset: Dataset, batch_size: int, device, amp: bool):
    """(inputs on the device, checked labels) of ``dataset`` in order, the model in eval mode
    under autocast while they are scored (its mode restored afterwards)."""
    if len(dataset) == 0:
        raise ValueError("scoring a model needs at least one example; the dataset is empty")
    info, read = describe(model), reader(model)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    loader = ordered_loader(dataset, batch_size)
    was_training = model.training
    model.eval()
    try:
        for x, y, *_ in loader:
            check_labels(y, info.num_classes, "the evaluated dataset", read.ignore_index)
            with torch.autocast(device.type, enabled=amp):
                yield x.to(device), y
    finally:
        model.train(was_training)


@torch.no_grad()
def accuracy(
    model: nn.Module,
    dataset: Dataset,
    batch_size: int = 512,
    device: torch.device | str | None = None,
    amp: bool = False,
) -> float:
    """Top-1 accuracy of ``model`` on ``dataset`` (its mode is restored afterwards).

    Predictions are read as the model's :class:`~kdscope.models.ModelInfo` output layout says
    (per example, per token, or per labelled pixel); ``device`` defaults to the model's.
    """
    read = reader(model)
    correct = total = 0
    for x, y in _batches(model, dataset, batch_size, device, amp):
        right, counted = read.correct(read.logits(model, x).cpu(), y)
        correct += int(right)
        total += counted
    if total == 0:
        raise ValueError(f"{type(model).__name__} makes no predictions that have an accuracy")
    return correct / total


@torch.no_grad()
def task_score(
    model: nn.Module,
    dataset: Dataset,
    batch_size: int = 512,
    device: torch.device | str | None = None,
    amp: bool = False,
) -> float:
    """The score runs are selected (best checkpoint, early stopping) and tested by, for the
    model's output layout (:data:`SCORE_NAMES`): top-1 accuracy for classes and tokens, mean IoU
    over the dataset's pixels for segmentation (:class:`~kdscope.metrics.dense.ConfusionMatrix`),
    COCO mAP@[.5:.95] for detection (:func:`~kdscope.metrics.dense.detection_map`)."""
    info = describe(model)
    if info.output in ("classes", "tokens"):
        return accuracy(model, dataset, batch_size, device, amp)
    read = reader(info)
    pixels = ConfusionMatrix(info.num_classes, read.ignore_index)
    boxes = MeanAveragePrecision()
    for x, y in _batches(model, dataset, batch_size, device, amp):
        if info.output == "pixels":
            pixels.update(read.logits(model, x).argmax(1).cpu(), y)
        else:
            boxes.update([{k: v.float().cpu() for k, v in d.items()} for d in model(x)], y)
    score = pixels.compute().mean_iou if info.output == "pixels" else boxes.compute().map
    if score is None:
        raise ValueError(f"the evaluated dataset has no labelled {info.output} to score")
    return score
