"""Adversarial KD: a discriminator tells teacher from student logits; the student fools it."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdscope.methods.base import LOGITS, BindContext, Method, Outputs, register_method
from kdscope.methods.params import NON_NEGATIVE, POSITIVE, UNIT
from kdscope.methods.response import kd_div


class _ReverseGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, scale: float) -> Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        return -ctx.scale * grad, None


def reverse_gradient(x: Tensor, scale: float = 1.0) -> Tensor:
    """Identity forward; multiplies the gradient by ``-scale`` backward (Ganin & Lempitsky 2015)."""
    return _ReverseGradient.apply(x, scale)


class LogitDiscriminator(nn.Module):
    """MLP on logits: C -> hidden -> hidden -> 1 (real = teacher), LeakyReLU(0.2) between."""

    def __init__(self, num_classes: int, hidden: int = 128):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(num_classes, hidden), nn.LeakyReLU(0.2),
            nn.Linear(hidden, hidden), nn.LeakyReLU(0.2),
            nn.Linear(hidden, 1),
        )  # fmt: skip

    def forward(self, logits: Tensor) -> Tensor:
        return self.net(logits).squeeze(1)


@register_method("adversarial")
class AdversarialKD(Method):
    """Xu, Hsu, Huang 2018, "Training Shallow and Thin Networks for Acceleration via Knowledge
    Distillation with Conditional Adversarial Networks", ICLR 2018 workshop, arXiv:1709.00513.

    A discriminator D (:class:`LogitDiscriminator`) learns to tell the teacher's logits (real) from
    the student's (fake): L_D = BCE(D(z_t), 1) + BCE(D(z_s), 0); the student also minimises the
    Hinton KD term. loss = alpha * T^2 * KL(p_t^T || p_s^T) + adv_weight * L_D, CE weight 1 - alpha.

    Deviation, to keep one optimizer and one backward: z_s reaches D through a gradient-reversal
    layer (Ganin & Lempitsky 2015), so the same backward that lowers L_D for D raises it for the
    student: the student takes the minimax (saturating) GAN gradient instead of the paper's
    alternating updates with the non-saturating loss, and D shares the student's optimizer and
    learning rate. Also not taken from the paper: its conditional (class-aware) discriminator and L1
    term; D's architecture (two hidden layers of 128) is ours. T=4, alpha=0.9 are ``kd``'s,
    adv_weight=1 is ours.
    """

    family = "scheme"
    paper = "Xu et al. 2018, arXiv:1709.00513"
    constraints = {"temperature": POSITIVE, "alpha": UNIT, "adv_weight": NON_NEGATIVE}

    def __init__(self, temperature: float = 4.0, alpha: float = 0.9, adv_weight: float = 1.0):
        super().__init__(LOGITS, 1.0 - alpha)
        self.temperature = temperature
        self.alpha = alpha
        self.adv_weight = adv_weight

    def bind(self, ctx: BindContext) -> None:
        self.discriminator = LogitDiscriminator(ctx.num_classes)

    def forward(self, out: Outputs) -> dict[str, Tensor]:
        z_s, z_t = out.student_logits.float(), out.teacher_logits.float()
        real = self.discriminator(z_t)
        fake = self.discriminator(reverse_gradient(z_s))
        adv = F.binary_cross_entropy_with_logits(
            real, torch.ones_like(real)
        ) + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake))
        return {
            "kd": self.alpha * kd_div(z_s, z_t, self.temperature),
            "adv": self.adv_weight * adv,
        }
