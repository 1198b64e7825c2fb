"""On-policy distillation of language models: some steps train on text the student samples."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from kdscope.methods.base import LOGITS, BindContext, Method, Outputs, register_method
from kdscope.methods.params import POSITIVE, UNIT, Interval
from kdscope.methods.token_losses import generalized_jsd
from kdscope.models.generate import generate


@register_method("on_policy")
class OnPolicyDistillation(Method):
    """GKD's on-policy scheme (Agarwal et al. 2024, "On-Policy Distillation of Language Models:
    Learning from Self-Generated Mistakes", ICLR 2024, arXiv:2306.13649).

    With probability ``lmbda`` a step is on-policy: each block of the batch keeps its first
    ``prompt`` share of tokens (at least one, at most all but one) and the student samples the
    rest (temperature 1, no gradient, :func:`~kdscope.models.generate.generate`); student and
    teacher then score that sequence, and the loss is ``alpha * JSD_beta``
    (:func:`~kdscope.methods.token_losses.generalized_jsd`) over the positions that predict the
    sampled tokens. Otherwise the step is supervised: ``alpha * JSD_beta`` on the data's
    positions, which is the ``jsd`` method. The run adds ``(1 - alpha) * CE`` on the data in both
    cases. lmbda = 0.5 and beta = 0.5 are TRL's ``GKDConfig`` defaults; lmbda = 0 is ``jsd``.

    Deviations: GKD samples completions of prompts from a prompt set; here the prompts are the
    openings of training blocks and the sample fills the block. An on-policy step still runs the
    student on the data batch (the CE term reads it), so it costs that forward, the sampling (one
    student forward per sampled token, no KV cache) and a forward of both models on the samples.
    The teacher scores the samples live: the teacher cache serves the supervised steps only.
    """

    family = "scheme"
    paper = "Agarwal et al. 2024, arXiv:2306.13649 (on-policy)"
    constraints = {
        "lmbda": UNIT,
        "beta": UNIT,
        "temperature": POSITIVE,
        "alpha": UNIT,
        "prompt": Interval(0, 1, closed="left"),
    }

    def __init__(
        self,
        lmbda: float = 0.5,
        beta: float = 0.5,
        temperature: float = 1.0,
        alpha: float = 0.9,
        prompt: float = 0.5,
    ):
        super().__init__(LOGITS, ce_weight=1.0 - alpha)
        self.lmbda, self.beta, self.temperature = lmbda, beta, temperature
        self.alpha, self.prompt = alpha, prompt

    def bind(self, ctx: BindContext) -> None:
        # A tuple, not submodules: the Trainer already optimises the student, and the teacher is
        # frozen; registered here they would be counted twice and saved with the method.
        self._models: tuple[nn.Module, nn.Module] = (ctx.student, ctx.teacher)

    def sample(self, inputs: Tensor) -> tuple[Tensor, int]:
        """The student's on-policy sequences for a batch of blocks (B, T) and the prompt length."""
        student = self._models[0]
        if inputs.shape[1] < 2:
            raise ValueError(f"on_policy needs blocks of at least 2 tokens, got {inputs.shape[1]}")
        keep = min(inputs.shape[1] - 1, max(1, round(self.prompt * inputs.shape[1])))
        return generate(student, inputs[:, :keep], inputs.shape[1] - keep), keep

    def forward(self, out: Outputs) -> dict[str, Tensor]:
        if out.class_dim != -1 or out.inputs is None:
            raise ValueError("on_policy samples text: it needs a language model's token batches")
        if self.lmbda > 0 and torch.rand(()).item() < self.lmbda:
            student, teacher = self._models
            sequences, keep = self.sample(out.inputs)
            with torch.no_grad():
                t_logits = teacher(sequences)[:, keep - 1 : -1]
            s_logits = student(sequences)[:, keep - 1 : -1]
        else:
            s_logits, t_logits = out.student_logits, out.teacher_logits
        jsd = generalized_jsd(s_logits.float(), t_logits.float(), self.beta, self.temperature)
        return {"jsd": self.alpha * jsd}
