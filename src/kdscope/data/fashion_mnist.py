"""Fashion-MNIST (Xiao, Rasul and Vollgraf 2017) read from its four IDX files."""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np

from kdscope.data.bundle import DataBundle
from kdscope.data.memory import memory_bundle
from kdscope.data.registry import (
    DEFAULT_DATA_DIR,
    DatasetNotFoundError,
    dataset_dir,
    register_dataset,
)

CLASS_NAMES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# Where the Debian package dataset-fashion-mnist installs the files.
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
# Pixel statistics of the 60000 official training images, scaled to [0, 1].
MEAN = (0.2860,)
STD = (0.3530,)

_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (LeCun's MNIST format), gzipped when its name ends in ``.gz``.

    Layout: two zero bytes, a dtype code, the number of dimensions n, n big-endian uint32 sizes,
    then the values in C order.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (EOFError, OSError, zlib.error) as err:  # a truncated or damaged .gz
        raise ValueError(f"{path} cannot be read (truncated or damaged?): {err}") from None
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic number {data[:4].hex()})")
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = struct.unpack(f">{ndim}I", data[4:header])
    values = np.frombuffer(data, dtype=_IDX_DTYPES[data[2]], offset=header)
    if values.size != math.prod(shape):
        raise ValueError(f"{path} holds {values.size} values but its header says {shape}")
    return values.reshape(shape)


@register_dataset("fashion-mnist")
def load_fashion_mnist(
    *,
    data_dir: Path | None,
    download: bool,
    val_fraction: float,
    seed: int,
    train_size: int | None,
) -> DataBundle:
    """60000 train and 10000 test grey 28x28 images of clothing in 10 classes.

    The IDX files (``.gz`` or unpacked) are looked for in ``data_dir`` (also in torchvision's
    layout ``data_dir/FashionMNIST/raw``), which must then hold all four; without one in
    ``$KDSCOPE_DATA/fashion-mnist``, ``~/.cache/kdscope/datasets`` and
    ``/usr/share/datasets/fashion-mnist`` (Debian package ``dataset-fashion-mnist``). With
    ``download=True`` torchvision fetches them. The bundle's ``source`` names the folder used.
    """
    files = find_files(data_dir, download)
    splits = {}
    for split, (images_name, labels_name) in FILES.items():
        images, labels = read_idx(files[images_name]), read_idx(files[labels_name])
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise ValueError(
                f"Fashion-MNIST {split} files do not match: {files[images_name]} holds images of "
                f"shape {images.shape}, {files[labels_name]} labels of shape {labels.shape}"
            )
        splits[split] = (images[:, None], labels.astype(np.int64))
    return memory_bundle(
        "fashion-mnist",
        train=splits["train"],
        test=splits["test"],
        class_names=CLASS_NAMES,
        scale=1 / 255,
        mean=MEAN,
        std=STD,
        val_fraction=val_fraction,
        seed=seed,
        train_size=train_size,
        source=str(files[FILES["train"][0]].parent),
    )


def find_files(data_dir: Path | None, download: bool) -> dict[str, Path]:
    """The four IDX files. An explicit ``data_dir`` must hold all four (directly or in
    torchvision's ``FashionMNIST/raw``): an incomplete one is an error, never a silent fall-back to
    another copy. Without one, ``$KDSCOPE_DATA/fashion-mnist``, the cache directory and the Debian
    package's folder are searched in turn."""
    names = [name for pair in FILES.values() for name in pair]
    root = dataset_dir("fashion-mnist", data_dir)
    candidates = [root, root / "FashionMNIST" / "raw"]
    if data_dir is None:
        candidates += [DEFAULT_DATA_DIR, DEBIAN_DIR]
    for folder in candidates:
        found = {name: _locate(folder / name) for name in names}
        if all(found.values()):
            return found
        if data_dir is not None and any(found.values()) and not download:
            missing = [n for n, p in found.items() if p is None]
            raise DatasetNotFoundError(
                f"data_dir {str(data_dir)!r} holds only part of Fashion-MNIST: "
                f"{', '.join(missing)} (.gz or unpacked) missing from {folder}"
            )
    if download:
        from torchvision.datasets import FashionMNIST

        FashionMNIST(root=str(root), download=True)
        return {name: _locate(root / "FashionMNIST" / "raw" / name) for name in names}
    raise DatasetNotFoundError(
        f"Fashion-MNIST not found: looked for {', '.join(n + '.gz' for n in names)} in "
        f"{', '.join(map(str, candidates))}. Provide it in one of three ways: put the four IDX "
        f"files in a folder and pass it as data_dir; install the Debian package "
        f"(apt-get install dataset-fashion-mnist); or pass download=True to fetch it with "
        f"torchvision."
    )


def _locate(stem: Path) -> Path | None:
    # The original site and Debian ship .gz files; torchvision also keeps them unpacked.
    return next((p for p in (stem.with_name(stem.name + ".gz"), stem) if p.is_file()), None)
