"""Stratified, seeded index splits: the same labels and seed give the same indices on every machine.

Indices come back sorted so a subset keeps the order of the examples it was drawn from.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# Independent random streams per purpose, so changing train_size never moves the validation split.
_VAL_STREAM = 0
_SUBSET_STREAM = 1


def stratified_sample(labels: Sequence[int] | np.ndarray, count: int, seed: int) -> np.ndarray:
    """Draw ``count`` indices so that every class keeps its share of ``labels``.

    Per-class quotas are ``count * n_c / n`` rounded by largest remainder (ties go to the lower
    class label), so the quotas sum to exactly ``count``. Within a class the examples are chosen
    by a permutation from ``numpy.random.default_rng(seed)``.
    """
    labels = np.asarray(labels)
    n = len(labels)
    if not 0 <= count <= n:
        raise ValueError(f"count must be between 0 and {n} (the number of labels), got {count}")
    classes, inverse, sizes = np.unique(labels, return_inverse=True, return_counts=True)
    exact = sizes * count / n if n else sizes.astype(float)
    quotas = np.floor(exact).astype(int)
    shortfall = count - int(quotas.sum())
    by_remainder = np.argsort(-(exact - quotas), kind="stable")
    quotas[by_remainder[:shortfall]] += 1
    rng = np.random.default_rng(seed)
    chosen = [
        rng.permutation(np.flatnonzero(inverse == c))[:quota] for c, quota in enumerate(quotas)
    ]
    return np.sort(np.concatenate(chosen)) if chosen else np.empty(0, dtype=int)


def stratified_split(
    labels: Sequence[int] | np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split into ``(rest, held_out)`` with ``round(fraction * n)`` stratified held-out indices."""
    if not 0 <= fraction < 1:
        raise ValueError(f"fraction must be in [0, 1), got {fraction}")
    labels = np.asarray(labels)
    held_out = stratified_sample(labels, round(fraction * len(labels)), seed)
    rest = np.setdiff1d(np.arange(len(labels)), held_out, assume_unique=True)
    return rest, held_out


def carve_splits(
    labels: Sequence[int] | np.ndarray,
    *,
    val_fraction: float,
    seed: int,
    train_size: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(train, val)`` indices into an official train split.

    Validation is carved first (``val_fraction`` of all labels, stratified), then ``train_size``
    examples are drawn, stratified, from what is left; so the validation set does not depend on
    ``train_size``.
    """
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    labels = np.asarray(labels)
    train, val = stratified_split(labels, val_fraction, seed=_stream(seed, _VAL_STREAM))
    if train_size is not None:
        if not 1 <= train_size <= len(train):
            raise ValueError(
                f"train_size must be between 1 and {len(train)} (the train split after carving "
                f"val_fraction={val_fraction}), got {train_size}"
            )
        train = train[stratified_sample(labels[train], train_size, _stream(seed, _SUBSET_STREAM))]
    return train, val


def _stream(seed: int, purpose: int) -> int:
    # SeedSequence mixes (seed, purpose) into one well-spread seed.
    return int(np.random.SeedSequence([seed, purpose]).generate_state(1)[0])


def split_index(i: int, n: int, unit: str = "examples") -> int:
    """Python's indexing rule for a split of ``n`` ``unit``: ``-n <= i < n``, negative from the end;
    an index outside it is an IndexError naming both."""
    if not -n <= i < n:
        raise IndexError(f"index {i} out of range for a split of {n} {unit}")
    return i % n
