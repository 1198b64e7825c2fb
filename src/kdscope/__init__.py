"""kdscope: distill neural networks, then measure and explain what knowledge moved."""

from kdscope.api import distill, run
from kdscope.config import ConfigError, RunConfig, load_config
from kdscope.data import load_data
from kdscope.features import FeatureTap
from kdscope.methods import create_method
from kdscope.models import create_model, list_models
from kdscope.train import Trainer, load_model

__version__ = "0.1.0"

_LAZY = {
    "evaluate": ("kdscope.metrics", "evaluate"),
    "explain": ("kdscope.explain", "explain"),
}


def __getattr__(name: str):
    # Metrics and explanations pull in heavier dependencies; import them on first use.
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'kdscope' has no attribute {name!r}")


__all__ = [
    "ConfigError",
    "FeatureTap",
    "RunConfig",
    "Trainer",
    "create_method",
    "create_model",
    "distill",
    "evaluate",
    "explain",
    "list_models",
    "load_config",
    "load_data",
    "load_model",
    "run",
]
