"""Schemes that change the training loop, not just the loss (shared/specs/methods.md, "Schemes").

Losses over extra trainable parts are registered methods run by the one Trainer: ``dml`` (online
peers), ``byot`` (self-distillation exits), ``adversarial`` (a discriminator trained through a
gradient-reversal layer) and ``lwf`` (lifelong learning). Sequences of runs are pipeline
functions: :func:`teacher_assistant_chain`, :func:`born_again`, :func:`data_free`,
:func:`quantized_student`. Multi-teacher KD needs neither: pass ``teacher=[t1, t2, ...]`` to the
Trainer with the ``multi_teacher`` method.
"""

from kdscope.methods.schemes.adversarial import AdversarialKD, LogitDiscriminator, reverse_gradient
from kdscope.methods.schemes.data_free import (
    DataFreeResult,
    SyntheticSet,
    bn_statistics_loss,
    data_free,
    deep_inversion,
    total_variation,
)
from kdscope.methods.schemes.lifelong import ClassSubset, LearningWithoutForgetting, expand_classes
from kdscope.methods.schemes.online import DeepMutualLearning, build_peers, evaluate_peers
from kdscope.methods.schemes.pipelines import PipelineResult, born_again, teacher_assistant_chain
from kdscope.methods.schemes.quantized import (
    QuantizedResult,
    convert_int8,
    model_bytes,
    prepare_qat,
    quantized_student,
)
from kdscope.methods.schemes.self_distill import BeYourOwnTeacher, Exit

__all__ = [
    "AdversarialKD",
    "BeYourOwnTeacher",
    "ClassSubset",
    "DataFreeResult",
    "DeepMutualLearning",
    "Exit",
    "LearningWithoutForgetting",
    "LogitDiscriminator",
    "PipelineResult",
    "QuantizedResult",
    "SyntheticSet",
    "born_again",
    "bn_statistics_loss",
    "build_peers",
    "convert_int8",
    "data_free",
    "deep_inversion",
    "evaluate_peers",
    "expand_classes",
    "model_bytes",
    "prepare_qat",
    "quantized_student",
    "reverse_gradient",
    "teacher_assistant_chain",
    "total_variation",
]
