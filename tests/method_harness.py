"""Drive a distillation method as the Trainer does, on tiny models (shared by the method tests)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from kdscope.features import FeatureTap
from kdscope.methods import BindContext, Method, Outputs


class Harness:
    """Resolve layers, bind on one dry pass, then run steps: ``terms, out = h.step(x, y)``."""

    def __init__(
        self,
        method: Method,
        student: nn.Module,
        teacher: nn.Module | None,
        x: Tensor,
        num_classes: int,
        num_train: int = 100,
    ):
        self.method, self.student, self.teacher = method, student, teacher
        if teacher is not None:
            teacher.eval().requires_grad_(False)
        method.resolve_layers(student, teacher)
        method.bind(
            BindContext(
                student,
                teacher,
                num_classes,
                num_train,
                _shapes(student, method.student_layers, x[:2]),
                _shapes(teacher, method.teacher_layers, x[:2]),
            )
        )

    def step(
        self,
        x: Tensor,
        y: Tensor,
        indices: Tensor | None = None,
        epoch: int = 0,
        teacher_logits: Tensor | None = None,
    ) -> tuple[dict[str, Tensor], Outputs]:
        m = self.method
        with FeatureTap(self.student, m.student_layers) as s_tap:
            logits = self.student(x)
        t_feats: list[Tensor] = []
        if self.teacher is not None:
            with torch.no_grad(), FeatureTap(self.teacher, m.teacher_layers, detach=True) as t_tap:
                t_out = self.teacher(x)
            t_feats = t_tap.ordered() if m.needs.teacher_features else []
            teacher_logits = t_out if teacher_logits is None else teacher_logits
        out = Outputs(
            student_logits=logits,
            labels=y,
            teacher_logits=teacher_logits,
            student_features=s_tap.ordered() if m.needs.student_features else [],
            teacher_features=t_feats,
            indices=indices,
            inputs=x,
            epoch=epoch,
        )
        return m(out), out


def _shapes(model: nn.Module | None, layers: list[str], x: Tensor) -> dict[str, tuple[int, ...]]:
    if model is None or not layers:
        return {}
    was = model.training
    model.eval()
    with torch.no_grad(), FeatureTap(model, layers, detach=True) as tap:
        model(x)
    model.train(was)
    return {name: tuple(t.shape) for name, t in tap.features.items()}
