"""Several teachers as one module, and the class count a model predicts."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class TeacherEnsemble(nn.Module):
    """Several teachers run as one module; logits stacked per example as (B, K, C)."""

    def __init__(self, teachers: list[nn.Module]):
        super().__init__()
        self.teachers = nn.ModuleList(teachers)
        self.feature_layers: list[str] = []

    def forward(self, x: Tensor) -> Tensor:
        return torch.stack([t(x) for t in self.teachers], dim=1)


def infer_classes(model: nn.Module | None) -> int | None:
    if isinstance(model, TeacherEnsemble):
        counts = {infer_classes(t) for t in model.teachers} - {None}
        if len(counts) > 1:
            raise ValueError(f"the teachers predict different class counts: {sorted(counts)}")
        return counts.pop() if counts else None
    spec = getattr(model, "kdscope_spec", None)
    if spec:
        return spec["num_classes"]
    classifier = getattr(model, "classifier", None)
    return getattr(classifier, "out_features", None)
