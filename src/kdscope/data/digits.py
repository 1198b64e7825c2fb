"""scikit-learn's bundled 8x8 handwritten digits (UCI optdigits test set): no download, no files."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kdscope.data.bundle import DataBundle
from kdscope.data.memory import memory_bundle
from kdscope.data.registry import register_dataset
from kdscope.data.splits import stratified_split

# The dataset has no official test split; this one is fixed forever, whatever the run's seed.
TEST_FRACTION = 0.2
TEST_SEED = 0
# Pixel statistics of the train split (1438 images), values scaled from 0..16 to [0, 1].
MEAN = (0.3055,)
STD = (0.3761,)


@register_dataset("digits")
def load_digits(
    *,
    data_dir: Path | None,
    download: bool,
    val_fraction: float,
    seed: int,
    train_size: int | None,
) -> DataBundle:
    """1797 grey 8x8 digits in 10 classes; a stratified 20% test split (359 images) is held out.

    ``data_dir`` and ``download`` are accepted for a uniform interface and ignored: the data ships
    with scikit-learn.
    """
    from sklearn.datasets import load_digits as sklearn_digits

    digits = sklearn_digits()
    images = digits.images.astype(np.uint8)[:, None]  # integer values 0..16
    labels = digits.target.astype(np.int64)
    train, test = stratified_split(labels, TEST_FRACTION, seed=TEST_SEED)
    return memory_bundle(
        "digits",
        train=(images[train], labels[train]),
        test=(images[test], labels[test]),
        class_names=[str(d) for d in range(10)],
        scale=1 / 16,
        mean=MEAN,
        std=STD,
        val_fraction=val_fraction,
        seed=seed,
        train_size=train_size,
    )
