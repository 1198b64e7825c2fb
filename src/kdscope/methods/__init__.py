"""Distillation methods, registered by name (``kdscope methods`` lists them)."""

from kdscope.methods import (  # noqa: F401  (registers)
    contrastive,
    feature,
    relation,
    response,
    schemes,  # noqa: F401  (registers dml, byot, adversarial, lwf)
)
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
