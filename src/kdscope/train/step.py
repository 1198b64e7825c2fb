"""``DistillStep``: one distillation step's forward, usable on its own.

It holds what a step needs and nothing of the loop: the student, the frozen teacher (or the cached
teacher outputs), the method with its layers resolved and its shape-dependent parts bound, and the
feature taps. ``loss = ce_weight * CE(student(x), y) + sum(method(outputs).values())``, with the CE
weight the method's (``Method.ce_weight_at``), which a run's ``train.ce_weight`` replaces.

>>> step = DistillStep(student, teacher, create_method("kd"))
>>> step.bind(x[:2], num_train=len(train_set))
>>> with step.taps():
...     result = step(x, y, idx)
>>> result.loss.backward()
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from kdscope.features import FeatureTap, layer_shapes
from kdscope.methods import BindContext, Method, Outputs, check_params, choose_layers
from kdscope.models import describe, example_features, example_shape, reader
from kdscope.train.cache import TeacherCache
from kdscope.train.ensemble import TeacherEnsemble


@dataclass
class StepResult:
    """What one step computed: the total ``loss`` (with its graph), the task loss ``ce`` (the
    labels' cross-entropy; a detector's own losses), the method's ``terms`` (weighted, with their
    graphs), the student's ``logits`` and the :class:`~kdscope.methods.Outputs` the method
    read."""

    loss: Tensor
    ce: Tensor
    terms: dict[str, Tensor]
    logits: Tensor
    outputs: Outputs = field(repr=False)


class DistillStep:
    """The forward of one step of ``method`` with ``student`` and ``teacher``.

    Args:
        student: the model being trained (its mode is the caller's to set).
        teacher: a frozen teacher, a list of teachers (run as a
            :class:`~kdscope.train.ensemble.TeacherEnsemble`; the method then sees (K, B, C)
            logits), or None for methods that need none.
        method: the distillation method; its hyperparameters are checked against its declared
            ranges.
        device: where the step runs. ``amp``: autocast (CUDA).
        ce_weight: replaces the method's weight of the labels' cross-entropy (a hint stage's 0
            stays 0). ``label_smoothing``: of that cross-entropy.
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | Sequence[nn.Module] | None,
        method: Method,
        *,
        device: torch.device | str = "cpu",
        amp: bool = False,
        ce_weight: float | None = None,
        label_smoothing: float = 0.0,
    ):
        check_params(method.name or type(method).__name__, method.constraints, method.hparams())
        if method.needs.teacher and not teacher:
            raise ValueError(f"method {type(method).__name__} needs a teacher; none was given")
        if isinstance(teacher, (list, tuple)):
            if method.needs.teacher_features and len(teacher) > 1:
                raise ValueError("feature-based methods take one teacher; got several")
            teacher = TeacherEnsemble(list(teacher)) if len(teacher) > 1 else teacher[0]
        self.student, self.teacher, self.method = student, teacher, method
        self.model: nn.Module = student  # what the forward calls: the student, or its DDP wrapper
        self.num_classes = describe(student).num_classes
        if self.num_classes is None:
            raise ValueError(
                f"cannot tell how many classes {type(student).__name__} predicts: it has no "
                "linear classifier and no ModelInfo (kdscope.models.set_info)"
            )
        t_classes = describe(teacher).num_classes if teacher is not None else None
        if method.same_label_space and t_classes not in (None, self.num_classes):
            raise ValueError(
                f"teacher predicts {t_classes} classes but the student predicts "
                f"{self.num_classes}: they must share the label space"
            )
        if ce_weight is not None and method.ce_weight != 0:
            method.ce_weight = ce_weight
        self.student_reader = reader(student)
        self.teacher_reader = reader(teacher) if teacher is not None else None
        self.device = torch.device(device)
        self.amp = amp
        self.label_smoothing = label_smoothing
        self.cache: TeacherCache | None = None
        self._taps: tuple = ()

    @property
    def ensemble(self) -> bool:
        return isinstance(self.teacher, TeacherEnsemble)

    @property
    def ignore_index(self) -> int | None:
        """The label the task loss ignores (a segmentation mask's borders), if any."""
        return self.student_reader.ignore_index

    def bind(self, example: Tensor, num_train: int) -> None:
        """Resolve the method's layers over the models' ModelInfo, probe their shapes on
        ``example`` (a batch of two or more inputs) and bind the method (building its adapters)."""
        m = self.method
        reads_teacher = self.teacher is not None and m.needs.teacher_features
        if m.needs.student_features or m.needs.teacher_features:
            m.student_layers, m.teacher_layers = choose_layers(
                m.layers,
                describe(self.student),
                describe(self.teacher) if reads_teacher else None,
                student_layers=m.student_layers,
                teacher_layers=m.teacher_layers,
                names=(type(self.student).__name__, type(self.teacher).__name__),
            )
        self.student.to(self.device)
        if self.teacher is not None:
            self.teacher.to(self.device).eval().requires_grad_(False)
        x = example.to(self.device)
        m.bind(
            BindContext(
                student=self.student,
                teacher=self.teacher,
                num_classes=self.num_classes,
                num_train=num_train,
                student_shapes=_example_shapes(self.student, m.student_layers, x),
                teacher_shapes=_example_shapes(self.teacher, m.teacher_layers, x),
                example=x,
            )
        )
        m.to(self.device)

    @contextmanager
    def taps(self):
        """Capture the features the method reads during the steps taken inside this block."""
        needs = self.method.needs
        s = FeatureTap(self.student, self.method.student_layers) if needs.student_features else None
        live_teacher = self.teacher is not None and self.cache is None
        t = (
            FeatureTap(self.teacher, self.method.teacher_layers, detach=True)
            if needs.teacher_features and live_teacher
            else None
        )
        with ExitStack() as stack:
            self._taps = tuple(stack.enter_context(tap) if tap else None for tap in (s, t))
            try:
                yield self
            finally:
                self._taps = ()

    def teacher_outputs(self, x: Tensor, idx: Tensor) -> tuple[Tensor | None, list[Tensor]]:
        """The teacher's logits and features for the batch: looked up in the cache (``idx``: the
        cache rows), or computed by the frozen teacher."""
        needs = self.method.needs
        if not needs.teacher_outputs:
            return None, []
        if self.cache is not None:
            logits, feats = self.cache.lookup(idx, self.device)
        else:
            with torch.no_grad():
                logits = self.teacher_reader.logits(self.teacher, x)
            taps = self._taps[1].ordered() if needs.teacher_features else []
            feats = [example_features(self.teacher, x, f) for f in taps]
        if self.ensemble:
            logits = logits.transpose(0, 1)  # stored per example (B, K, C); methods read (K, B, C)
        return logits, feats

    def __call__(
        self,
        x: Tensor,
        y,
        idx: Tensor,
        epoch: int = 0,
        step: int = 0,
        cache_rows: Tensor | None = None,
    ) -> StepResult:
        """One forward on a batch already on the device; call inside :meth:`taps`. ``idx`` are
        the examples' indices; ``cache_rows`` their teacher-cache rows where those differ (a view
        bank's (example, view) rows)."""
        if not self._taps:
            raise RuntimeError("call a DistillStep inside `with step.taps():`")
        needs = self.method.needs
        with torch.autocast(self.device.type, enabled=self.amp):
            # Teacher first: its activations are freed before the student's graph is built. The
            # other order cost 25% more CPU time per step (resnet56 -> resnet8, batch 128) in
            # page faults, as glibc malloc then maps and unmaps the teacher's buffers every step.
            t_logits, t_feats = self.teacher_outputs(x, idx if cache_rows is None else cache_rows)
            logits, task_loss = self.student_reader.train_forward(
                self.model, x, y, self.label_smoothing
            )
            s_feats = self._taps[0].ordered() if needs.student_features else []
            out = Outputs(
                student_logits=logits,
                labels=y,
                teacher_logits=t_logits,
                student_features=[example_features(self.student, x, f) for f in s_feats],
                teacher_features=t_feats,
                indices=idx.to(self.device) if needs.indices else None,
                inputs=x,
                epoch=epoch,
                step=step,
                class_dim=self.student_reader.class_dim,
            )
            terms = self.method(out)
            loss = self.method.ce_weight_at(epoch) * task_loss + sum(terms.values())
        return StepResult(loss, task_loss, terms, logits, out)


def _example_shapes(model: nn.Module | None, layers: list[str], x: Tensor) -> dict[str, tuple]:
    """The shapes of ``layers``' features as methods see them (per example: a sequence
    classifier's per-token stages are masked means, :func:`~kdscope.models.example_features`)."""
    shapes = layer_shapes(model, layers, x)
    return {name: example_shape(model, x, shape) for name, shape in shapes.items()}
