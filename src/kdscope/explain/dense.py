"""Dense models seen as image classifiers, so Grad-CAM, UniCAM and the ROAD-perturbed FSS/RS explain
segmenters and detectors with the same code as classifiers.

- A segmenter's image score of class c is its per-pixel logit of c averaged over the image: the
  Grad-CAM of that score is Seg-Grad-CAM over the whole image (Vinogradova, Dibrov and Myers 2020,
  "Towards Interpretable Semantic Segmentation via Gradient-weighted Class Activation Mapping",
  arXiv:2002.11434).
- A detector's image score of class c is the largest logit of c over its head's locations (the
  most confident location of each class).
- An image's label is its dominant object: the foreground class covering most pixels of the mask,
  or the class of the largest ground-truth box; an image with no object is labelled background
  (class 0).

Layer names are the dense model's own; inside the wrapper they are prefixed by ``model.``.
"""

from __future__ import annotations

from dataclasses import replace
from functools import cached_property

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from kdscope.data import DataBundle
from kdscope.data.dense import IGNORE_INDEX
from kdscope.features import FeatureTap
from kdscope.models import ModelInfo, describe, reader, set_info

DENSE_OUTPUTS = ("pixels", "detections")
PREFIX = "model."


class ImageScores(nn.Module):
    """``model`` (a segmenter or detector) returning image-level class scores (B, classes)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        info = describe(model)
        if info.output not in DENSE_OUTPUTS:
            raise ValueError(f"ImageScores wraps segmenters and detectors, not {info.output!r}")
        self.output, self.logits_layer = info.output, info.logits_layer
        set_info(
            self,
            ModelInfo(
                output="classes",
                num_classes=info.num_classes,
                in_channels=info.in_channels,
                stages=tuple(PREFIX + s for s in info.stages),
            ),
        )

    def forward(self, x: Tensor) -> Tensor:
        if self.output == "pixels":
            return reader(self.model).logits(self.model, x).mean((2, 3))
        # Not detached: Grad-CAM differentiates these logits back to a backbone layer.
        with FeatureTap(self.model, [self.logits_layer], detach=False) as tap:
            self.model(x)
        return tap[self.logits_layer].amax(1)


def image_label(target: Tensor | dict[str, Tensor]) -> int:
    """The dominant object's class of a mask (H, W) or a detection target (module docstring)."""
    if isinstance(target, dict):
        boxes = target["boxes"]
        if not len(boxes):
            return 0
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        return int(target["labels"][area.argmax()])
    pixels = target[(target != 0) & (target != IGNORE_INDEX)]
    return int(pixels.mode().values) if pixels.numel() else 0


class ImageLabelled(Dataset):
    """A dense split whose items are ``(image, image_label, index)``; ``labels`` holds them all."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    @cached_property
    def labels(self) -> Tensor:
        # On first use: explaining reads one split, and labelling a split reads all its targets.
        return torch.tensor([image_label(self.dataset[i][1]) for i in range(len(self))])

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        x, target, index = self.dataset[i]
        return x, torch.tensor(image_label(target)), index


def image_level(
    models: dict[str, nn.Module | None], data: DataBundle, layers
) -> tuple[dict[str, nn.Module | None], DataBundle, object]:
    """The models, bundle and layer names as the image-level explainers take them: dense models
    wrapped in :class:`ImageScores`, splits in :class:`ImageLabelled`, layer names prefixed;
    anything else unchanged."""
    if describe(next(m for m in models.values() if m is not None)).output not in DENSE_OUTPUTS:
        return models, data, layers
    wrapped = {role: ImageScores(m) if m is not None else None for role, m in models.items()}
    splits = {s: ImageLabelled(getattr(data, s)) for s in ("train", "val", "test")}
    if layers is not None:
        layers = [
            PREFIX + layer if isinstance(layer, str) else tuple(PREFIX + n for n in layer)
            for layer in layers
        ]
    return wrapped, replace(data, **splits), layers
