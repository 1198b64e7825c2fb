"""Training: one loop (``Trainer``) for teachers, baselines and distillation."""

from kdscope.train.accounting import NonFiniteLossError
from kdscope.train.cache import TeacherCache
from kdscope.train.checkpoint import CheckpointError, load_model, read_checkpoint, save_atomic
from kdscope.train.ensemble import TeacherEnsemble
from kdscope.train.trainer import FitResult, Trainer
from kdscope.train.validate import accuracy

__all__ = [
    "CheckpointError",
    "FitResult",
    "NonFiniteLossError",
    "TeacherCache",
    "TeacherEnsemble",
    "Trainer",
    "accuracy",
    "load_model",
    "read_checkpoint",
    "save_atomic",
]
