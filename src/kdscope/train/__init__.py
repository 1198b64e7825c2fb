"""Training: one loop (``Trainer``) for teachers, baselines and distillation."""

from kdscope.train.cache import TeacherCache
from kdscope.train.checkpoint import CheckpointError, load_model, read_checkpoint, save_atomic
from kdscope.train.trainer import FitResult, NonFiniteLossError, TeacherEnsemble, Trainer, accuracy

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
