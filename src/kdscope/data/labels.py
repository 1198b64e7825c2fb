"""Checks on the labels a model is trained or scored on: a label it cannot predict is an error,
never a silent 0 accuracy or a CUDA assert."""

from __future__ import annotations

import torch
from torch import Tensor


def check_labels(
    labels: Tensor | list[dict[str, Tensor]],
    num_classes: int | None,
    where: str,
    ignore_index: int | None = None,
) -> None:
    """Raise unless ``labels`` are integer class indices in ``0 .. num_classes - 1`` (a
    ``ignore_index`` label aside). Detection targets (a list of dicts) are checked by their
    ``labels``."""
    if isinstance(labels, list):
        for target in labels:
            check_labels(target["labels"], num_classes, where)
        return
    if ignore_index is not None:
        labels = labels[labels != ignore_index]
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"labels in {where} must be integer class indices, got {labels.dtype}")
    if num_classes is None or labels.numel() == 0:
        return
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= num_classes:
        bad = low if low < 0 else high
        raise ValueError(
            f"{where} has label {bad}, outside the model's classes 0..{num_classes - 1}"
        )


def to_device(targets, device):
    """Labels or detection targets (a list of dicts of tensors) on ``device``."""
    if isinstance(targets, list):
        return [{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in targets]
    return targets.to(device, non_blocking=True)
