"""Datasets: a registry of loaders, each returning a :class:`DataBundle` of train/val/test splits.

>>> from kdscope.data import load_data
>>> data = load_data("digits", augment="none", seed=0)
>>> len(data.train), len(data.val), len(data.test)
(1294, 144, 359)
"""

from kdscope.data import (  # noqa: F401  (register the datasets and augmentations)
    audio,
    audio_augment,
    dense_augment,
    dense_formats,
    digits,
    fashion_mnist,
    lm,
    scenes,
    sst2,
    vision,
)
from kdscope.data.bundle import BatchAugment, DataBundle
from kdscope.data.labels import check_labels, to_device
from kdscope.data.memory import InMemoryDataset, collate, fetch, ordered_loader
from kdscope.data.registry import (
    DATASETS,
    DEFAULT_DATA_DIR,
    DatasetNotFoundError,
    list_datasets,
    load_data,
    load_teacher_view,
    register_dataset,
)
from kdscope.data.splits import carve_splits, stratified_sample, stratified_split
from kdscope.data.transforms import (
    AUGMENTS,
    CropFlip,
    augment_batch,
    get_augment,
    standard_augment,
)
from kdscope.data.vision import FolderDataset

__all__ = [
    "AUGMENTS",
    "BatchAugment",
    "CropFlip",
    "DATASETS",
    "DEFAULT_DATA_DIR",
    "DataBundle",
    "DatasetNotFoundError",
    "FolderDataset",
    "InMemoryDataset",
    "augment_batch",
    "carve_splits",
    "check_labels",
    "collate",
    "fetch",
    "ordered_loader",
    "get_augment",
    "list_datasets",
    "load_data",
    "load_teacher_view",
    "register_dataset",
    "standard_augment",
    "stratified_sample",
    "stratified_split",
    "to_device",
]
