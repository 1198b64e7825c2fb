"""kdscope: distill neural networks, then measure and explain what knowledge moved."""

from kdscope.api import distill, run
from kdscope.config import ConfigError, RunConfig, load_config
from kdscope.data import load_data
from kdscope.explain import explain_student
from kdscope.features import FeatureTap
from kdscope.methods import create_method
from kdscope.metrics import evaluate
from kdscope.models import ModelInfo, create_model, describe, list_models
from kdscope.train import DistillStep, Trainer, load_model

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "DistillStep",
    "FeatureTap",
    "ModelInfo",
    "RunConfig",
    "Trainer",
    "create_method",
    "create_model",
    "describe",
    "distill",
    "evaluate",
    "explain_student",
    "list_models",
    "load_config",
    "load_data",
    "load_model",
    "run",
]
