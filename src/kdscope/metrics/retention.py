"""Knowledge Retention Score (Alba & Villaverde 2025): KRS = alpha * FSS + beta * AOA, in [0, 1].

FSS is the CKA between teacher and student features averaged over matched layers; AOA the agreement
of their outputs: mean over x of clip(1 - KL(p_T || p_S) / C, 0, 1), C the largest per-example KL on
a held-out calibration split (classification), or the mean over images of the IoU of the predicted
masks (segmentation). Deviation from the paper: its FSS is CKA "per input x", undefined for one
example; kdscope uses debiased linear CKA over the evaluation set (minibatch CKA in the Evaluator)
and records the estimator in the result.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor

from kdscope.features import pair_layers
from kdscope.metrics.agreement import kl_per_example
from kdscope.metrics.matrices import ArrayLike
from kdscope.metrics.similarity import linear_cka

TASK_WEIGHTS: dict[str, tuple[float, float]] = {
    "classification": (0.3, 0.7),
    # Not in the paper: a language model's positions are classified examples, weighted as such.
    "language-modelling": (0.3, 0.7),
    "detection": (0.7, 0.3),
    "segmentation": (0.7, 0.3),
}


def task_weights(task: str, alpha: float | None = None) -> tuple[float, float]:
    """(alpha, beta) for ``task``: the paper's defaults, or ``alpha`` given and beta = 1 - alpha."""
    if task not in TASK_WEIGHTS:
        raise ValueError(f"unknown task {task!r}; accepted: {', '.join(TASK_WEIGHTS)}")
    if alpha is None:
        return TASK_WEIGHTS[task]
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    return alpha, 1.0 - alpha


def calibration_constant(teacher_logits: Tensor, student_logits: Tensor) -> float:
    """C: the largest per-example KL(p_T || p_S) on a calibration split."""
    return kl_per_example(teacher_logits, student_logits).max().item()


def aoa_terms(kl: Tensor, c: float) -> Tensor:
    if c < 0:
        raise ValueError(f"the calibration constant C must be >= 0, got {c}")
    if c == 0:
        # Outputs agreed exactly on the calibration split: credit only exact agreement here.
        return (kl <= 0).double()
    return (1.0 - kl / c).clamp(0.0, 1.0)


class OutputAgreement:
    """Streaming AOA for classification: ``update(teacher_logits, student_logits)``, ``compute()``.

    With ``c`` given (calibration split), AOA = mean clip(1 - KL/C, 0, 1). Without it, C is the
    largest KL seen here and AOA = 1 - mean KL / max KL, since no term needs clipping.
    """

    def __init__(self, c: float | None = None):
        self.c = c
        self.n = 0
        self.max_kl = 0.0
        self._sum_kl = 0.0
        self._sum_terms = 0.0

    @torch.no_grad()
    def update(self, teacher_logits: Tensor, student_logits: Tensor) -> None:
        kl = kl_per_example(teacher_logits.detach(), student_logits.detach())
        self.n += kl.numel()
        self.max_kl = max(self.max_kl, kl.max().item()) if kl.numel() else self.max_kl
        self._sum_kl += kl.sum().item()
        if self.c is not None:
            self._sum_terms += aoa_terms(kl, self.c).sum().item()

    def compute(self, c: float | None = None) -> float:
        """AOA; ``c`` replaces an unset C by a shared one (the largest over several students)."""
        if self.n == 0:
            raise ValueError("AOA needs at least one example")
        if self.c is not None:
            return self._sum_terms / self.n
        c = self.max_kl if c is None else c
        if c < self.max_kl:
            raise ValueError(f"a shared C ({c}) must be >= the largest KL seen ({self.max_kl})")
        return 1.0 if c == 0 else 1.0 - self._sum_kl / self.n / c


def output_agreement(teacher_logits: Tensor, student_logits: Tensor, c: float) -> float:
    """AOA = mean over x of clip(1 - KL(p_T(x) || p_S(x)) / C, 0, 1)."""
    return aoa_terms(kl_per_example(teacher_logits, student_logits), c).mean().item()


def segmentation_agreement(
    teacher_masks: Tensor, student_masks: Tensor, num_classes: int, ignore_index: int | None = None
) -> float:
    """AOA for segmentation: mean IoU of the student's predicted masks against the teacher's.

    Masks are integer class maps (n, H, W) (or logits (n, classes, H, W), reduced by argmax).
    Intersections and unions are summed over the whole set; classes absent from both are left out.
    """
    if teacher_masks.ndim == 4:
        teacher_masks, student_masks = teacher_masks.argmax(1), student_masks.argmax(1)
    if teacher_masks.shape != student_masks.shape:
        raise ValueError(
            f"mask shapes differ: {tuple(teacher_masks.shape)} and {tuple(student_masks.shape)}"
        )
    t, s = teacher_masks.reshape(-1).long(), student_masks.reshape(-1).long()
    if ignore_index is not None:
        keep = t != ignore_index
        t, s = t[keep], s[keep]
    for name, m in (("teacher", t), ("student", s)):
        if m.numel() and (m.min() < 0 or m.max() >= num_classes):
            raise ValueError(f"{name} mask values must lie in [0, {num_classes})")
    confusion = torch.bincount(t * num_classes + s, minlength=num_classes**2)
    confusion = confusion.reshape(num_classes, num_classes).double()
    intersection = confusion.diag()
    union = confusion.sum(0) + confusion.sum(1) - intersection
    present = union > 0
    if not bool(present.any()):
        raise ValueError("no labelled pixel: mean IoU is undefined")
    return (intersection[present] / union[present]).mean().item()


@dataclass
class KRSResult:
    """KRS with its components (the paper's ablation) and what produced them."""

    krs: float
    fss: float
    aoa: float
    alpha: float
    beta: float
    task: str
    per_layer: dict[str, float]
    c: float | None
    c_source: str
    fss_estimator: str
    n: int
    layers: list[tuple[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def krs_from_components(
    per_layer: Mapping[str, float],
    aoa: float,
    *,
    task: str = "classification",
    alpha: float | None = None,
    c: float | None = None,
    c_source: str = "given",
    fss_estimator: str = "debiased linear CKA",
    n: int = 0,
    layers: Sequence[tuple[str, str]] = (),
) -> KRSResult:
    """Combine per-layer CKA values and AOA into a :class:`KRSResult`."""
    if not per_layer:
        raise ValueError("KRS needs at least one layer pair")
    a, b = task_weights(task, alpha)
    # CKA is >= 0 for the biased estimator; the debiased one can dip below 0 on unrelated features.
    fss = min(1.0, max(0.0, sum(per_layer.values()) / len(per_layer)))
    return KRSResult(
        krs=a * fss + b * aoa,
        fss=fss,
        aoa=aoa,
        alpha=a,
        beta=b,
        task=task,
        per_layer=dict(per_layer),
        c=c,
        c_source=c_source,
        fss_estimator=fss_estimator,
        n=n,
        layers=[tuple(p) for p in layers],
    )


def _named(features: Mapping[str, ArrayLike] | Sequence[ArrayLike]) -> dict[str, ArrayLike]:
    if isinstance(features, Mapping):
        return dict(features)
    return {str(i): f for i, f in enumerate(features)}


def knowledge_retention_score(
    teacher_features: Mapping[str, ArrayLike] | Sequence[ArrayLike],
    student_features: Mapping[str, ArrayLike] | Sequence[ArrayLike],
    teacher_outputs: Tensor,
    student_outputs: Tensor,
    *,
    c: float | None = None,
    task: str = "classification",
    alpha: float | None = None,
    layers: Sequence[tuple[str, str]] | None = None,
    num_classes: int | None = None,
) -> KRSResult:
    """KRS of a student against its teacher from features and outputs held in memory.

    Args:
        teacher_features, student_features: per-layer features (n, ...), as name -> tensor
            mappings or sequences; paired by ``layers`` ((student, teacher) names) or by
            :func:`~kdscope.features.pair_layers` (relative depth).
        teacher_outputs, student_outputs: logits (n, classes); for segmentation, masks (n, H, W)
            or logits (n, classes, H, W).
        c: calibration constant from a held-out split (:func:`calibration_constant`). If None, C
            is the largest KL on these examples and ``c_source`` says so.
        task: ``classification``, ``detection`` or ``segmentation`` (sets default weights and AOA).
        alpha: FSS weight (beta = 1 - alpha); default the paper's per task.
        num_classes: segmentation only.

    Use :class:`~kdscope.metrics.evaluator.Evaluator` for a dataset that does not fit in memory.
    """
    t_feats, s_feats = _named(teacher_features), _named(student_features)
    pairs = list(layers) if layers is not None else pair_layers(list(s_feats), list(t_feats))
    for s_name, t_name in pairs:
        if s_name not in s_feats or t_name not in t_feats:
            raise KeyError(
                f"layer pair ({s_name!r}, {t_name!r}) not in the features given: student "
                f"{list(s_feats)}, teacher {list(t_feats)}"
            )
    n = int(teacher_outputs.shape[0])
    for who, feats in (("teacher", t_feats), ("student", s_feats)):
        for name, f in feats.items():
            if len(f) != n:
                raise ValueError(f"{who} features {name!r} have {len(f)} examples, outputs {n}")
    per_layer = {
        f"{s}<->{t}": linear_cka(s_feats[s], t_feats[t], debiased=True).item() for s, t in pairs
    }
    c_source = "given"
    if task == "segmentation":
        if num_classes is None:
            raise ValueError("segmentation KRS needs num_classes")
        # The paper's mean over x: one IoU per image (MaskAgreement, as the Evaluator measures).
        per_image = [
            segmentation_agreement(
                teacher_outputs[i : i + 1], student_outputs[i : i + 1], num_classes
            )
            for i in range(n)
        ]
        aoa = sum(per_image) / n
        c, c_source = None, "not used (segmentation)"
    else:
        if c is None:
            c, c_source = calibration_constant(teacher_outputs, student_outputs), "evaluation set"
        aoa = output_agreement(teacher_outputs, student_outputs, c)
    return krs_from_components(
        per_layer,
        aoa,
        task=task,
        alpha=alpha,
        c=c,
        c_source=c_source,
        n=n,
        layers=pairs,
    )
