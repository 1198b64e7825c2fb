"""Token-level distillation objectives for language models: plain functions of (..., V) logits,
and the methods ``reverse_kl`` and ``jsd`` built on them (``kd`` is the one of
:mod:`~kdscope.methods.response`, which already averages over every predicted position).

Every loss compares the two next-token distributions at each predicted position and averages over
all positions (B * T for (B, T, V) logits): one position weighs as much as one example of
classification KD. With ``temperature`` tau both distributions are softmax(z / tau) and the loss is
scaled by tau^2, as Hinton et al. do, so that its gradients keep their size across temperatures;
at tau = 1 (the default) each is its paper's loss.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.nn import functional as F

from kdscope.methods.base import LOGITS, Method, Outputs, register_method
from kdscope.methods.params import POSITIVE, UNIT
from kdscope.methods.response import kd_div
from kdscope.methods.topk import check_temperature


def _positions(student_logits: Tensor, teacher_logits: Tensor) -> tuple[Tensor, Tensor]:
    if student_logits.shape != teacher_logits.shape or student_logits.dim() < 2:
        raise ValueError(
            "student and teacher logits must have the same shape (..., vocab), got "
            f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}"
        )
    v = student_logits.shape[-1]
    return student_logits.reshape(-1, v), teacher_logits.reshape(-1, v)


def token_kd(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Forward KL per position, tau^2 * mean KL(p_T^tau || p_S^tau) (Hinton, Vinyals, Dean 2015,
    "Distilling the Knowledge in a Neural Network", arXiv:1503.02531): kdscope's ``kd_div`` with
    positions as examples."""
    check_temperature(temperature)
    s, t = _positions(student_logits, teacher_logits)
    return kd_div(s, t, temperature)


def reverse_kl(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Reverse KL per position, tau^2 * mean KL(p_S^tau || p_T^tau) (mode-seeking).

    Gu, Dong, Wei, Huang 2024, "MiniLLM: Knowledge Distillation of Large Language Models", ICLR
    2024, arXiv:2306.08543. Deviation: MiniLLM minimises the *sequence-level* reverse KL by policy
    gradient on sequences the student samples; this is its off-policy, token-level form on given
    sequences (the data, or samples drawn beforehand), the exact reverse KL of each next-token
    distribution, differentiated through p_S in both its weight and its log.
    """
    check_temperature(temperature)
    s, t = _positions(student_logits, teacher_logits)
    log_q = F.log_softmax(s / temperature, dim=1)
    log_p = F.log_softmax(t / temperature, dim=1)
    return F.kl_div(log_p, log_q, reduction="batchmean", log_target=True) * temperature**2


def generalized_jsd(
    student_logits: Tensor, teacher_logits: Tensor, beta: float = 0.5, temperature: float = 1.0
) -> Tensor:
    """Generalised Jensen-Shannon divergence per position (GKD).

    Agarwal, Vieillard, Zhou, Stanczyk, Ramos, Geist, Bachem 2024, "On-Policy Distillation of
    Language Models: Learning from Self-Generated Mistakes", ICLR 2024, arXiv:2306.13649:
    JSD_beta = beta KL(p_T || m) + (1 - beta) KL(p_S || m), m = beta p_T + (1 - beta) p_S, for beta
    in (0, 1); beta = 0.5 is the symmetric JSD. Convention at the ends (TRL's ``GKDTrainer``, whose
    ``beta=0`` is "the KL divergence" and ``beta=1`` "the inverse KL"): beta = 0 is the forward KL,
    KL(p_T || p_S) (:func:`token_kd`), and beta = 1 the reverse KL, KL(p_S || p_T)
    (:func:`reverse_kl`). They are the limits of JSD_beta / beta as beta -> 0 and of
    JSD_beta / (1 - beta) as beta -> 1; JSD_beta itself vanishes at both ends, so the loss jumps
    there: near an end it is about beta (or 1 - beta) times the KL. m is formed in log space (a
    logsumexp), so tiny probabilities do not underflow. This is the loss only; GKD's on-policy
    part (training on the student's own samples) is a data choice left to the caller.
    """
    check_temperature(temperature)
    if not 0 <= beta <= 1:
        raise ValueError(
            "beta must lie in [0, 1] (0: forward KL, 0.5: symmetric JSD, 1: reverse KL), "
            f"got {beta}"
        )
    if beta == 0:
        return token_kd(student_logits, teacher_logits, temperature)
    if beta == 1:
        return reverse_kl(student_logits, teacher_logits, temperature)
    s, t = _positions(student_logits, teacher_logits)
    log_q = F.log_softmax(s / temperature, dim=1)
    log_p = F.log_softmax(t / temperature, dim=1)
    log_m = torch.logaddexp(log_p + math.log(beta), log_q + math.log(1 - beta))
    kl_teacher = F.kl_div(log_m, log_p, reduction="batchmean", log_target=True)
    kl_student = F.kl_div(log_m, log_q, reduction="batchmean", log_target=True)
    return (beta * kl_teacher + (1 - beta) * kl_student) * temperature**2


def _scores_last(out: Outputs) -> tuple[Tensor, Tensor]:
    """Student and teacher logits in float32 with the class scores on the last dimension (where
    token logits have them; a classifier's (B, C) too; a segmenter's are moved there)."""
    return (
        out.student_logits.float().movedim(out.class_dim, -1),
        out.teacher_logits.float().movedim(out.class_dim, -1),
    )


@register_method("reverse_kl")
class ReverseKLDistillation(Method):
    """Reverse KL per position, the objective of MiniLLM (Gu, Dong, Wei, Huang 2024, ICLR 2024,
    arXiv:2306.08543) in its off-policy, token-level form (see :func:`reverse_kl`).

    loss = alpha * tau^2 * mean over positions of KL(p_S^tau || p_T^tau); the run adds
    (1 - alpha) * CE, as ``kd`` does. Defaults: tau = 1 (MiniLLM's temperature) and alpha = 0.9
    (``kd``'s; MiniLLM mixes in a language-modelling loss on pre-training text instead).
    """

    paper = "Gu et al. 2024, arXiv:2306.08543 (off-policy, per token)"
    constraints = {"temperature": POSITIVE, "alpha": UNIT}

    def __init__(self, temperature: float = 1.0, alpha: float = 0.9):
        super().__init__(LOGITS, ce_weight=1.0 - alpha)
        self.temperature = temperature
        self.alpha = alpha

    def forward(self, out: Outputs) -> dict[str, Tensor]:
        student, teacher = _scores_last(out)
        return {"reverse_kl": self.alpha * reverse_kl(student, teacher, self.temperature)}


@register_method("jsd")
class JSDDistillation(Method):
    """The generalised Jensen-Shannon divergence of GKD per position (Agarwal et al. 2024, ICLR
    2024, arXiv:2306.13649; see :func:`generalized_jsd`), on the training data (GKD's
    supervised form; its on-policy share lambda is a data choice not made here).

    loss = alpha * tau^2 * mean over positions of JSD_beta(p_T^tau, p_S^tau); the run adds
    (1 - alpha) * CE. beta = 0 is the forward KL, 0.5 the symmetric JSD (the default, as TRL's),
    1 the reverse KL. tau = 1 and alpha = 0.9 as ``reverse_kl``.
    """

    paper = "Agarwal et al. 2024, arXiv:2306.13649 (supervised, per token)"
    constraints = {"beta": UNIT, "temperature": POSITIVE, "alpha": UNIT}

    def __init__(self, beta: float = 0.5, temperature: float = 1.0, alpha: float = 0.9):
        super().__init__(LOGITS, ce_weight=1.0 - alpha)
        self.beta = beta
        self.temperature = temperature
        self.alpha = alpha

    def forward(self, out: Outputs) -> dict[str, Tensor]:
        student, teacher = _scores_last(out)
        jsd = generalized_jsd(student, teacher, self.beta, self.temperature)
        return {"jsd": self.alpha * jsd}
