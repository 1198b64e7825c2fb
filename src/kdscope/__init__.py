"""kdscope: distill neural networks, then measure and explain what knowledge moved."""

from kdscope.api import distill, run
from kdscope.config import ConfigError, RunConfig, load_config
from kdscope.data import load_data
from kdscope.explain import explain  # binds the function over the subpackage of that name
from kdscope.features import FeatureTap
from kdscope.methods import create_method
from kdscope.metrics import evaluate
from kdscope.models import create_model, list_models
from kdscope.train import Trainer, load_model

__version__ = "0.1.0"

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
