"""Self-distillation: the deepest classifier of a network teaches exits on its shallower stages."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdscope.features import FeatureTap
from kdscope.methods.adapters import require_maps
from kdscope.methods.base import BindContext, Method, Needs, Outputs, register_method
from kdscope.methods.layers import Layers
from kdscope.methods.params import LAYERS, NON_NEGATIVE, POSITIVE, UNIT
from kdscope.methods.response import kd_div


class Exit(nn.Module):
    """A shallow classifier of BYOT: bottleneck to the deepest stage's map shape, pooling, linear.

    The bottleneck is 1x1 conv to C/4 channels, a k x k conv with stride k (k = the spatial ratio to
    the deepest map), 1x1 conv to C channels, each followed by BN and ReLU (C = the deepest map's
    channels), as in the widely used re-implementation of BYOT; the paper only says "bottleneck".
    """

    def __init__(self, shape: tuple[int, ...], target: tuple[int, ...], num_classes: int):
        super().__init__()
        (_, c, h, w), (_, ct, ht, wt) = shape, target
        if h % ht or w % wt:
            raise ValueError(
                f"an exit on a {h}x{w} map cannot reach the deepest map's {ht}x{wt}: the sizes "
                "must divide"
            )
        mid = max(ct // 4, 1)
        k = (h // ht, w // wt)
        self.bottleneck = nn.Sequential(
            nn.Conv2d(c, mid, 1), nn.BatchNorm2d(mid), nn.ReLU(),
            nn.Conv2d(mid, mid, k, stride=k), nn.BatchNorm2d(mid), nn.ReLU(),
            nn.Conv2d(mid, ct, 1), nn.BatchNorm2d(ct), nn.ReLU(),
        )  # fmt: skip
        self.classifier = nn.Linear(ct, num_classes)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(the bottleneck's feature map, logits)."""
        feature = self.bottleneck(x)
        return feature, self.classifier(feature.mean(dim=(2, 3)))


@register_method("byot")
class BeYourOwnTeacher(Method):
    """Zhang, Song, Gao, Chen, Bao, Ma 2019, "Be Your Own Teacher: Improve the Performance of
    Convolutional Neural Networks via Self Distillation", ICCV 2019, arXiv:1905.08094.

    An :class:`Exit` is attached to every student stage but the last (``student_layers``, default
    the model's stages); the model's own output q_C is the deepest classifier and its
    last stage's map F_C the deepest feature. For each shallow exit i:

        (1 - alpha) * CE(q_i, y) + alpha * T^2 * KL(q_C^T || q_i^T) + beta * ||F_i - F_C||^2

    with q_C and F_C held constant (teachers do not learn from their students); the deepest
    classifier's own CE is the Trainer's, weighted 1 - alpha. Defaults alpha=0.1, beta=1e-6, T=3
    are the paper's. The squared L2 is summed over a map and averaged over the batch; the T^2
    factor is not in the paper's equation but is in its common re-implementation and in Hinton KD.
    The exits are training-time only: the deployed student is the unchanged model.
    """

    family = "scheme"
    paper = "Zhang et al. 2019, arXiv:1905.08094"
    layers = Layers.STAGES
    constraints = {
        "alpha": UNIT,
        "beta": NON_NEGATIVE,
        "temperature": POSITIVE,
        "student_layers": LAYERS,
    }

    def __init__(
        self,
        alpha: float = 0.1,
        beta: float = 1e-6,
        temperature: float = 3.0,
        student_layers: list[str] | None = None,
    ):
        super().__init__(Needs(teacher=False, student_features=True), 1.0 - alpha, student_layers)
        self.alpha = alpha
        self.beta = beta
        self.temperature = temperature

    def bind(self, ctx: BindContext) -> None:
        if len(self.student_layers) < 2:
            raise ValueError(
                f"byot needs at least 2 student layers (shallow exits + the deepest), got "
                f"{self.student_layers}"
            )
        shapes = [ctx.student_shapes[name] for name in self.student_layers]
        require_maps("byot", dict(zip(self.student_layers, shapes, strict=True)))
        self.exits = nn.ModuleList(Exit(s, shapes[-1], ctx.num_classes) for s in shapes[:-1])

    def forward(self, out: Outputs) -> dict[str, Tensor]:
        deep_logits = out.student_logits.detach().float()
        deep_feature = out.student_features[-1].detach().float()
        terms: dict[str, Tensor] = {}
        for i, (exit_, x) in enumerate(zip(self.exits, out.student_features, strict=False)):
            feature, logits = exit_(x)
            logits = logits.float()
            hint = (feature.float() - deep_feature).pow(2).flatten(1).sum(1).mean()
            terms[f"ce_exit{i}"] = (1.0 - self.alpha) * F.cross_entropy(logits, out.labels)
            terms[f"kd_exit{i}"] = self.alpha * kd_div(logits, deep_logits, self.temperature)
            terms[f"hint_exit{i}"] = self.beta * hint
        return terms

    @torch.no_grad()
    def exit_logits(self, student: nn.Module, x: Tensor) -> list[Tensor]:
        """Logits of every exit, shallowest first, then the student's own, for inputs ``x``."""
        with FeatureTap(student, self.student_layers, detach=True) as tap:
            logits = student(x)
        return [exit_(f)[1] for exit_, f in zip(self.exits, tap.ordered(), strict=False)] + [logits]
