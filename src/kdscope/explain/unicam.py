"""UniCAM: maps of the features one model has and the other lacks.

Adhane, Dehshibi, Vetter, Masip, Roig, "On Explaining Knowledge Distillation: Measuring and
Visualising the Knowledge Transfer Process", WACV 2025 (arXiv:2412.13943).

For a batch, let A~, C~ be the U-centred distance matrices of the student's and the base model's
features at a layer and E~ that of the label embeddings of the batch's ground-truth classes. The
student's unique part is R = A~ - (<A~, C~> / <C~, C~>) C~; the objective is the bias-corrected
correlation of R with E~, the semi-partial distance correlation
(R*_se - R*_sb R*_be) / sqrt(1 - R*_sb^2). Grad-CAM weighting of the student's activations by
the gradient of that objective gives the *distilled* map; swapping the models gives the *residual*
map (what the base has that the student does not). With a teacher as ``base`` the same function
shows the student's and the teacher's unique features.

A map depends on its whole batch (distances are between examples), so the batch's labels (and
indices, when given) are returned with the maps. When one model's features explain the other's
entirely (1 - R*_sb^2 <= ``tolerance``, e.g. a model against an identical copy) there are no unique
features: the objective is 0 with no useful gradient, both maps are all-zero and the result is
flagged ``empty``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn

from kdscope.explain.gradcam import cam_from, layer_features
from kdscope.metrics.matrices import u_centered, u_correlation, u_inner
from kdscope.metrics.similarity import pairwise_distances

UNIQUE_TOLERANCE = 1e-10


@dataclass
class UniCAMResult:
    """Distilled and residual maps of one batch, with what defines them.

    Attributes:
        distilled: (B, H, W) maps in [0, 1] of the student's features relative to the base.
        residual: (B, H, W) maps in [0, 1] of the base's features relative to the student.
        labels: (B,) ground-truth classes of the batch: the composition the maps depend on.
        indices: (B,) dataset indices of the batch's examples, when given.
        objective_distilled, objective_residual: the semi-partial dCor each map differentiates.
        unique_fraction: 1 - R*(student, base)^2, the share of either model's distance structure
            that the other does not explain.
        empty: neither model has features the other lacks (``unique_fraction <= tolerance``);
            both maps are all-zero.
    """

    distilled: Tensor
    residual: Tensor
    labels: Tensor
    indices: Tensor | None
    objective_distilled: float
    objective_residual: float
    unique_fraction: float
    empty: bool

    def composition(self) -> dict:
        """JSON-ready description of the batch the maps were computed on."""
        return batch_composition(self.labels, self.indices)


def batch_composition(labels: Tensor, indices: Tensor | None = None) -> dict:
    """Size, examples per class and (when known) dataset indices of a batch."""
    counts = Counter(torch.as_tensor(labels).tolist())
    return {
        "size": sum(counts.values()),
        "class_counts": {int(k): counts[k] for k in sorted(counts)},
        "indices": None if indices is None else torch.as_tensor(indices).reshape(-1).tolist(),
    }


def unicam(
    student: nn.Module,
    base: nn.Module,
    layer: str | tuple[str, str],
    inputs: Tensor,
    labels: Tensor,
    label_embeddings: Tensor,
    indices: Tensor | None = None,
    tolerance: float = UNIQUE_TOLERANCE,
) -> UniCAMResult:
    """Distilled (student relative to base) and residual (base relative to student) maps of a batch.

    Args:
        student, base: the two models (put in eval mode for the call). ``base`` may be a teacher.
        layer: a layer name both models have, or ``(student_layer, base_layer)``; spatial outputs.
        inputs: (B, C, H, W) normalised images; B >= 4.
        labels: (B,) ground-truth classes; the batch must hold at least 2 classes.
        label_embeddings: (num_classes, dim) class embeddings (e.g. of the class names).
        indices: (B,) dataset indices, recorded with the maps.
        tolerance: 1 - R*(student, base)^2 at or below which the models share all their structure.
    """
    student_layer, base_layer = (layer, layer) if isinstance(layer, str) else layer
    labels = torch.as_tensor(labels).long().reshape(-1)
    check_batch(inputs, labels, label_embeddings)
    embeddings = label_embeddings.detach().to(inputs.device, torch.float64)
    embeddings = embeddings[labels.to(inputs.device)]

    # The objective depends on the layers' activations only: the forward passes need no graph, and
    # the gradient is taken with respect to the activations as leaves.
    s = layer_features(student, student_layer, inputs).requires_grad_()
    b = layer_features(base, base_layer, inputs).requires_grad_()
    with torch.enable_grad():
        found = unique_gradients((s, b), (s, b), embeddings, tolerance)
    if found.grads is None:
        zeros = torch.zeros(inputs.shape[0], *inputs.shape[-2:], device=inputs.device)
        maps = (zeros, zeros.clone())
    else:
        size = inputs.shape[-2:]
        grad_s, grad_b = found.grads
        maps = (cam_from(s.detach(), grad_s, size), cam_from(b.detach(), grad_b, size))

    return UniCAMResult(
        distilled=maps[0],
        residual=maps[1],
        labels=labels.cpu(),
        indices=None if indices is None else torch.as_tensor(indices).reshape(-1).cpu(),
        objective_distilled=found.objectives[0],
        objective_residual=found.objectives[1],
        unique_fraction=found.unique_fraction,
        empty=found.grads is None,
    )


class UniqueGradients(NamedTuple):
    """What :func:`unique_gradients` finds: ``grads`` (d distilled / d student leaf, d residual /
    d base leaf), None when the models share all their structure; the two objectives; and
    ``unique_fraction`` = 1 - R*(student, base)^2."""

    grads: tuple[Tensor, Tensor] | None
    objectives: tuple[float, float]
    unique_fraction: float


def unique_gradients(
    leaves: tuple[Tensor, Tensor],
    examples: tuple[Tensor, Tensor],
    embeddings: Tensor,
    tolerance: float = UNIQUE_TOLERANCE,
) -> UniqueGradients:
    """UniCAM's two semi-partial dCor objectives and their gradients, for any kind of map.

    ``leaves`` are the student's and the base's activations (tensors that require grad);
    ``examples`` one row per example computed from them under grad mode (the leaves themselves for
    image features, which the distances flatten; a pooled vector per sentence for tokens);
    ``embeddings`` (B, dim) the label embedding of each example's class. The other model's matrix
    is a constant in each objective, so one backward pass through their sum gives both gradients.
    """
    a, c = (u_centered(pairwise_distances(x)) for x in examples)
    e = u_centered(pairwise_distances(embeddings))
    shared = u_correlation(a.detach(), c.detach()).clamp(-1.0, 1.0).item()
    unique_fraction = 1.0 - shared**2
    if unique_fraction <= tolerance:
        return UniqueGradients(None, (0.0, 0.0), unique_fraction)
    distilled = u_correlation(_residual(a, c.detach()), e)
    residual = u_correlation(_residual(c, a.detach()), e)
    grads = torch.autograd.grad(distilled + residual, leaves)
    return UniqueGradients(tuple(grads), (distilled.item(), residual.item()), unique_fraction)


def _residual(own: Tensor, other: Tensor) -> Tensor:
    """``own`` minus its projection on ``other`` (U-centred matrices): what ``other`` lacks."""
    return own - (u_inner(own, other) / u_inner(other, other)) * other


def check_batch(inputs: Tensor, labels: Tensor, label_embeddings: Tensor) -> None:
    """Refuse a batch UniCAM cannot explain: labels not one per input, fewer than 4 examples or 2
    classes, or labels that do not index ``label_embeddings`` (num_classes, dim)."""
    if labels.numel() != inputs.shape[0]:
        raise ValueError(f"got {labels.numel()} labels for a batch of {inputs.shape[0]} inputs")
    if inputs.shape[0] < 4:
        raise ValueError(f"UniCAM needs a batch of at least 4 examples, got {inputs.shape[0]}")
    classes = labels.unique()
    if classes.numel() < 2:
        raise ValueError(
            f"UniCAM needs a batch with at least 2 classes: its objective correlates distances "
            f"between examples with distances between their label embeddings, which are all zero "
            f"when every example has class {classes.tolist()}. Compose batches of several classes."
        )
    if label_embeddings.ndim != 2:
        raise ValueError(
            "label_embeddings must be (num_classes, dim), "
            f"got shape {tuple(label_embeddings.shape)}"
        )
    if int(labels.max()) >= label_embeddings.shape[0] or int(labels.min()) < 0:
        raise ValueError(
            f"labels must index the {label_embeddings.shape[0]} rows of label_embeddings, "
            f"got classes {classes.tolist()}"
        )
