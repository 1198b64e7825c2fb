"""Users' own dense data: Pascal-VOC-style segmentation and COCO-style detection, read from disk
per item and resized to one square side so batches stack.

Both return :class:`~kdscope.data.dense.DenseBundle`\\ s whose ``val`` split is carved from the
training images (``val_fraction``, ``seed``) and whose ``test`` split is the dataset's own
validation set (VOC and COCO publish no test labels). Normalisation statistics are estimated on up
to 1000 training images drawn with a fixed seed.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from kdscope.data.dense import IGNORE_INDEX, DenseBundle, DetectionTarget
from kdscope.data.registry import DatasetNotFoundError, register_dataset
from kdscope.data.splits import carve_splits, stratified_sample
from kdscope.data.transforms import channel_stats

VOC_CLASSES = [
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
]  # fmt: skip
STATS_SAMPLE = 1000
# COCO boxes may overhang their image by this much (annotation tools round): they are clipped;
# a box further out is an error.
BOX_TOLERANCE = 1.0


class _Resized(Dataset):
    """Shared reading: RGB, resized bilinearly to ``size`` x ``size``, then normalised."""

    def __init__(self, size: int):
        if size < 1:
            raise ValueError(f"image_size must be >= 1, got {size}")
        self.size = size
        self.mean = self.std = None

    def _image(self, path: Path | str) -> tuple[Tensor, tuple[int, int]]:
        with Image.open(path) as img:
            original = img.size
            img = img.convert("RGB").resize((self.size, self.size), Image.Resampling.BILINEAR)
            x = torch.from_numpy(np.array(img)).permute(2, 0, 1).float().div_(255)
        if self.mean is not None:
            x = (x - torch.tensor(self.mean)[:, None, None]) / torch.tensor(self.std)[:, None, None]
        return x, original

    def set_stats(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        self.mean, self.std = mean, std


class VOCSegmentationSplit(_Resized):
    """One image set of a VOC-style folder: ``JPEGImages/<id>.jpg``, ``SegmentationClass/<id>.png``
    (palette or greyscale PNGs of class indices, 255 = not scored), ``ImageSets/Segmentation/
    <image_set>.txt`` (one id a line). Items ``(image (3, S, S), mask (S, S) long, index)``;
    masks are resized by nearest neighbour.

    Raises ValueError at construction for a mask whose size differs from its image's, and when
    an item is read for a mask that is not a palette/greyscale PNG or holds a value that is
    neither a class index nor 255.
    """

    def __init__(self, root: Path, image_set: str, *, num_classes: int, image_size: int):
        super().__init__(image_size)
        listing = root / "ImageSets" / "Segmentation" / f"{image_set}.txt"
        ids = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
        self.num_classes = num_classes
        self.samples = []
        for name in ids:
            image, mask = (
                root / "JPEGImages" / f"{name}.jpg",
                root / "SegmentationClass" / f"{name}.png",
            )
            for path in (image, mask):
                if not path.is_file():
                    raise DatasetNotFoundError(f"{listing} lists {name!r} but {path} is missing")
            with Image.open(image) as a, Image.open(mask) as b:
                if a.size != b.size:
                    raise ValueError(
                        f"mask {mask} is {b.size[0]}x{b.size[1]} but its image is "
                        f"{a.size[0]}x{a.size[1]}; a mask must have its image's size"
                    )
            self.samples.append((image, mask))

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor, int]:
        image_path, mask_path = self.samples[i]
        x, _ = self._image(image_path)
        with Image.open(mask_path) as mask:
            if mask.mode not in ("P", "L"):
                raise ValueError(
                    f"mask {mask_path} has mode {mask.mode!r}; masks must be palette ('P') or "
                    f"greyscale ('L') PNGs of class indices"
                )
            values = np.array(mask.resize((self.size, self.size), Image.Resampling.NEAREST))
        bad = np.setdiff1d(np.unique(values), [*range(self.num_classes), IGNORE_INDEX])
        if len(bad):
            raise ValueError(
                f"mask {mask_path} holds values {bad.tolist()}; accepted: class indices "
                f"0..{self.num_classes - 1} and {IGNORE_INDEX} (not scored)"
            )
        return x, torch.from_numpy(values.astype(np.int64)), i % len(self)


class CocoDetectionSplit(_Resized):
    """A COCO-format annotation file and its image folder, read through
    ``torchvision.datasets.CocoDetection``. Items ``(image (3, S, S), {"boxes": (N, 4) xyxy,
    "labels": (N,)}, index)`` with boxes scaled to the resized image and labels 1..K in the order of
    ``category_ids`` (0 is background).

    At construction: an annotation whose ``category_id`` is not among ``category_ids`` raises
    ValueError, as does a box lying outside its image by more than ``BOX_TOLERANCE`` pixels (one
    within it is clipped). Skipped, as torchvision's detection references skip them: crowd
    annotations (``iscrowd`` 1) and boxes of zero width or height. An image with no annotation is
    kept, with no boxes: a detector learns it as background, and its detections count as false
    positives in mAP. Reading an image whose size is not the one its JSON entry gives raises
    ValueError.
    """

    def __init__(
        self,
        images_dir: Path,
        annotation_file: Path,
        *,
        image_size: int,
        category_ids: list[int] | None = None,
    ):
        from torchvision.datasets import CocoDetection

        super().__init__(image_size)
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            self.coco_dataset = CocoDetection(str(images_dir), str(annotation_file))
        coco = self.coco_dataset.coco
        own = sorted(coco.cats)
        self.category_ids = own if category_ids is None else list(category_ids)
        self.label_of = {cat: k + 1 for k, cat in enumerate(self.category_ids)}
        names = [coco.cats[c]["name"] if c in coco.cats else str(c) for c in self.category_ids]
        self.class_names = ["background", *names]
        self.targets = [self._target(coco, image_id) for image_id in self.coco_dataset.ids]

    def _target(self, coco, image_id: int) -> tuple[np.ndarray, np.ndarray]:
        info = coco.imgs[image_id]
        width, height = info["width"], info["height"]
        boxes, labels = [], []
        for ann in coco.imgToAnns.get(image_id, []):
            if ann["category_id"] not in self.label_of:
                raise ValueError(
                    f"annotation {ann.get('id')} of image {image_id} has category_id "
                    f"{ann['category_id']}, which is not a category of the dataset; accepted: "
                    f"{self.category_ids}"
                )
            x, y, w, h = (float(v) for v in ann["bbox"])
            if ann.get("iscrowd", 0) or w <= 0 or h <= 0:
                continue
            tol = BOX_TOLERANCE
            if min(x, y) < -tol or x + w > width + tol or y + h > height + tol:
                raise ValueError(
                    f"annotation {ann.get('id')} of image {image_id} has bbox {ann['bbox']} "
                    f"(x, y, w, h), outside its {width}x{height} image"
                )
            box = np.clip([x, y, x + w, y + h], 0, [width, height, width, height])
            boxes.append(box * self.size / np.array([width, height, width, height]))
            labels.append(self.label_of[ann["category_id"]])
        return np.array(boxes, np.float32).reshape(-1, 4), np.array(labels, np.int64)

    def __len__(self) -> int:
        return len(self.coco_dataset)

    def __getitem__(self, i: int) -> tuple[Tensor, DetectionTarget, int]:
        image_id = self.coco_dataset.ids[i]
        info = self.coco_dataset.coco.imgs[image_id]
        path = Path(self.coco_dataset.root) / info["file_name"]
        x, size = self._image(path)
        if size != (info["width"], info["height"]):
            raise ValueError(
                f"image {path} is {size[0]}x{size[1]} but its annotation file says "
                f"{info['width']}x{info['height']}"
            )
        boxes, labels = self.targets[i]
        return x, {"boxes": torch.from_numpy(boxes), "labels": torch.from_numpy(labels)}, i


class _Subset(Dataset):
    """Items of ``base`` at ``indices``, re-indexed from 0 (the index keys the teacher cache)."""

    def __init__(self, base: Dataset, indices: np.ndarray):
        self.base, self.indices = base, [int(i) for i in indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        x, target, _ = self.base[self.indices[i]]
        return x, target, i


def _bundle(
    name: str,
    task: str,
    train: VOCSegmentationSplit | CocoDetectionSplit,
    test: VOCSegmentationSplit | CocoDetectionSplit,
    *,
    val_fraction: float,
    seed: int,
    train_size: int | None,
    class_names: list[str],
    options: dict,
) -> DenseBundle:
    stats_from = stratified_sample(np.zeros(len(train)), min(len(train), STATS_SAMPLE), seed=0)
    mean, std = channel_stats(train[int(i)][0][None] for i in stats_from)
    std = tuple(s if s > 0 else 1.0 for s in std)  # a constant channel is left unscaled
    for split in (train, test):
        split.set_stats(mean, std)
    train_idx, val_idx = carve_splits(
        np.zeros(len(train), np.int64), val_fraction=val_fraction, seed=seed, train_size=train_size
    )
    return DenseBundle(
        name=name,
        train=_Subset(train, train_idx),
        val=_Subset(train, val_idx),
        test=test,
        num_classes=len(class_names),
        in_channels=3,
        image_size=(train.size, train.size),
        class_names=list(class_names),
        mean=mean,
        std=std,
        task=task,
        options=options,
    )


def _voc_root(data_dir: Path | None) -> Path:
    if data_dir is None:
        raise ValueError("voc-segmentation needs data_dir, the folder that holds the VOC layout")
    candidates = [data_dir, *sorted(data_dir.glob("VOCdevkit/VOC*"))]
    for root in candidates:
        if (root / "ImageSets" / "Segmentation" / "train.txt").is_file():
            return root
    raise DatasetNotFoundError(
        f"no VOC segmentation layout in {data_dir}: looked for ImageSets/Segmentation/train.txt "
        f"(with val.txt, JPEGImages/ and SegmentationClass/) in {', '.join(map(str, candidates))}"
    )


@register_dataset("voc-segmentation")
def load_voc_segmentation(
    *,
    data_dir: Path | None,
    download: bool,
    val_fraction: float,
    seed: int,
    train_size: int | None,
    image_size: int = 64,
    class_names: list[str] | None = None,
) -> DenseBundle:
    """Pascal-VOC-style segmentation (``torchvision.datasets.VOCSegmentation``'s layout):
    ``data_dir`` is the folder holding ``JPEGImages/``, ``SegmentationClass/`` and
    ``ImageSets/Segmentation/{train,val}.txt``, or a root with ``VOCdevkit/VOC<year>/``.
    ``val.txt`` is the test split. Images and masks are resized to ``image_size`` squares.
    ``class_names`` defaults to VOC's 21 (background first). ``download`` is ignored.
    """
    root = _voc_root(data_dir)
    names = VOC_CLASSES if class_names is None else list(class_names)
    splits = [
        VOCSegmentationSplit(root, s, num_classes=len(names), image_size=image_size)
        for s in ("train", "val")
    ]
    return _bundle(
        "voc-segmentation",
        "segmentation",
        *splits,
        val_fraction=val_fraction,
        seed=seed,
        train_size=train_size,
        class_names=names,
        options={"root": str(root), "image_size": image_size},
    )


def _coco_split(data_dir: Path, split: str) -> tuple[Path, Path]:
    names = (split, f"{split}2017")
    annotations = [data_dir / "annotations" / f"instances_{n}.json" for n in names]
    folders = [data_dir / n for n in names]
    found = (
        next((a for a in annotations if a.is_file()), None),
        next((f for f in folders if f.is_dir()), None),
    )
    if None in found:
        raise DatasetNotFoundError(
            f"COCO split {split!r} not found: looked for one of "
            f"{', '.join(map(str, annotations))} and an image folder "
            f"{' or '.join(map(str, folders))}"
        )
    return found[1], found[0]


@register_dataset("coco-detection")
def load_coco_detection(
    *,
    data_dir: Path | None,
    download: bool,
    val_fraction: float,
    seed: int,
    train_size: int | None,
    image_size: int = 64,
) -> DenseBundle:
    """COCO-style detection: ``data_dir`` holds ``annotations/instances_{train,val}.json`` (or
    ``..._{train,val}2017.json``) and the image folders ``train/`` and ``val/`` (or
    ``train2017/``, ``val2017/``); ``val`` is the test split. Labels are 1..K over the train
    file's categories in id order (``options["category_ids"]`` records the order). Images are
    resized to ``image_size`` squares, boxes with them. ``download`` is ignored.
    """
    if data_dir is None:
        raise ValueError("coco-detection needs data_dir, the folder that holds the COCO layout")
    train = CocoDetectionSplit(*_coco_split(data_dir, "train"), image_size=image_size)
    test = CocoDetectionSplit(
        *_coco_split(data_dir, "val"), image_size=image_size, category_ids=train.category_ids
    )
    options = {"root": str(data_dir), "image_size": image_size, "category_ids": train.category_ids}
    return _bundle(
        "coco-detection",
        "detection",
        train,
        test,
        val_fraction=val_fraction,
        seed=seed,
        train_size=train_size,
        class_names=train.class_names,
        options=options,
    )
