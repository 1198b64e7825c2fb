"""Pipelines: sequences of ordinary runs, built on :func:`kdscope.api.run` and
:func:`kdscope.api.distill`: teacher-assistant chains, born-again generations and sequence-level
KD (:mod:`~kdscope.pipelines.chains`), data-free distillation (DeepInversion) and a quantized
(QAT int8) student."""

from kdscope.pipelines.chains import (
    PipelineResult,
    born_again,
    sequence_kd,
    teacher_assistant_chain,
)
from kdscope.pipelines.data_free import (
    DataFreeResult,
    SyntheticSet,
    bn_statistics_loss,
    data_free,
    deep_inversion,
    total_variation,
)
from kdscope.pipelines.quantized import (
    QuantizedResult,
    convert_int8,
    model_bytes,
    prepare_qat,
    quantized_student,
)

__all__ = [
    "DataFreeResult",
    "PipelineResult",
    "QuantizedResult",
    "SyntheticSet",
    "born_again",
    "bn_statistics_loss",
    "convert_int8",
    "data_free",
    "deep_inversion",
    "model_bytes",
    "prepare_qat",
    "quantized_student",
    "sequence_kd",
    "teacher_assistant_chain",
    "total_variation",
]
