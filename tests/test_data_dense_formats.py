"""VOC-style segmentation and COCO-style detection readers, on small files written here."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from kdscope.data import collate
from kdscope.data.dense_formats import load_coco_detection, load_voc_segmentation
from kdscope.data.registry import DatasetNotFoundError

KW = {"download": False, "val_fraction": 0.25, "seed": 0, "train_size": None}


def palette_png(path: Path, values: np.ndarray) -> None:
    img = Image.fromarray(values.astype(np.uint8), mode="P")
    img.putpalette([v for i in range(256) for v in (i, 255 - i, (7 * i) % 256)])
    img.save(path)


def write_voc(root: Path, sizes: dict[str, list[tuple[int, int]]]) -> None:
    """A VOC layout whose mask i is background with a class-(1 + i % 2) block on its left half
    and a 255 (not scored) band over its top quarter."""
    for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    n = 0
    for split, shapes in sizes.items():
        names = []
        for w, h in shapes:
            name = f"2007_{n:06d}"
            pixels = (rng.random((h, w, 3)) * 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / "JPEGImages" / f"{name}.jpg")
            mask = np.zeros((h, w), np.uint8)
            mask[:, : w // 2] = 1 + n % 2
            mask[: h // 4] = 255
            palette_png(root / "SegmentationClass" / f"{name}.png", mask)
            names.append(name)
            n += 1
        (root / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(names) + "\n")


VOC_SIZES = {"train": [(40, 30), (32, 32), (50, 20), (24, 36)], "val": [(30, 30), (20, 40)]}
NAMES = ["background", "cat", "dog"]


def test_voc_segmentation_reads_layout(tmp_path):
    write_voc(tmp_path / "VOCdevkit" / "VOC2012", VOC_SIZES)
    data = load_voc_segmentation(data_dir=tmp_path, image_size=16, class_names=NAMES, **KW)
    assert data.task == "segmentation" and data.num_classes == 3 and data.in_channels == 3
    assert (len(data.train), len(data.val), len(data.test)) == (3, 1, 2)
    x, mask, index = data.test[1]
    assert x.shape == (3, 16, 16) and mask.shape == (16, 16) and mask.dtype == torch.long
    assert index == 1
    # Nearest-neighbour resizing keeps only the labels the file holds: 255 border, block, 0.
    assert set(mask.unique().tolist()) == {0, 2, 255}
    assert (mask[4:, :8] == 2).all() and (mask[4:, 8:] == 0).all() and (mask[:4] == 255).all()
    images, masks, _ = collate([data.train[i] for i in range(3)])
    assert images.shape == (3, 3, 16, 16) and masks.shape == (3, 16, 16)
    # Normalised with training statistics: roughly zero mean, unit spread.
    assert abs(float(images.mean())) < 0.3 and 0.7 < float(images.std()) < 1.3


def test_voc_default_classes_and_plain_root(tmp_path):
    write_voc(tmp_path, VOC_SIZES)
    data = load_voc_segmentation(data_dir=tmp_path, **KW)
    assert data.num_classes == 21 and data.class_names[15] == "person"
    assert data.image_size == (64, 64)


def test_voc_mask_of_another_size_is_an_error(tmp_path):
    write_voc(tmp_path, VOC_SIZES)
    palette_png(tmp_path / "SegmentationClass" / "2007_000001.png", np.zeros((10, 10)))
    with pytest.raises(ValueError, match=r"2007_000001.png is 10x10 but its image is 32x32"):
        load_voc_segmentation(data_dir=tmp_path, class_names=NAMES, **KW)


def test_voc_bad_mask_values_and_modes_are_errors(tmp_path):
    write_voc(tmp_path, VOC_SIZES)
    palette_png(tmp_path / "SegmentationClass" / "2007_000004.png", np.full((30, 30), 7))
    Image.new("RGB", (20, 40)).save(tmp_path / "SegmentationClass" / "2007_000005.png")
    data = load_voc_segmentation(data_dir=tmp_path, class_names=NAMES, **KW)
    with pytest.raises(ValueError, match=r"holds values \[7\]; accepted: class indices 0..2"):
        data.test[0]
    with pytest.raises(ValueError, match="mode 'RGB'"):
        data.test[1]


def test_voc_missing_layout(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="ImageSets/Segmentation/train.txt"):
        load_voc_segmentation(data_dir=tmp_path, **KW)
    with pytest.raises(ValueError, match="needs data_dir"):
        load_voc_segmentation(data_dir=None, **KW)


# --- COCO --------------------------------------------------------------------------------------


def write_coco(root: Path, split: str, images: list[dict], annotations: list[dict]) -> None:
    (root / split).mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(exist_ok=True)
    for info in images:
        Image.new("RGB", (info["width"], info["height"]), (90, 20, 200)).save(
            root / split / info["file_name"]
        )
    cats = [{"id": 3, "name": "car"}, {"id": 7, "name": "truck"}]
    for i, ann in enumerate(annotations):
        ann.setdefault("id", i + 1)
        ann.setdefault("iscrowd", 0)
        ann.setdefault("area", ann["bbox"][2] * ann["bbox"][3])
    doc = {"images": images, "annotations": annotations, "categories": cats}
    (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(doc))


def image(i: int, w: int = 40, h: int = 20) -> dict:
    return {"id": i, "file_name": f"{i:04d}.jpg", "width": w, "height": h}


def coco_dataset(root: Path, train_annotations: list[dict]) -> None:
    write_coco(root, "train", [image(1), image(2), image(5, 20, 20), image(6)], train_annotations)
    write_coco(root, "val", [image(9)], [{"image_id": 9, "category_id": 3, "bbox": [0, 0, 4, 4]}])


GOOD = [
    {"image_id": 1, "category_id": 7, "bbox": [4.0, 2.0, 20.0, 10.0]},
    {"image_id": 1, "category_id": 3, "bbox": [0.0, 0.0, 40.0, 20.0]},
    {"image_id": 1, "category_id": 3, "bbox": [5.0, 5.0, 10.0, 10.0], "iscrowd": 1},
    {"image_id": 2, "category_id": 3, "bbox": [10.0, 10.0, 0.0, 5.0]},  # zero width
    {"image_id": 5, "category_id": 7, "bbox": [10.0, 10.0, 10.5, 10.0]},  # 0.5 px overhang
]


def test_coco_detection_reads_boxes_and_maps_categories(tmp_path):
    coco_dataset(tmp_path, [dict(a) for a in GOOD])
    data = load_coco_detection(data_dir=tmp_path, image_size=32, **{**KW, "val_fraction": 0.0})
    assert data.task == "detection" and data.num_classes == 3
    assert data.class_names == ["background", "car", "truck"]
    assert data.options["category_ids"] == [3, 7]
    base = data.train.base  # ids in sorted order: 1, 2, 5, 6
    x, target, index = base[0]
    assert x.shape == (3, 32, 32) and index == 0
    # Image 1 is 40x20, resized to 32x32: x scales by 0.8, y by 1.6. Crowd annotation skipped.
    expected = torch.tensor([[3.2, 3.2, 19.2, 19.2], [0.0, 0.0, 32.0, 32.0]])
    torch.testing.assert_close(target["boxes"], expected)
    assert target["labels"].tolist() == [2, 1]  # truck (id 7) -> 2, car (id 3) -> 1
    assert base[1][1]["boxes"].shape == (0, 4)  # the zero-width box is skipped
    torch.testing.assert_close(base[2][1]["boxes"], torch.tensor([[16.0, 16.0, 32.0, 32.0]]))
    empty = base[3][1]  # image 6 has no annotation: kept, with no boxes
    assert empty["boxes"].shape == (0, 4) and empty["labels"].shape == (0,)
    _, targets, _ = collate([base[i] for i in range(4)])
    assert [len(t["labels"]) for t in targets] == [2, 0, 1, 0]
    assert len(data.test) == 1 and data.test[0][1]["labels"].tolist() == [1]


def test_coco_category_not_in_json_is_an_error(tmp_path):
    coco_dataset(tmp_path, [{"image_id": 1, "category_id": 99, "bbox": [0, 0, 4, 4], "id": 17}])
    with pytest.raises(ValueError, match=r"annotation 17 of image 1 has category_id 99.*\[3, 7\]"):
        load_coco_detection(data_dir=tmp_path, **KW)


def test_coco_box_outside_image_is_an_error(tmp_path):
    coco_dataset(tmp_path, [{"image_id": 2, "category_id": 3, "bbox": [30, 5, 15, 5], "id": 4}])
    with pytest.raises(ValueError, match=r"annotation 4 of image 2 .* outside its 40x20 image"):
        load_coco_detection(data_dir=tmp_path, **KW)


def test_coco_image_of_another_size_than_its_json_entry(tmp_path):
    coco_dataset(tmp_path, [dict(a) for a in GOOD])
    Image.new("RGB", (8, 8)).save(tmp_path / "train" / "0002.jpg")
    # Raised where the image is first read: here estimating the normalisation statistics.
    with pytest.raises(ValueError, match="0002.jpg is 8x8 but its annotation file says 40x20"):
        load_coco_detection(data_dir=tmp_path, **KW)


def test_coco_missing_split(tmp_path):
    write_coco(tmp_path, "train", [image(1)], [])
    with pytest.raises(DatasetNotFoundError, match="COCO split 'val' not found"):
        load_coco_detection(data_dir=tmp_path, **KW)
