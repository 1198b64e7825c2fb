"""Drive a distillation method through the one training step on tiny models (shared by the method
tests)."""

from __future__ import annotations

from torch import Tensor, nn

from kdscope.methods import Method, Outputs
from kdscope.train import DistillStep


class Harness:
    """Bind ``method`` as the Trainer does, then take steps: ``terms, out = h.step(x, y)``."""

    def __init__(
        self,
        method: Method,
        student: nn.Module,
        teacher: nn.Module | None,
        x: Tensor,
        num_classes: int,
        num_train: int = 100,
    ):
        self.distill = DistillStep(student, teacher, method)
        assert self.distill.num_classes == num_classes
        self.distill.bind(x[:2], num_train)

    def step(
        self, x: Tensor, y: Tensor, indices: Tensor | None = None, epoch: int = 0
    ) -> tuple[dict[str, Tensor], Outputs]:
        with self.distill.taps():
            result = self.distill(x, y, indices, epoch)
        return result.terms, result.outputs
