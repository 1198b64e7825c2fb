"""Checks on the labels a model is trained or scored on: a label it cannot predict is an error,
never a silent 0 accuracy or a CUDA assert."""

from __future__ import annotations

import torch
from torch import Tensor


def check_labels(labels: Tensor, num_classes: int | None, where: str) -> None:
    """Raise unless ``labels`` are integer class indices in ``0 .. num_classes - 1``."""
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
