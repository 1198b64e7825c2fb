"""CIFAR-10/100 (Krizhevsky 2009) from their python pickles, and any folder of class subfolders."""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from torch import Tensor
from torch.utils.data import Dataset

from kdscope.data.bundle import DataBundle
from kdscope.data.memory import memory_bundle
from kdscope.data.registry import DEFAULT_DATA_DIR, DatasetNotFoundError, register_dataset
from kdscope.data.splits import carve_splits, stratified_sample, stratified_split
from kdscope.data.transforms import channel_stats

if TYPE_CHECKING:  # torchvision is imported where images are read: it takes seconds to import
    from torchvision import transforms as T
    from torchvision.datasets import ImageFolder


@dataclass(frozen=True)
class _Cifar:
    title: str
    folder: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str
    label_key: str
    names_key: str
    # Pixel statistics of the 50000 training images, scaled to [0, 1].
    mean: tuple[float, ...]
    std: tuple[float, ...]


CIFAR10 = _Cifar(
    title="CIFAR-10",
    folder="cifar-10-batches-py",
    train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
    test_files=("test_batch",),
    meta_file="batches.meta",
    label_key="labels",
    names_key="label_names",
    mean=(0.4914, 0.4822, 0.4465),
    std=(0.2470, 0.2435, 0.2616),
)
CIFAR100 = _Cifar(
    title="CIFAR-100",
    folder="cifar-100-python",
    train_files=("train",),
    test_files=("test",),
    meta_file="meta",
    label_key="fine_labels",
    names_key="fine_label_names",
    mean=(0.5071, 0.4865, 0.4409),
    std=(0.2673, 0.2564, 0.2762),
)


@register_dataset("cifar10")
def load_cifar10(
    *,
    data_dir: Path | None,
    download: bool,
    val_fraction: float,
    seed: int,
    train_size: int | None,
) -> DataBundle:
    """50000 train and 10000 test colour 32x32 images in 10 classes, from ``cifar-10-batches-py``
    under ``data_dir`` (or ``data_dir`` itself); ``download=True`` fetches it with torchvision."""
    return _load_cifar("cifar10", CIFAR10, data_dir, download, val_fraction, seed, train_size)


@register_dataset("cifar100")
def load_cifar100(
    *,
    data_dir: Path | None,
    download: bool,
    val_fraction: float,
    seed: int,
    train_size: int | None,
) -> DataBundle:
    """50000 train and 10000 test colour 32x32 images in 100 (fine) classes, from
    ``cifar-100-python`` under ``data_dir`` (or ``data_dir`` itself); ``download=True`` fetches it
    with torchvision."""
    return _load_cifar("cifar100", CIFAR100, data_dir, download, val_fraction, seed, train_size)


def _load_cifar(
    name: str,
    spec: _Cifar,
    data_dir: Path | None,
    download: bool,
    val_fraction: float,
    seed: int,
    train_size: int | None,
) -> DataBundle:
    folder = _find_cifar(
        name, spec, data_dir if data_dir is not None else DEFAULT_DATA_DIR, download
    )
    with open(folder / spec.meta_file, "rb") as f:
        class_names = list(pickle.load(f, encoding="latin1")[spec.names_key])
    return memory_bundle(
        name,
        train=_read_batches(folder, spec.train_files, spec.label_key),
        test=_read_batches(folder, spec.test_files, spec.label_key),
        class_names=class_names,
        scale=1 / 255,
        mean=spec.mean,
        std=spec.std,
        val_fraction=val_fraction,
        seed=seed,
        train_size=train_size,
    )


def _find_cifar(name: str, spec: _Cifar, data_dir: Path, download: bool) -> Path:
    files = (*spec.train_files, *spec.test_files, spec.meta_file)
    candidates = [data_dir / spec.folder, data_dir]
    for folder in candidates:
        if all((folder / file).is_file() for file in files):
            return folder
    if download:
        from torchvision import datasets

        # torchvision downloads, checks and unpacks the archive; the pickles are read here.
        getattr(datasets, name.upper())(root=str(data_dir), download=True)
        return data_dir / spec.folder
    raise DatasetNotFoundError(
        f"{spec.title} not found: looked for {', '.join(files)} in "
        f"{', '.join(map(str, candidates))}. Pass data_dir=<folder holding {spec.folder}>, or "
        f"download=True to fetch it with torchvision."
    )


def _read_batches(folder: Path, files: tuple[str, ...], label_key: str) -> tuple[np.ndarray, ...]:
    """Concatenate pickled batches: ``data`` is (N, 3072) uint8, each row the red, green then blue
    32x32 planes in row-major order; ``label_key`` holds N integer labels."""
    images, labels = [], []
    for file in files:
        with open(folder / file, "rb") as f:
            batch = pickle.load(f, encoding="latin1")
        images.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.append(np.asarray(batch[label_key], dtype=np.int64))
    return np.concatenate(images), np.concatenate(labels)


# A folder dataset without a test/ subfolder gets this fixed share of its train images as test,
# chosen with a seed that no run changes, so every run is scored on the same images.
FOLDER_TEST_FRACTION = 0.2
FOLDER_TEST_SEED = 0
# Normalisation statistics of a folder dataset are estimated from this many training images.
FOLDER_STATS_SAMPLE = 1000


def read_image(path: str):
    """The image at ``path`` as RGB, or an error naming the file."""
    from torchvision.datasets.folder import default_loader

    try:
        return default_loader(path)
    except (OSError, ValueError) as err:  # PIL's UnidentifiedImageError is an OSError
        raise ValueError(f"image {path} cannot be read: {err}") from None


class FolderDataset(Dataset):
    """Image files read and transformed one at a time; items are ``(image, label, index)``."""

    def __init__(self, samples: list[tuple[str, int]], transform: T.Compose):
        self.samples = samples
        self.transform = transform

    @property
    def labels(self) -> list[int]:
        return [label for _, label in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[Tensor, int, int]:
        path, label = self.samples[i]
        return self.transform(read_image(path)), label, i % len(self)


@register_dataset("imagefolder")
def load_image_folder(
    *,
    data_dir: Path | None,
    download: bool,
    val_fraction: float,
    seed: int,
    train_size: int | None,
    image_size: int = 32,
) -> DataBundle:
    """Images in class subfolders (torchvision ImageFolder), read from disk per item.

    ``data_dir`` holds ``train/`` and optionally ``val/`` and ``test/``, each with one subfolder per
    class, or is itself one folder of class subfolders (used as ``train/``). A missing ``test/``
    is carved from train (a fixed stratified 20%, the same for every seed); a missing ``val/`` is
    carved with ``val_fraction`` and ``seed`` (``val_fraction`` is unused when ``val/`` exists).
    Images are converted to RGB, resized so the shorter side is ``image_size`` and centre-cropped
    to a square; the default 32 suits the CIFAR-style models of the zoo. Normalisation statistics
    are estimated from up to 1000 training images drawn with a fixed seed. ``download`` is
    ignored.
    """
    from torchvision import transforms as T
    from torchvision.datasets import ImageFolder

    if data_dir is None:
        raise ValueError("imagefolder needs data_dir, the folder that holds the images")
    if not data_dir.is_dir():
        raise DatasetNotFoundError(f"imagefolder: data_dir {data_dir} is not a folder")
    train_dir = data_dir / "train" if (data_dir / "train").is_dir() else data_dir
    reference = ImageFolder(str(train_dir))
    pool = reference.samples
    labels = np.array(reference.targets, dtype=np.int64)

    test_dir = data_dir / "test"
    if test_dir.is_dir():
        test = _samples_like(reference, test_dir)
    else:
        rest, held_out = stratified_split(labels, FOLDER_TEST_FRACTION, seed=FOLDER_TEST_SEED)
        test = [pool[i] for i in held_out]
        pool, labels = [pool[i] for i in rest], labels[rest]

    val_dir = data_dir / "val"
    given_val = val_dir.is_dir()
    train_idx, val_idx = carve_splits(
        labels, val_fraction=0.0 if given_val else val_fraction, seed=seed, train_size=train_size
    )
    val = _samples_like(reference, val_dir) if given_val else [pool[i] for i in val_idx]
    train = [pool[i] for i in train_idx]

    resize = T.Compose([T.Resize(image_size), T.CenterCrop(image_size), T.ToTensor()])
    mean, std = _estimate_stats(train, resize)
    transform = T.Compose([resize, T.Normalize(mean, std)])
    return DataBundle(
        name="imagefolder",
        train=FolderDataset(train, transform),
        val=FolderDataset(val, transform),
        test=FolderDataset(test, transform),
        num_classes=len(reference.classes),
        in_channels=3,
        image_size=(image_size, image_size),
        class_names=list(reference.classes),
        mean=mean,
        std=std,
    )


def _samples_like(reference: ImageFolder, folder: Path) -> list[tuple[str, int]]:
    """The samples of ``folder`` labelled with ``reference``'s class indices (matched by name), so a
    split that lacks a class does not shift the labels of the others."""
    from torchvision.datasets import ImageFolder

    other = ImageFolder(str(folder))
    unknown = sorted(set(other.classes) - set(reference.classes))
    if unknown:
        raise ValueError(
            f"{folder} has classes {unknown} that the train folder lacks; train classes: "
            f"{reference.classes}"
        )
    return [(path, reference.class_to_idx[other.classes[label]]) for path, label in other.samples]


def _estimate_stats(
    samples: list[tuple[str, int]], resize: T.Compose
) -> tuple[tuple[float, ...], tuple[float, ...]]:

    labels = [label for _, label in samples]
    chosen = stratified_sample(labels, min(len(samples), FOLDER_STATS_SAMPLE), seed=0)
    images = (resize(read_image(samples[i][0])) for i in chosen)
    mean, std = channel_stats(img[None] for img in images)
    # A constant channel (say blue in pure-red images) has std 0: leave it unscaled.
    return mean, tuple(s if s > 0 else 1.0 for s in std)
