"""The contract every distillation method follows (see shared/DESIGN.md, "A method is small")."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from torch import Tensor, nn

from kdscope.methods.layers import Layers
from kdscope.methods.params import Constraint, check_params
from kdscope.registry import Registry


class TeacherOutputs(Protocol):
    """The teacher's outputs stored per training example (the Trainer's teacher cache)."""

    def lookup(self, index: Tensor, device: Any) -> tuple[Tensor, list[Tensor]]:
        """Teacher logits and features of the examples at ``index``."""


@dataclass(frozen=True)
class Needs:
    """What a method reads from a training step; the Trainer computes only what is asked for.

    teacher_logits / student_features / teacher_features: tensors the loss uses. Features come from
    the layers in ``Method.student_layers`` / ``Method.teacher_layers`` (resolved before ``bind``),
    captured with FeatureTap. ``indices``: dataset indices of the batch (memory-bank methods such as
    CRD). ``teacher``: whether a teacher model is required at all.
    """

    teacher: bool = True
    teacher_logits: bool = False
    student_features: bool = False
    teacher_features: bool = False
    indices: bool = False

    @property
    def teacher_outputs(self) -> bool:
        """Whether a step reads anything the teacher computes (it runs, or is cached)."""
        return self.teacher_logits or self.teacher_features


NO_TEACHER = Needs(teacher=False)
LOGITS = Needs(teacher_logits=True)
FEATURES = Needs(student_features=True, teacher_features=True)


@dataclass
class Outputs:
    """Everything a method may read from one step. Feature lists are aligned pairwise:
    ``student_features[i]`` was captured at ``method.student_layers[i]`` and pairs with
    ``teacher_features[i]`` at ``method.teacher_layers[i]``."""

    student_logits: Tensor
    labels: Tensor
    teacher_logits: Tensor | None = None  # or a TopKTargets, for methods that read_topk
    student_features: list[Tensor] = field(default_factory=list)
    teacher_features: list[Tensor] = field(default_factory=list)
    indices: Tensor | None = None
    inputs: Tensor | None = None
    epoch: int = 0
    step: int = 0
    class_dim: int = 1  # where logits hold the classes: 1 for (B, C) and (B, C, H, W), -1 tokens


@dataclass
class BindContext:
    """What ``Method.bind`` sees before training: the models, their ModelInfo and the shapes of
    features at every layer the method reads (from one dry forward pass on ``example``, a batch of
    two or more inputs on the training device, there for a method that probes more)."""

    student: nn.Module
    teacher: nn.Module | None
    num_classes: int
    num_train: int
    student_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    teacher_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    example: Tensor | None = None


class Method(nn.Module):
    """A distillation objective: ``forward(out) -> {term name: weighted scalar loss}``.

    A subclass declares, as class attributes, its default ``layers`` (a :class:`Layers` value),
    the accepted range of every hyperparameter (``constraints``, beside the paper's defaults in
    ``__init__``), its ``family`` and ``paper``; in ``__init__`` it passes what it reads from a
    step (``needs``) and the weight of the labels' cross-entropy that the step adds
    (``ce_weight``; a run's ``train.ce_weight`` replaces it) to ``Method.__init__``.
    ``same_label_space = False`` lets teacher and student predict different class sets (lifelong
    learning); ``reads_topk = True`` says ``forward`` also accepts a top-k teacher cache entry
    (:class:`~kdscope.methods.topk.TopKTargets`) as ``Outputs.teacher_logits``. With several
    teachers, ``Outputs.teacher_logits`` has shape (K, B, C). Trainable extras (regressors,
    projectors) are submodules created in ``bind`` once feature shapes are known, so the
    optimizer sees them.
    """

    layers: ClassVar[Layers] = Layers.NONE
    constraints: ClassVar[dict[str, Constraint]] = {}
    same_label_space: ClassVar[bool] = True
    # Whether forward also takes a TopKTargets as Outputs.teacher_logits (train.cache_topk).
    reads_topk: ClassVar[bool] = False
    family: ClassVar[str] = "response"
    paper: ClassVar[str] = ""
    name: ClassVar[str] = ""

    def __init__(
        self,
        needs: Needs = NO_TEACHER,
        ce_weight: float = 1.0,
        student_layers: list[str] | None = None,
        teacher_layers: list[str] | None = None,
    ):
        super().__init__()
        self.needs = needs
        self.ce_weight = ce_weight
        self.student_layers: list[str] = list(student_layers or [])
        self.teacher_layers: list[str] = list(teacher_layers or [])

    def bind(self, ctx: BindContext) -> None:  # noqa: B027 (an optional hook)
        """Build shape-dependent submodules; called once before training."""

    def prefill(self, cache: TeacherOutputs) -> None:  # noqa: B027 (an optional hook)
        """Called once before training when the teacher cache is on: a method that keeps teacher
        outputs per example can read all of them from ``cache`` (``cache.lookup(indices)``)."""

    def ce_weight_at(self, epoch: int) -> float:
        """Weight of the labels' cross-entropy in ``epoch``; FitNet's hint stage makes it 0."""
        return self.ce_weight

    def forward(self, out: Outputs) -> dict[str, Tensor]:
        raise NotImplementedError

    def hparams(self) -> dict[str, Any]:
        """The constructor's hyperparameters as set (for logs and ``kdscope methods``)."""
        names = inspect.signature(type(self).__init__).parameters
        return {k: getattr(self, k) for k in names if k != "self" and hasattr(self, k)}


METHODS: Registry[type[Method]] = Registry("method")


def register_method(name: str):
    """Class decorator: ``@register_method("kd")`` makes the method available by name everywhere."""

    def decorator(cls: type[Method]) -> type[Method]:
        cls.name = name
        return METHODS.register(name)(cls)

    return decorator


def create_method(name: str, **kwargs: Any) -> Method:
    """Instantiate a registered method; unknown parameters and values outside a parameter's
    declared range are refused, naming the accepted ones."""
    cls = METHODS.get(name)
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    bad = sorted(set(kwargs) - set(accepted))
    if bad:
        raise ValueError(
            f"Method {name!r} got unknown parameter(s) {', '.join(bad)}. "
            f"Accepted: {', '.join(accepted)}."
        )
    check_params(name, cls.constraints, kwargs)
    return cls(**kwargs)


def method_info(name: str) -> dict[str, Any]:
    """Family, paper, default hyperparameters with their accepted ranges, default layers and
    needs of a registered method (for listings)."""
    cls = METHODS.get(name)
    params = inspect.signature(cls.__init__).parameters
    defaults = {
        k: p.default
        for k, p in params.items()
        if k not in ("self", "student_layers", "teacher_layers")
        and p.default is not inspect.Parameter.empty
    }
    ranges = {k: c.describe() for k, c in cls.constraints.items() if k in defaults}
    method = cls()
    needs = [k for k, v in vars(method.needs).items() if v and k != "teacher"]
    return {
        "family": cls.family,
        "paper": cls.paper,
        "defaults": defaults,
        "ranges": ranges,
        "layers": cls.layers.value,
        "needs": needs,
        "teacher": method.needs.teacher,
    }
