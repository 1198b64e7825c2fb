"""How a model's output is read, by the layout its :class:`~kdscope.models.info.ModelInfo` names:
the task loss of a training step, the logits distillation methods compare, and what counts as a
correct prediction. One reader per layout, so the one training step serves every task.

- ``classes``: (B, C) logits, cross-entropy on (B,) labels.
- ``tokens``: (B, T, V) next-token logits, cross-entropy averaged over all B * T positions.
- ``pixels``: (B, C, H, W) logits, cross-entropy over the pixels whose label is not
  :data:`IGNORE_INDEX` (255, as Pascal VOC marks borders).
- ``detections``: a detector that returns its own loss dict in training (torchvision's), whose
  per-location class logits (B, locations, C) are the output of ``ModelInfo.logits_layer``.

:func:`example_features` is the one reading of a layer's features as one vector per example for
sequence classifiers (masked mean over the real tokens), which metrics, methods and the teacher
cache all go through.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdscope.data.tokens import masked_mean
from kdscope.features import FeatureTap, unwrap
from kdscope.models.info import ModelInfo, describe

IGNORE_INDEX = 255


class OutputReader:
    """The reading of one output layout; ``class_dim`` is where the class scores lie."""

    class_dim = 1
    loss_name = "ce"
    ignore_index: int | None = None

    def train_forward(
        self, model: nn.Module, x: Tensor, y, label_smoothing: float = 0.0
    ) -> tuple[Tensor, Tensor]:
        """(logits the methods compare, the task loss) of one training forward."""
        logits = model(x)
        return logits, self.loss(logits, y, label_smoothing)

    def logits(self, model: nn.Module, x: Tensor) -> Tensor:
        """The logits of an inference forward (a teacher's, an evaluated model's)."""
        return model(x)

    def predict(self, model: nn.Module, x: Tensor) -> tuple[Tensor, object]:
        """(logits, predictions) of one inference forward: the predictions are what the task is
        scored on, the logits themselves except for a detector (its boxes)."""
        logits = self.logits(model, x)
        return logits, logits

    def loss(self, logits: Tensor, y: Tensor, label_smoothing: float = 0.0) -> Tensor:
        return F.cross_entropy(logits, y, label_smoothing=label_smoothing)

    def correct(self, logits: Tensor, y) -> tuple[Tensor, int]:
        """(correct predictions, predictions counted) in a batch."""
        return (logits.argmax(self.class_dim) == y).sum(), y.numel()


class TokenReader(OutputReader):
    class_dim = -1

    def loss(self, logits: Tensor, y: Tensor, label_smoothing: float = 0.0) -> Tensor:
        return F.cross_entropy(logits.flatten(0, -2), y.flatten(), label_smoothing=label_smoothing)


class PixelReader(OutputReader):
    ignore_index = IGNORE_INDEX

    def loss(self, logits: Tensor, y: Tensor, label_smoothing: float = 0.0) -> Tensor:
        return F.cross_entropy(
            logits, y, ignore_index=IGNORE_INDEX, label_smoothing=label_smoothing
        )

    def correct(self, logits: Tensor, y: Tensor) -> tuple[Tensor, int]:
        counted = y != IGNORE_INDEX
        return ((logits.argmax(1) == y) & counted).sum(), int(counted.sum())


class DetectionReader(OutputReader):
    """A detector's own losses; its class logits are read at ``ModelInfo.logits_layer``."""

    class_dim = -1
    loss_name = "detector"

    def __init__(self, info: ModelInfo):
        if not info.logits_layer:
            raise ValueError("a detection model's ModelInfo must name its logits_layer")
        self.layer = info.logits_layer

    def train_forward(self, model, x, y, label_smoothing=0.0):
        with FeatureTap(model, [self.layer]) as tap:
            losses = model(x, y)
        return tap[self.layer], sum(losses.values())

    def logits(self, model, x):
        with FeatureTap(model, [self.layer], detach=not torch.is_grad_enabled()) as tap:
            model(x)
        return tap[self.layer]

    def predict(self, model, x):
        with FeatureTap(model, [self.layer], detach=not torch.is_grad_enabled()) as tap:
            detections = model(x)
        return tap[self.layer], detections

    def correct(self, logits, y):
        return logits.new_zeros((), dtype=torch.long), 0


_READERS = {"classes": OutputReader(), "tokens": TokenReader(), "pixels": PixelReader()}


def reader(model: nn.Module | ModelInfo) -> OutputReader:
    """The reader of ``model``'s output layout (from its ModelInfo)."""
    info = model if isinstance(model, ModelInfo) else describe(model)
    if info.output == "detections":
        return DetectionReader(info)
    return _READERS[info.output]


def _is_token_batch(inputs: Tensor, shape: tuple[int, ...]) -> bool:
    return (
        not inputs.is_floating_point()
        and inputs.dim() == 2
        and len(shape) == 3
        and (tuple(shape[:2]) == tuple(inputs.shape))
    )


def example_features(model: nn.Module, inputs: Tensor, features: Tensor) -> Tensor:
    """A layer's ``features`` for the batch ``inputs`` as the per-example tensor that similarity
    metrics (CKA, KRS, dCor) and feature and relation losses compare.

    For a sequence classifier (token ids (B, T) in, class scores out) a per-token stage (B, T, D)
    is reduced to (B, D) by the mean over the example's real tokens
    (:func:`~kdscope.data.tokens.masked_mean`, padding id ``model.pad_id``, default 0): CKA is
    defined between examples (Kornblith et al. 2019), not tokens, and a mean over real tokens does
    not depend on how much padding a batch has. Every other layer (images, waveforms, language
    models' per-token outputs) is returned unchanged.
    """
    if describe(model).output != "classes" or not _is_token_batch(inputs, tuple(features.shape)):
        return features
    return masked_mean(features, inputs, getattr(unwrap(model), "pad_id", 0))


def example_shape(model: nn.Module, inputs: Tensor, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape :func:`example_features` gives a layer output of ``shape`` for ``inputs``."""
    if describe(model).output != "classes" or not _is_token_batch(inputs, shape):
        return shape
    return (shape[0], shape[2])
