"""Dataset registry and the one entry point ``load_data``."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kdscope.data.bundle import DataBundle
from kdscope.data.transforms import get_augment
from kdscope.registry import Registry

DatasetFactory = Callable[..., DataBundle]
DATASETS: Registry[DatasetFactory] = Registry("dataset")

DEFAULT_DATA_DIR = Path.home() / ".cache" / "kdscope" / "datasets"


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files are not where kdscope looked; the message says how to provide them."""


def dataset_dir(name: str, data_dir: Path | None) -> Path:
    """Where the files of dataset ``name`` are looked up: ``data_dir`` when given, else
    ``$KDSCOPE_DATA/<name>`` when the environment variable ``KDSCOPE_DATA`` is set (tests and CI
    set it to the workspace's shared data), else ``~/.cache/kdscope/datasets/<name>``."""
    if data_dir is not None:
        return Path(data_dir).expanduser()
    root = os.environ.get("KDSCOPE_DATA")
    return (Path(root).expanduser() if root else DEFAULT_DATA_DIR) / name


def register_dataset(name: str) -> Callable[[DatasetFactory], DatasetFactory]:
    """Register ``factory(*, data_dir, download, val_fraction, seed, train_size, **options)``.

    ``data_dir`` is a Path or None (the factory picks its default, usually
    :data:`DEFAULT_DATA_DIR`).
    The factory returns a :class:`DataBundle` without augmentation (``load_data`` sets it). It must
    carve validation from the official train split and honour ``train_size`` with
    :func:`~kdscope.data.splits.carve_splits`, so every dataset splits the same way.
    """
    return DATASETS.register(name)


def list_datasets() -> list[str]:
    return DATASETS.names()


def load_data(
    name: str,
    *,
    data_dir: str | Path | None = None,
    download: bool = False,
    val_fraction: float = 0.1,
    augment: str = "none",
    seed: int = 0,
    train_size: int | None = None,
    **options: Any,
) -> DataBundle:
    """Load dataset ``name`` as a :class:`DataBundle` of train/val/test splits.

    Parameters
    ----------
    name : one of :func:`list_datasets` (``digits``, ``fashion-mnist``, ``cifar10``, ``cifar100``,
        ``imagefolder``).
    data_dir : where the dataset's files are (or are downloaded to). Defaults to
        ``~/.cache/kdscope/datasets``; ``imagefolder`` requires it and ``digits`` ignores it.
    download : fetch missing files with torchvision (fashion-mnist, cifar10, cifar100).
    val_fraction : share of the official train split held out as validation, stratified by class.
    augment : batched training augmentation preset, ``"none"`` or ``"standard"`` (random crop with
        padding and horizontal flip, see :func:`~kdscope.data.transforms.standard_augment`).
    seed : seeds the validation split and the ``train_size`` subset; the test split never depends on
        it. The same seed always gives the same splits.
    train_size : keep only this many training examples (stratified), for quick studies.
    **options : dataset-specific settings, e.g. ``image_size`` for ``imagefolder``.
    """
    factory = DATASETS.get(name)
    augment_fn = get_augment(augment)
    bundle = factory(
        data_dir=Path(data_dir).expanduser() if data_dir is not None else None,
        download=download,
        val_fraction=val_fraction,
        seed=seed,
        train_size=train_size,
        **options,
    )
    bundle.augment = augment_fn
    return bundle
