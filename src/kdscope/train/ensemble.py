"""Several teachers as one module."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from kdscope.models import ModelInfo, describe, set_info


class TeacherEnsemble(nn.Module):
    """Several teachers run as one module; logits stacked per example as (B, K, C), the layout the
    teacher cache stores (one row per example)."""

    def __init__(self, teachers: list[nn.Module]):
        super().__init__()
        self.teachers = nn.ModuleList(teachers)
        counts = {describe(t).num_classes for t in teachers} - {None}
        if len(counts) > 1:
            raise ValueError(f"the teachers predict different class counts: {sorted(counts)}")
        set_info(self, ModelInfo(num_classes=counts.pop() if counts else None))

    def forward(self, x: Tensor) -> Tensor:
        return torch.stack([t(x) for t in self.teachers], dim=1)
