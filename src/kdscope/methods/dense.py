"""Distillation methods made for dense prediction: pixel-wise KD and channel-wise distillation.

Both read score maps: a segmenter's per-pixel logits (B, C, H, W), or, for ``cwd`` on features,
any (B, C, H, W) feature maps (a detector's FPN levels by default).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from kdscope.methods.base import (
    FEATURES,
    LOGITS,
    BindContext,
    Method,
    Outputs,
    register_method,
)
from kdscope.methods.layers import Layers
from kdscope.methods.params import LAYERS, NON_NEGATIVE, POSITIVE, Options
from kdscope.methods.response import kd_div


@register_method("pixel_kd")
class PixelwiseKD(Method):
    """Liu, Chen, Liu, Qin, Luo and Wang 2019, "Structured Knowledge Distillation for Semantic
    Segmentation", CVPR 2019, arXiv:1903.04197: the pixel-wise term.

    loss = weight * T^2 * (1 / (B H W)) sum_i KL(q_i^t || q_i^s), q_i the softmax over classes of
    the logits at pixel i (:func:`~kdscope.methods.response.kd_div` over ``class_dim``), plus CE
    weight 1. weight=10 and T=1 are the paper's (lambda_1 = 10). Deviation: the paper writes
    KL(q^s || q^t); its code (and this) minimise the cross-entropy to the teacher's
    distribution, whose gradient is that of KL(q^t || q^s). On (B, locations, C) detection logits
    it is the same average over locations.
    """

    family = "response"
    paper = "Liu et al. 2019, arXiv:1903.04197"
    constraints = {"weight": NON_NEGATIVE, "temperature": POSITIVE}

    def __init__(self, weight: float = 10.0, temperature: float = 1.0):
        super().__init__(LOGITS, ce_weight=1.0)
        self.weight = weight
        self.temperature = temperature

    def forward(self, out: Outputs) -> dict[str, Tensor]:
        kl = kd_div(
            out.student_logits.float(),
            out.teacher_logits.float(),
            self.temperature,
            out.class_dim,
        )
        return {"pixel_kd": self.weight * kl}


def channel_wise_divergence(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    """CWD's loss: T^2 / (B C) * sum_{b, c} KL(phi(t_bc) || phi(s_bc)), phi the softmax over the
    H x W positions of one channel's map at temperature T (Shu et al. 2021, Eq. 3-4, averaged over
    the batch as in their code)."""
    if student.shape != teacher.shape or student.dim() != 4:
        raise ValueError(
            "channel-wise distillation needs maps of one shape (B, C, H, W), got "
            f"{tuple(student.shape)} and {tuple(teacher.shape)}"
        )
    b, c = student.shape[:2]
    log_s = F.log_softmax(student.float().flatten(2) / temperature, dim=2)
    log_t = F.log_softmax(teacher.float().flatten(2) / temperature, dim=2)
    kl = F.kl_div(log_s, log_t, reduction="sum", log_target=True)
    return kl * temperature**2 / (b * c)


@register_method("cwd")
class ChannelWiseKD(Method):
    """Shu, Liu, Gao, Yan and Shen 2021, "Channel-wise Knowledge Distillation for Dense
    Prediction", ICCV 2021, arXiv:2011.13256.

    loss = weight * :func:`channel_wise_divergence` (each channel's map turned into a distribution
    over positions, the student's matched to the teacher's), CE weight 1. ``maps="logits"``: the
    segmenters' score maps (B, classes, H, W), the paper's main setting, defaults T=4, weight 3.
    ``maps="features"``: feature maps, by default a detector's FPN levels paired one to one (the
    paper's detection setting), each student map through a 1x1 convolution to the teacher's
    channels when they differ (as the authors' code does); terms are averaged over the levels.
    """

    family = "feature"
    paper = "Shu et al. 2021, arXiv:2011.13256"
    constraints = {
        "weight": NON_NEGATIVE,
        "temperature": POSITIVE,
        "maps": Options(("logits", "features")),
        "student_layers": LAYERS,
        "teacher_layers": LAYERS,
    }

    def __init__(
        self,
        weight: float = 3.0,
        temperature: float = 4.0,
        maps: str = "logits",
        student_layers: list[str] | None = None,
        teacher_layers: list[str] | None = None,
    ):
        super().__init__(
            LOGITS if maps == "logits" else FEATURES, 1.0, student_layers, teacher_layers
        )
        # Which layers it reads depends on what it distils.
        self.layers = Layers.NONE if maps == "logits" else Layers.LEVELS
        self.weight = weight
        self.temperature = temperature
        self.maps = maps

    def bind(self, ctx: BindContext) -> None:
        if self.maps == "logits":
            return
        self.connectors = nn.ModuleList()
        for s, t in zip(self.student_layers, self.teacher_layers, strict=True):
            cs, ct = ctx.student_shapes[s][1], ctx.teacher_shapes[t][1]
            self.connectors.append(nn.Conv2d(cs, ct, 1) if cs != ct else nn.Identity())

    def forward(self, out: Outputs) -> dict[str, Tensor]:
        if self.maps == "logits":
            if out.student_logits.dim() != 4:
                raise ValueError(
                    "cwd maps='logits' reads score maps (B, C, H, W); for a detector's "
                    "(B, locations, C) logits use maps='features'"
                )
            loss = channel_wise_divergence(out.student_logits, out.teacher_logits, self.temperature)
        else:
            pairs = zip(self.connectors, out.student_features, out.teacher_features, strict=True)
            terms = [channel_wise_divergence(c(s), t, self.temperature) for c, s, t in pairs]
            loss = sum(terms) / len(terms)
        return {"cwd": self.weight * loss}
