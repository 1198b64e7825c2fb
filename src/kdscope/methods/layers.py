"""Which layers a method reads, declared as a value and resolved by one function over the models'
:class:`~kdscope.models.ModelInfo`."""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum

from kdscope.features import pair_layers
from kdscope.models import ModelInfo


class Layers(Enum):
    """A method's default layers (users may name their own with ``student_layers`` /
    ``teacher_layers``).

    - ``NONE``: the method reads no features.
    - ``STAGES``: every stage output, student and teacher paired by relative depth.
    - ``MIDDLE_STAGE``: the pair at half depth of those, ``(n - 1) // 2`` (FitNet's hint).
    - ``LAST_STAGE``: the deepest pair.
    - ``PREACT_STAGES``: the pre-activation features at the stages, paired by relative depth.
    - ``PENULTIMATE``: the classifier's input (the pooled embedding) of each model.
    - ``POOLED_MAP``: the feature map each classifier sees through global pooling.
    - ``LEVELS``: a detector's feature-pyramid levels, paired by relative depth (one to one when
      both have as many).
    """

    NONE = "none"
    STAGES = "stages"
    MIDDLE_STAGE = "middle stage"
    LAST_STAGE = "last stage"
    PREACT_STAGES = "pre-activation stages"
    PENULTIMATE = "penultimate"
    POOLED_MAP = "pooled map"
    LEVELS = "pyramid levels"


_PAIRED = (
    Layers.STAGES,
    Layers.MIDDLE_STAGE,
    Layers.LAST_STAGE,
    Layers.PREACT_STAGES,
    Layers.LEVELS,
)


def _defaults(choice: Layers, info: ModelInfo, role: str, model: str) -> list[str]:
    if choice is Layers.PREACT_STAGES:
        found, what = list(info.preact), "pre-activation layers"
    elif choice is Layers.LEVELS:
        found, what = list(info.levels), "feature-pyramid levels"
    elif choice in _PAIRED:
        found, what = list(info.stages), "stages"
    elif choice is Layers.PENULTIMATE:
        found, what = [info.penultimate] if info.penultimate else [], "classifier"
    else:
        found, what = [info.pooled_map] if info.pooled_map else [], "pooled feature map"
    if not found:
        raise ValueError(
            f"the {role} ({model}) declares no {what} in its ModelInfo, which this method reads "
            f"by default; name them with {role}_layers=[...]"
        )
    return found


def choose_layers(
    choice: Layers,
    student: ModelInfo,
    teacher: ModelInfo | None,
    *,
    student_layers: Sequence[str] = (),
    teacher_layers: Sequence[str] = (),
    names: tuple[str, str] = ("student", "teacher"),
) -> tuple[list[str], list[str]]:
    """The (student, teacher) layers a method with default ``choice`` reads.

    Layers given explicitly are kept as given; the other side takes its default. Stage-like
    defaults pair the two sides by relative depth (:func:`~kdscope.features.pair_layers`) and the
    single-pair choices then keep one pair, unless a side was given. Without a teacher only the
    student side is resolved. ``names`` label the two models in error messages.
    """
    if choice is Layers.NONE:
        return [], []
    s_given, t_given = list(student_layers), list(teacher_layers)
    s = s_given or _defaults(choice, student, "student", names[0])
    if teacher is None:
        return s, []
    t = t_given or _defaults(choice, teacher, "teacher", names[1])
    if choice in _PAIRED and not t_given:
        pairs = pair_layers(s, t)
        s, t = [a for a, _ in pairs], [b for _, b in pairs]
    if choice in (Layers.MIDDLE_STAGE, Layers.LAST_STAGE) and not (s_given or t_given):
        i = (len(s) - 1) // 2 if choice is Layers.MIDDLE_STAGE else -1
        s, t = [s[i]], [t[i]]
    if len(s) != len(t):
        raise ValueError(
            f"student_layers ({len(s)}: {s}) and teacher_layers ({len(t)}: {t}) must pair one to "
            "one: give lists of the same length"
        )
    return s, t
