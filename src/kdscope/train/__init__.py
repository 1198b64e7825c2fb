"""Training: one loop (``Trainer``) around one step (``DistillStep``) for teachers, baselines and
distillation."""

from kdscope.train.accounting import NonFiniteLossError
from kdscope.train.cache import TeacherCache
from kdscope.train.checkpoint import CheckpointError, load_model, read_checkpoint, save_atomic
from kdscope.train.ensemble import TeacherEnsemble
from kdscope.train.run_dir import RunDirectory
from kdscope.train.state import LoopState
from kdscope.train.step import DistillStep, StepResult
from kdscope.train.trainer import FitResult, Trainer

__all__ = [
    "CheckpointError",
    "DistillStep",
    "FitResult",
    "LoopState",
    "NonFiniteLossError",
    "RunDirectory",
    "StepResult",
    "TeacherCache",
    "TeacherEnsemble",
    "Trainer",
    "load_model",
    "read_checkpoint",
    "save_atomic",
]
