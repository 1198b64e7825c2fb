"""Distillation methods, registered by name (``kdscope methods`` lists them)."""

from kdscope.methods import contrastive, feature, relation, response  # noqa: F401  (registers)
from kdscope.methods import schemes  # noqa: F401  (registers dml, byot, adversarial, lwf)
from kdscope.methods.base import (
    METHODS,
    BindContext,
    Method,
    Needs,
    Outputs,
    create_method,
    method_info,
    register_method,
)

__all__ = [
    "METHODS",
    "BindContext",
    "Method",
    "Needs",
    "Outputs",
    "create_method",
    "method_info",
    "register_method",
]
