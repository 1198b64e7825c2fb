"""Response-based methods: the student imitates the teacher's outputs."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from kdscope.methods.base import Method, Needs, Outputs, register_method


def kd_div(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """T^2 * KL(softmax(z_t/T) || softmax(z_s/T)), averaged over the batch (Hinton et al. 2015)."""
    log_p_s = F.log_softmax(student_logits / temperature, dim=1)
    log_p_t = F.log_softmax(teacher_logits / temperature, dim=1)
    kl = F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True)
    return kl * temperature**2


@register_method("none")
class NoDistillation(Method):
    """Baseline: the student trained on labels alone (cross-entropy, weight 1)."""

    needs = Needs(teacher=False)
    ce_weight = 1.0
    paper = "-"

    def __init__(self):
        super().__init__()

    def forward(self, out: Outputs) -> dict[str, Tensor]:
        return {}


@register_method("kd")
class VanillaKD(Method):
    """Hinton, Vinyals, Dean 2015, "Distilling the Knowledge in a Neural Network".

    loss = alpha * T^2 * KL(p_t^T || p_s^T), batch mean; the run adds (1 - alpha) * CE (0.1 * CE at the
    defaults) unless it sets its own CE weight. Defaults T=4, alpha=0.9 follow the common CIFAR recipe (mdistiller, CRD); the paper gives no
    single value.
    """

    needs = Needs(teacher_logits=True)
    paper = "Hinton et al. 2015, arXiv:1503.02531"

    def __init__(self, temperature: float = 4.0, alpha: float = 0.9):
        super().__init__()
        self.temperature = temperature
        self.alpha = alpha
        self.ce_weight = 1.0 - alpha

    def forward(self, out: Outputs) -> dict[str, Tensor]:
        return {"kd": self.alpha * kd_div(out.student_logits, out.teacher_logits, self.temperature)}
