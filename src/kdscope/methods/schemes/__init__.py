"""Schemes that change the training loop, not just the loss (shared/specs/methods.md, "Schemes").

Losses over extra trainable parts, registered methods run by the one training step: ``dml`` (online
peers), ``byot`` (self-distillation exits), ``adversarial`` (a discriminator trained through a
gradient-reversal layer), ``lwf`` (lifelong learning) and ``on_policy`` (GKD: language models
trained in part on their own samples). Sequences of runs (teacher-assistant
chains, born-again generations, data-free and quantized students) are in :mod:`kdscope.pipelines`.
Multi-teacher KD needs neither: pass ``teacher=[t1, t2, ...]`` with the ``multi_teacher`` method.
"""

from kdscope.methods.schemes.adversarial import AdversarialKD, LogitDiscriminator, reverse_gradient
from kdscope.methods.schemes.lifelong import ClassSubset, LearningWithoutForgetting, expand_classes
from kdscope.methods.schemes.on_policy import OnPolicyDistillation
from kdscope.methods.schemes.online import DeepMutualLearning, build_peers, evaluate_peers
from kdscope.methods.schemes.self_distill import BeYourOwnTeacher, Exit

__all__ = [
    "AdversarialKD",
    "BeYourOwnTeacher",
    "ClassSubset",
    "DeepMutualLearning",
    "Exit",
    "LearningWithoutForgetting",
    "LogitDiscriminator",
    "OnPolicyDistillation",
    "build_peers",
    "evaluate_peers",
    "expand_classes",
    "reverse_gradient",
]
