"""Distillation methods, registered by name (``kdscope methods`` lists them)."""

from kdscope.methods import (  # noqa: F401  (registers)
    contrastive,
    dense,
    feature,
    graph,
    relation,
    response,
    schemes,  # noqa: F401  (registers dml, byot, adversarial, lwf)
    token_losses,  # noqa: F401  (registers reverse_kl, jsd)
)
from kdscope.methods.base import (
    FEATURES,
    LOGITS,
    METHODS,
    NO_TEACHER,
    BindContext,
    Method,
    Needs,
    Outputs,
    TeacherOutputs,
    create_method,
    method_info,
    register_method,
)
from kdscope.methods.layers import Layers, choose_layers
from kdscope.methods.params import Interval, InvalidParameterError, Options, check_params

__all__ = [
    "FEATURES",
    "LOGITS",
    "METHODS",
    "NO_TEACHER",
    "BindContext",
    "InvalidParameterError",
    "Interval",
    "Layers",
    "Method",
    "Needs",
    "Options",
    "Outputs",
    "TeacherOutputs",
    "check_params",
    "choose_layers",
    "create_method",
    "method_info",
    "register_method",
]
