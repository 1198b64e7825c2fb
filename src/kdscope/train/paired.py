"""Cross-representation KD's one precondition: the teacher's view holds the student's examples.

A teacher trained on another representation of a dataset (FSDD's log-mel spectrograms) teaches a
student on another (its waveforms) through the teacher cache, which is keyed by example index
(:class:`~kdscope.train.cache.TeacherCache`): example ``i`` of each split must be the same
recording in both views, and the method may read only the teacher's outputs, since its features
at a layer describe another input.
"""

from __future__ import annotations

from torch.utils.data import Dataset


def check_paired(
    view: tuple[Dataset, Dataset | None], train_set: Dataset, val_set: Dataset | None, method
) -> None:
    """A teacher view must hold the student's examples in the same order (checked on labels and,
    where the splits name them, files), and the method may read only the teacher's outputs."""
    if method.needs.teacher_features:
        raise ValueError(
            f"method {method.name!r} reads teacher features, which do not carry across "
            "representations; a teacher on another representation serves output-only methods "
            "(kd, dkd, random_control, ...)"
        )
    for role, teacher_split, split in (("train", view[0], train_set), ("val", view[1], val_set)):
        if split is None:
            continue
        same = teacher_split is not None and len(teacher_split) == len(split)
        same = same and bool((teacher_split.labels == split.labels).all())
        files = getattr(split, "files", None), getattr(teacher_split, "files", None)
        if not same or files[0] != files[1]:
            raise ValueError(
                f"the teacher's view of the {role} split does not hold the student's examples "
                "in the same order (lengths, labels or files differ): load both from the same "
                "data settings but the representation"
            )


def check_paired_cache(mode: str) -> None:
    """A teacher view is read only through a cache keyed by example index: memory or disk."""
    if mode not in ("memory", "disk"):
        raise ValueError(
            "a teacher on another representation of the data is read from the teacher cache "
            f"by example index, but this run's cache is {mode!r}: use "
            "data.augment=none and train.cache=auto, memory or disk"
        )
