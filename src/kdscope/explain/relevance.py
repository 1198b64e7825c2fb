"""FSS and RS on ROAD-perturbed inputs, per layer (Adhane et al., WACV 2025, Tables 1 and 2).

For each batch and layer pair, every explanation keeps its most relevant pixels (ROAD LeRF, the rest
imputed) and the model it explains is run on what is left:

- layer-specific features: the student on inputs kept by its own Grad-CAM, the base on inputs
  kept by its own Grad-CAM;
- unique features: the student on inputs kept by its UniCAM distilled map, the base on inputs
  kept by its UniCAM residual map.

FSS = dCor(student features, base features) and RS = dCor(model features, label embeddings of the
batch's classes), both averaged over batches. Grad-CAM explains each model's predicted class.
Batches with fewer than 2 classes (or 4 examples) are skipped and listed; a batch whose models have
no unique features at a layer (UniCAM ``empty``) is left out of that layer's UniCAM averages and
counted.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn

from kdscope.explain.gradcam import grad_cam, layer_features
from kdscope.explain.road import road_keep_top
from kdscope.explain.unicam import batch_composition, unicam
from kdscope.features import pair_layers
from kdscope.metrics.matrices import ZeroVarianceError
from kdscope.metrics.relevance import ESTIMATOR_NAMES, ESTIMATORS
from kdscope.models import describe

Estimator = Literal["bias_corrected", "v_statistic"]
SCORES = {
    "gradcam": ("fss", "rs_student", "rs_base"),
    "unicam": ("fss", "rs_distilled", "rs_residual"),
}


@dataclass
class LayerRelevance:
    """Per-batch scores at one layer pair (``None`` where a similarity was undefined)."""

    student_layer: str
    base_layer: str
    scores: dict[str, dict[str, list[float | None]]] = field(
        default_factory=lambda: {k: {name: [] for name in names} for k, names in SCORES.items()}
    )
    unicam_empty_batches: list[int] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "student_layer": self.student_layer,
            "base_layer": self.base_layer,
            **{
                kind: {name: _summary(values) for name, values in named.items()}
                for kind, named in self.scores.items()
            },
            "unicam_empty_batches": self.unicam_empty_batches,
        }


@dataclass
class RelevanceResult:
    """FSS/RS per layer and the protocol that produced them; ``to_dict()`` is relevance.json."""

    estimator: str
    keep_fraction: float
    noise_std: float
    layers: list[LayerRelevance]
    batches_used: list[int]
    batches_skipped: list[dict]
    compositions: list[dict]

    def to_dict(self) -> dict:
        return {
            "estimator": self.estimator,
            "perturbation": {
                "method": "ROAD noisy linear imputation, keep most relevant (LeRF)",
                "keep_fraction": self.keep_fraction,
                "noise_std": self.noise_std,
            },
            "layers": {f"{r.student_layer}|{r.base_layer}": r.to_dict() for r in self.layers},
            "batches_used": len(self.batches_used),
            "batches_skipped": self.batches_skipped,
            "batch_compositions": self.compositions,
        }


RELEVANCE_COLUMNS = (
    "fss_gradcam",
    "rs_base",
    "rs_student",
    "fss_unicam",
    "rs_distilled",
    "rs_residual",
)


def relevance_rows(relevance: dict) -> list[dict]:
    """One row per layer of ``RelevanceResult.to_dict()``: ``layer`` (the student's) and the batch
    means named in ``RELEVANCE_COLUMNS`` (None where no batch measured one)."""
    rows = []
    for layer in relevance["layers"].values():
        g, u = layer["gradcam"], layer["unicam"]
        stats = [
            g["fss"],
            g["rs_base"],
            g["rs_student"],
            u["fss"],
            u["rs_distilled"],
            u["rs_residual"],
        ]
        means = [c["mean"] if c["n"] else None for c in stats]
        rows.append(
            {"layer": layer["student_layer"], **dict(zip(RELEVANCE_COLUMNS, means, strict=True))}
        )
    return rows


def perturbed_relevance(
    student: nn.Module,
    base: nn.Module,
    batches: Iterable[Sequence[Tensor]],
    label_embeddings: Tensor,
    layers: Sequence[tuple[str, str]] | None = None,
    keep_fraction: float = 0.5,
    estimator: Estimator = "bias_corrected",
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    noise_std: float = 0.01,
    max_batches: int | None = None,
    seed: int = 0,
) -> RelevanceResult:
    """FSS (student vs base) and RS (each model vs labels) of Grad-CAM and UniCAM features.

    Args:
        student, base: the models (``base`` may be a teacher); put in eval mode for the call.
        batches: yields ``(inputs, labels)`` or ``(inputs, labels, indices)`` (a DataLoader over
            a split).
        label_embeddings: (num_classes, dim) class embeddings.
        layers: ``(student_layer, base_layer)`` pairs; default: the models' stages
            paired by relative depth.
        keep_fraction: share of pixels each explanation keeps.
        estimator: ``"bias_corrected"`` R* (default; can be negative) or ``"v_statistic"``
            dCor^2.
        mean, std: the normalisation of ``inputs``, undone for imputation (ROAD works on [0, 1]
            images); ``None`` when inputs are already in [0, 1].
        noise_std: ROAD imputation noise.
        max_batches: stop after this many batches (used or skipped).
        seed: seeds the ROAD noise and tie-breaks.
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {sorted(ESTIMATORS)}, got {estimator!r}")
    similarity = ESTIMATORS[estimator]
    pairs = list(layers) if layers is not None else default_layer_pairs(student, base)
    results = [LayerRelevance(s, b) for s, b in pairs]
    generator = torch.Generator().manual_seed(seed)
    used, skipped, compositions = [], [], []
    device = next(student.parameters()).device

    for i, batch in enumerate(batches):
        if max_batches is not None and i >= max_batches:
            break
        inputs, labels = batch[0], torch.as_tensor(batch[1]).long()
        indices = batch[2] if len(batch) > 2 else None
        reason = _skip_reason(labels)
        if reason:
            skipped.append({"batch": i, "reason": reason})
            continue
        inputs = inputs.to(device)
        images = unnormalize(inputs, mean, std)
        embeddings = label_embeddings.to(device)[labels.to(device)]

        def keep_top(maps: Tensor, images: Tensor = images) -> Tensor:
            kept = road_keep_top(images, maps, keep_fraction, noise_std, generator)
            return normalize(kept, mean, std)

        for result in results:
            s_layer, b_layer = result.student_layer, result.base_layer
            uc = unicam(student, base, (s_layer, b_layer), inputs, labels, label_embeddings)
            features = {
                "gradcam": (
                    layer_features(student, s_layer, keep_top(grad_cam(student, s_layer, inputs))),
                    layer_features(base, b_layer, keep_top(grad_cam(base, b_layer, inputs))),
                ),
            }
            if uc.empty:
                result.unicam_empty_batches.append(i)
            else:
                features["unicam"] = (
                    layer_features(student, s_layer, keep_top(uc.distilled)),
                    layer_features(base, b_layer, keep_top(uc.residual)),
                )
            for kind, (f_s, f_b) in features.items():
                fss, rs_s, rs_b = SCORES[kind]
                named = result.scores[kind]
                named[fss].append(_score(similarity, f_s, f_b))
                named[rs_s].append(_score(similarity, f_s, embeddings))
                named[rs_b].append(_score(similarity, f_b, embeddings))
        used.append(i)
        compositions.append({"batch": i, **batch_composition(labels, indices)})

    return RelevanceResult(
        estimator=ESTIMATOR_NAMES[estimator],
        keep_fraction=keep_fraction,
        noise_std=noise_std,
        layers=results,
        batches_used=used,
        batches_skipped=skipped,
        compositions=compositions,
    )


def default_layer_pairs(student: nn.Module, base: nn.Module) -> list[tuple[str, str]]:
    """The models' stages paired by relative depth."""
    for name, model in (("student", student), ("base", base)):
        if not describe(model).stages:
            raise ValueError(
                f"the {name} ({type(model).__name__}) declares no stages in its ModelInfo; pass "
                "layers=[(student_layer, base_layer), ...]"
            )
    return pair_layers(describe(student).stages, describe(base).stages)


def _skip_reason(labels: Tensor) -> str | None:
    if labels.numel() < 4:
        return f"{labels.numel()} examples (need >= 4)"
    if labels.unique().numel() < 2:
        return f"a single class ({int(labels[0])}); dCor with label embeddings needs >= 2"
    return None


def _score(similarity, x: Tensor, y: Tensor) -> float | None:
    try:
        return similarity(x, y).item()
    except ZeroVarianceError:
        return None


def _summary(values: list[float | None]) -> dict:
    valid = [v for v in values if v is not None]
    n = len(valid)
    mean = sum(valid) / n if n else None
    std = math.sqrt(sum((v - mean) ** 2 for v in valid) / (n - 1)) if n > 1 else None
    return {"mean": mean, "std": std, "n": n, "per_batch": values}


def unnormalize(x: Tensor, mean: Sequence[float] | None, std: Sequence[float] | None) -> Tensor:
    """Undo per-channel ``(x - mean) / std``; no change when either is None."""
    if mean is None or std is None:
        return x
    m, s = _stats(x, mean, std)
    return x * s + m


def normalize(x: Tensor, mean: Sequence[float] | None, std: Sequence[float] | None) -> Tensor:
    """Per-channel ``(x - mean) / std``; no change when either is None."""
    if mean is None or std is None:
        return x
    m, s = _stats(x, mean, std)
    return (x - m) / s


def _stats(x: Tensor, mean: Sequence[float], std: Sequence[float]) -> tuple[Tensor, Tensor]:
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).reshape(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).reshape(1, -1, 1, 1)
    return m, s
