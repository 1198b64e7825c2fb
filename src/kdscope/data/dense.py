"""Splits for dense prediction: per-pixel class masks (segmentation) and boxes (detection).

Targets follow torchvision: a segmentation target is a LongTensor (H, W) of class indices (0 =
background, :data:`IGNORE_INDEX` = not scored); a detection target is a dict ``{"boxes":
FloatTensor (N, 4) xyxy pixels, "labels": LongTensor (N,)}`` with labels from 1 (0 is the
background torchvision's detectors reserve).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from kdscope.data.bundle import DataBundle
from kdscope.data.splits import split_index

Task = Literal["segmentation", "detection"]
TASKS = ("segmentation", "detection")
IGNORE_INDEX = 255
DetectionTarget = dict[str, Tensor]


def check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")


@dataclass
class DenseBundle(DataBundle):
    """A :class:`DataBundle` whose targets are masks or boxes.

    ``num_classes`` counts the background (class 0) as torchvision's segmenters and detectors
    do. ``options`` records what built the data (for generated scenes, every generator parameter),
    so a result can say which data it was measured on.
    """

    task: Task = "segmentation"
    options: dict[str, Any] = field(default_factory=dict)


class _Normalised(Dataset):
    """uint8 images (N, C, H, W), normalised as read: ``(raw * scale - mean) / std``."""

    def __init__(
        self, images: Tensor, *, scale: float, mean: Sequence[float], std: Sequence[float]
    ):
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(
                f"images must be uint8 of shape (N, C, H, W), got {images.dtype} of shape "
                f"{tuple(images.shape)}"
            )
        if not len(mean) == len(std) == images.shape[1]:
            raise ValueError(
                f"mean and std need one value per channel ({images.shape[1]}), got {len(mean)} "
                f"and {len(std)}"
            )
        self.images = images.contiguous()
        std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self._mul = scale / std_t
        self._add = -torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1) / std_t

    def __len__(self) -> int:
        return len(self.images)

    def _normalise(self, index: Tensor) -> Tensor:
        return self.images.index_select(0, index).float().mul_(self._mul).add_(self._add)


class MemorySegmentation(_Normalised):
    """Images with uint8 masks (N, H, W); items ``(image, mask (H, W) long, index)``, and
    ``__getitems__`` serves ``(images (B, C, H, W), masks (B, H, W) long, index (B,))``."""

    def __init__(self, images: Tensor, masks: Tensor, **normalisation):
        super().__init__(images, **normalisation)
        if masks.shape != (images.shape[0], *images.shape[2:]):
            raise ValueError(
                f"masks must have shape (N, H, W) = {(images.shape[0], *images.shape[2:])}, got "
                f"{tuple(masks.shape)}"
            )
        self.masks = masks.contiguous()

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor, int]:
        i = split_index(i, len(self))
        index = torch.tensor([i])
        return self._normalise(index)[0], self.masks[i].long(), i

    def __getitems__(self, indices: Sequence[int]) -> tuple[Tensor, Tensor, Tensor]:
        index = torch.as_tensor(indices, dtype=torch.long)
        return self._normalise(index), self.masks.index_select(0, index).long(), index


class MemoryDetection(_Normalised):
    """Images with their boxes stored flat: image i owns rows ``offsets[i]:offsets[i + 1]`` of
    ``boxes`` (M, 4) and ``labels`` (M,). Items ``(image, target dict, index)``; ``__getitems__``
    serves ``(images (B, C, H, W), list of B target dicts, index (B,))``."""

    def __init__(
        self, images: Tensor, boxes: Tensor, labels: Tensor, offsets: Tensor, **normalisation
    ):
        super().__init__(images, **normalisation)
        if offsets.shape != (len(images) + 1,) or not int(offsets[-1]) == len(boxes) == len(labels):
            raise ValueError(
                f"offsets must have {len(images) + 1} entries ending at the number of boxes "
                f"({len(boxes)}) and labels ({len(labels)}), got shape {tuple(offsets.shape)}"
            )
        self.boxes = boxes.float().contiguous()
        self.labels = labels.long().contiguous()
        self.offsets = offsets.long().tolist()

    def target(self, i: int) -> DetectionTarget:
        start, stop = self.offsets[i], self.offsets[i + 1]
        return {"boxes": self.boxes[start:stop].clone(), "labels": self.labels[start:stop].clone()}

    def __getitem__(self, i: int) -> tuple[Tensor, DetectionTarget, int]:
        i = split_index(i, len(self))
        return self._normalise(torch.tensor([i]))[0], self.target(i), i

    def __getitems__(self, indices: Sequence[int]) -> tuple[Tensor, list[DetectionTarget], Tensor]:
        index = torch.as_tensor(indices, dtype=torch.long)
        return self._normalise(index), [self.target(int(i)) for i in index], index


def flatten_boxes(per_image: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[Tensor, ...]:
    """``(boxes (M, 4), labels (M,), offsets (N + 1,))`` from N ``(boxes, labels)`` arrays."""
    counts = [len(labels) for _, labels in per_image]
    offsets = torch.tensor(np.concatenate([[0], np.cumsum(counts)]), dtype=torch.long)
    boxes = [np.asarray(b, np.float32).reshape(-1, 4) for b, _ in per_image]
    labels = [np.asarray(lab, np.int64).reshape(-1) for _, lab in per_image]
    return (
        torch.from_numpy(np.concatenate(boxes) if boxes else np.zeros((0, 4), np.float32)),
        torch.from_numpy(np.concatenate(labels) if labels else np.zeros(0, np.int64)),
        offsets,
    )
