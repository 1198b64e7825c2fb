"""``fmnist-scenes``: multi-object scenes pasted together from real Fashion-MNIST images, with a
per-pixel class mask and one box per visible object, generated deterministically from a seed.

A scene is a black canvas onto which 1-4 objects (by default) are drawn in turn, each a
Fashion-MNIST image resized to ``28 * s`` pixels a side (``s`` uniform in ``scale``) at a uniform
position that keeps it inside the canvas. An object's pixels are those brighter than
:data:`FOREGROUND` after resizing; later objects cover earlier ones there (occlusion by drawing
order), and its darker pixels leave what lies below visible. The mask holds 0 for background and
``class + 1`` for the top object of each pixel; an object with at least one visible pixel gets the
tight box of its visible pixels, ``[x0, y0, x1, y1]`` in pixel edges (a single pixel at column
``c``, row ``r`` is ``[c, r, c + 1, r + 1]``), labelled ``class + 1``. Wholly covered objects get
no box.

Training scenes draw only from the 60000 training images and test scenes only from the 10000 test
images; validation is carved from the training scenes. Scenes are generated once per parameter
set and cached under a folder named by a digest of the parameters and of the source images.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from kdscope.data.dense import (
    DenseBundle,
    MemoryDetection,
    MemorySegmentation,
    check_task,
    flatten_boxes,
)
from kdscope.data.fashion_mnist import CLASS_NAMES, FILES, find_files, read_idx
from kdscope.data.registry import DEFAULT_DATA_DIR, register_dataset
from kdscope.data.splits import carve_splits

# Resized Fashion-MNIST pixels at or below this (of 255) are transparent: it drops the faint halo
# bilinear resizing leaves around an object (10% of the nonzero source pixels are below 29).
FOREGROUND = 16
SOURCE_SIDE = 28
# Bumped whenever generation changes, so old caches are never read as new scenes.
GENERATOR_VERSION = 1
_TRAIN_STREAM, _TEST_STREAM = 0, 1


@dataclass
class Scenes:
    """Generated scenes: images (N, 1, H, W) uint8, masks (N, H, W) uint8, and the boxes of scene
    i in rows ``offsets[i]:offsets[i + 1]`` of ``boxes`` (M, 4) float32 / ``labels`` (M,)."""

    images: np.ndarray
    masks: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    offsets: np.ndarray

    def boxes_of(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        start, stop = self.offsets[i], self.offsets[i + 1]
        return self.boxes[start:stop], self.labels[start:stop]

    def visible_objects(self) -> np.ndarray:
        return np.diff(self.offsets)


_FIELDS = [f.name for f in fields(Scenes)]


def generate_scenes(
    images: np.ndarray,
    labels: np.ndarray,
    *,
    count: int,
    canvas: tuple[int, int] = (64, 64),
    objects: tuple[int, int] = (1, 4),
    scale: tuple[float, float] = (0.5, 1.25),
    seed: int = 0,
) -> Scenes:
    """Draw ``count`` scenes from source ``images`` (N, 28, 28) uint8 with class ``labels`` (N,).

    ``objects`` and ``scale`` are inclusive ranges; everything drawn comes from
    ``numpy.random.default_rng(seed)``, so the same arguments give the same scenes.
    """
    height, width = canvas
    _check_options(canvas, objects, scale, count)
    rng = np.random.default_rng(seed)
    out_images = np.zeros((count, 1, height, width), np.uint8)
    out_masks = np.zeros((count, height, width), np.uint8)
    per_scene = []
    for i in range(count):
        owner = np.full((height, width), -1, np.int16)
        drawn = []
        for k in range(int(rng.integers(objects[0], objects[1] + 1))):
            source = int(rng.integers(len(images)))
            side = round(SOURCE_SIDE * float(rng.uniform(*scale)))
            y = int(rng.integers(0, height - side + 1))
            x = int(rng.integers(0, width - side + 1))
            patch = np.asarray(
                Image.fromarray(images[source]).resize((side, side), Image.Resampling.BILINEAR)
            )
            visible = patch > FOREGROUND
            out_images[i, 0, y : y + side, x : x + side][visible] = patch[visible]
            out_masks[i, y : y + side, x : x + side][visible] = labels[source] + 1
            owner[y : y + side, x : x + side][visible] = k
            drawn.append(int(labels[source]) + 1)
        boxes, box_labels = [], []
        for k, label in enumerate(drawn):
            rows, cols = np.nonzero(owner == k)
            if len(rows):
                boxes.append([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1])
                box_labels.append(label)
        per_scene.append((np.array(boxes, np.float32).reshape(-1, 4), np.array(box_labels)))
    boxes, box_labels, offsets = (t.numpy() for t in flatten_boxes(per_scene))
    return Scenes(out_images, out_masks, boxes, box_labels, offsets)


def _check_options(
    canvas: tuple[int, int], objects: tuple[int, int], scale: tuple[float, float], count: int
) -> None:
    if len(canvas) != 2 or min(canvas) < 1:
        raise ValueError(f"canvas must be a positive side or (height, width), got {canvas}")
    if len(objects) != 2 or not 1 <= objects[0] <= objects[1]:
        raise ValueError(
            f"objects must be a range (low, high) with 1 <= low <= high, got {objects}"
        )
    shorter = min(canvas)
    if len(scale) != 2 or not 0 < scale[0] <= scale[1] or round(SOURCE_SIDE * scale[1]) > shorter:
        raise ValueError(
            f"scale must be a range (low, high) with 0 < low <= high and 28 * high <= the canvas's "
            f"shorter side ({shorter}), got {scale}"
        )
    if round(SOURCE_SIDE * scale[0]) < 1:
        raise ValueError(f"scale {scale} shrinks objects below one pixel")
    if count < 1:
        raise ValueError(f"the number of scenes per split must be >= 1, got {count}")


def scene_options(
    canvas: int | Sequence[int] = 64,
    objects: Sequence[int] = (1, 4),
    scale: Sequence[float] = (0.5, 1.25),
    num_train: int = 10000,
    num_test: int = 2000,
    scene_seed: int = 0,
) -> dict:
    """The generator parameters in canonical form (what the bundle records and the cache keys)."""
    sides = (canvas, canvas) if isinstance(canvas, int) else tuple(int(c) for c in canvas)
    options = {
        "canvas": list(sides),
        "objects": [int(o) for o in objects],
        "scale": [float(s) for s in scale],
        "num_train": int(num_train),
        "num_test": int(num_test),
        "scene_seed": int(scene_seed),
    }
    _check_options(sides, tuple(options["objects"]), tuple(options["scale"]), num_train)
    _check_options(sides, tuple(options["objects"]), tuple(options["scale"]), num_test)
    return options


def cached_scenes(
    options: dict, source: dict[str, tuple[np.ndarray, np.ndarray]], cache_dir: Path
) -> tuple[dict[str, Scenes], Path]:
    """The train and test scenes for ``options``, generated into ``cache_dir/<digest>`` on first
    use and read from there afterwards. The digest covers the options, the generator version and
    the source images, so no other parameter set or source ever reuses the folder."""
    digest = hashlib.sha256(
        json.dumps({**options, "version": GENERATOR_VERSION}, sort_keys=True).encode()
    )
    for split in ("train", "test"):
        for array in source[split]:
            digest.update(np.ascontiguousarray(array).tobytes())
    folder = cache_dir / digest.hexdigest()[:20]
    path = folder / "scenes.npz"
    if not path.is_file():
        generated = {
            split: generate_scenes(
                *source[split],
                count=options[f"num_{split}"],
                canvas=tuple(options["canvas"]),
                objects=tuple(options["objects"]),
                scale=tuple(options["scale"]),
                seed=int(
                    np.random.SeedSequence([options["scene_seed"], stream]).generate_state(1)[0]
                ),
            )
            for split, stream in (("train", _TRAIN_STREAM), ("test", _TEST_STREAM))
        }
        _write(folder, generated, options)
    with np.load(path) as stored:
        scenes = {
            split: Scenes(*(stored[f"{split}_{f}"] for f in _FIELDS)) for split in ("train", "test")
        }
    return scenes, folder


def _write(folder: Path, scenes: dict[str, Scenes], options: dict) -> None:
    # Written to a temporary folder and renamed, so a process that reads the cache while another
    # generates it (DDP ranks) sees either nothing or the finished files.
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".tmp-"))
    arrays = {f"{split}_{f}": getattr(s, f) for split, s in scenes.items() for f in _FIELDS}
    np.savez_compressed(tmp / "scenes.npz", **arrays)
    (tmp / "options.json").write_text(json.dumps(options, indent=2, sort_keys=True))
    try:
        os.rename(tmp, folder)
    except OSError:  # another process finished first: its files are the same
        shutil.rmtree(tmp, ignore_errors=True)


def _pixel_stats(images: np.ndarray) -> tuple[tuple[float], tuple[float]]:
    # From the histogram of the 256 grey levels: exact, and no float copy of the images.
    counts = np.bincount(images.ravel(), minlength=256).astype(np.float64)
    levels = np.arange(256) / 255
    mean = counts @ levels / counts.sum()
    return (float(mean),), (float(np.sqrt(counts @ (levels - mean) ** 2 / counts.sum())),)


@register_dataset("fmnist-scenes")
def load_fmnist_scenes(
    *,
    data_dir: Path | None,
    download: bool,
    val_fraction: float,
    seed: int,
    train_size: int | None,
    task: str = "segmentation",
    canvas: int | Sequence[int] = 64,
    objects: Sequence[int] = (1, 4),
    scale: Sequence[float] = (0.5, 1.25),
    num_train: int = 10000,
    num_test: int = 2000,
    scene_seed: int = 0,
    cache_dir: Path | str | None = None,
) -> DenseBundle:
    """Grey multi-object scenes from Fashion-MNIST for segmentation or detection (11 classes:
    background and the 10 garments; see the module docstring for how scenes are drawn).

    Parameters
    ----------
    data_dir, download : where the Fashion-MNIST IDX files are, as for ``fashion-mnist``.
    val_fraction, seed, train_size : validation is carved from the ``num_train`` training scenes,
        stratified by the number of visible objects; the scenes themselves never depend on
        ``seed``.
    task : ``"segmentation"`` (targets: LongTensor (H, W) masks) or ``"detection"`` (targets:
        ``{"boxes": (N, 4) xyxy, "labels": (N,)}``).
    canvas : scene side, or (height, width).
    objects : inclusive range of objects drawn per scene.
    scale : inclusive range of the object side as a multiple of 28 pixels.
    num_train, num_test : scenes generated per official split.
    scene_seed : seeds the generator (train and test draw from independent streams of it).
    cache_dir : where generated scenes are kept (default
        ``~/.cache/kdscope/datasets/fmnist-scenes``).

    The bundle's ``options`` records the generator parameters and ``cache``, the folder used.
    Normalisation statistics are those of all ``num_train`` training scenes.
    """
    check_task(task)
    options = scene_options(canvas, objects, scale, num_train, num_test, scene_seed)
    files = find_files(data_dir, download)
    source = {
        split: (read_idx(files[images]), read_idx(files[labels]).astype(np.int64))
        for split, (images, labels) in FILES.items()
    }
    root = Path(cache_dir).expanduser() if cache_dir else DEFAULT_DATA_DIR / "fmnist-scenes"
    scenes, folder = cached_scenes(options, source, root)
    train = scenes["train"]
    mean, std = _pixel_stats(train.images)
    train_idx, val_idx = carve_splits(
        train.visible_objects(), val_fraction=val_fraction, seed=seed, train_size=train_size
    )

    def split(s: Scenes, index: np.ndarray | None = None):
        index = np.arange(len(s.images)) if index is None else index
        images = torch.from_numpy(s.images[index])
        normalisation = {"scale": 1 / 255, "mean": mean, "std": std}
        if task == "segmentation":
            return MemorySegmentation(images, torch.from_numpy(s.masks[index]), **normalisation)
        return MemoryDetection(
            images, *flatten_boxes([s.boxes_of(i) for i in index]), **normalisation
        )

    return DenseBundle(
        name="fmnist-scenes",
        train=split(train, train_idx),
        val=split(train, val_idx),
        test=split(scenes["test"]),
        num_classes=len(CLASS_NAMES) + 1,
        in_channels=1,
        image_size=tuple(options["canvas"]),
        class_names=["background", *CLASS_NAMES],
        mean=mean,
        std=std,
        task=task,
        options={**options, "cache": str(folder)},
    )
