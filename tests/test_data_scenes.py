"""fmnist-scenes (generation, cache, splits), batched dense augmentation and the dense collate."""

from __future__ import annotations

import gzip
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from kdscope.data import collate, fashion_mnist, scenes
from kdscope.data.dense import IGNORE_INDEX
from kdscope.data.dense_augment import dense_augment
from kdscope.data.registry import DATASETS, load_data
from kdscope.data.scenes import FOREGROUND, generate_scenes, load_fmnist_scenes


def write_idx(path: Path, array: np.ndarray) -> None:
    code = {np.uint8: 0x08}[array.dtype.type]
    header = b"\0\0" + bytes([code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path.with_name(path.name + ".gz"), "wb") as f:
        f.write(header + array.tobytes())


def write_constant_fashion(folder: Path, train_value: int = 200, test_value: int = 100) -> None:
    """IDX files whose training images are all ``train_value`` and test images ``test_value``, so
    a scene's pixels tell which split its objects came from."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, n, value in (("train", 40, train_value), ("test", 20, test_value)):
        images_name, labels_name = fashion_mnist.FILES[split]
        write_idx(folder / images_name, np.full((n, 28, 28), value, np.uint8))
        write_idx(folder / labels_name, (np.arange(n) % 10).astype(np.uint8))


def load(folder: Path, cache: Path, **options):
    kw = {"data_dir": folder, "download": False, "val_fraction": 0.2, "seed": 0}
    return load_fmnist_scenes(train_size=None, cache_dir=cache, **{**kw, **options})


SMALL = {"num_train": 30, "num_test": 10}


def white_squares(n: int = 10) -> tuple[np.ndarray, np.ndarray]:
    return np.full((n, 28, 28), 255, np.uint8), np.arange(n) % 10


def test_generation_is_deterministic_and_seeded():
    images, labels = white_squares()
    a = generate_scenes(images, labels, count=5, seed=3)
    b = generate_scenes(images, labels, count=5, seed=3)
    c = generate_scenes(images, labels, count=5, seed=4)
    for field in ("images", "masks", "boxes", "labels", "offsets"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert not np.array_equal(a.masks, c.masks)


def test_one_object_has_its_square_box_and_class_plus_one():
    images, labels = white_squares()
    s = generate_scenes(images, labels, count=20, objects=(1, 1), scale=(1.0, 1.0), seed=0)
    for i in range(20):
        boxes, box_labels = s.boxes_of(i)
        assert len(boxes) == 1
        x0, y0, x1, y1 = boxes[0].astype(int)
        assert (x1 - x0, y1 - y0) == (28, 28)
        inside = np.zeros((64, 64), bool)
        inside[y0:y1, x0:x1] = True
        # The mask is class + 1 exactly on the square, 0 elsewhere; the image is white there.
        assert set(np.unique(s.masks[i][inside])) == {box_labels[0]}
        assert not s.masks[i][~inside].any()
        assert (s.images[i, 0][inside] == 255).all()
        assert 1 <= box_labels[0] <= 10


def test_occlusion_by_drawing_order():
    images, labels = white_squares()
    # Canvas 28 and side 28: every object covers the whole canvas, so only the last one shows.
    s = generate_scenes(images, labels, count=10, canvas=(28, 28), objects=(3, 3), scale=(1, 1))
    assert s.visible_objects().tolist() == [1] * 10
    for i in range(10):
        _, box_labels = s.boxes_of(i)
        assert set(np.unique(s.masks[i])) == {box_labels[0]}
    # On a larger canvas the last object drawn is whole: some box of each scene is 28 x 28.
    s = generate_scenes(images, labels, count=20, objects=(2, 4), scale=(1, 1), seed=1)
    for i in range(20):
        boxes, _ = s.boxes_of(i)
        assert ((boxes[:, 2] - boxes[:, 0] == 28) & (boxes[:, 3] - boxes[:, 1] == 28)).any()
        assert len(boxes) <= 4


def test_boxes_are_tight_around_visible_pixels_of_their_class(tmp_path):
    rng = np.random.default_rng(0)
    images = (rng.random((10, 28, 28)) * 255).astype(np.uint8)
    s = generate_scenes(images, np.arange(10), count=40, scale=(0.5, 1.25), seed=2)
    for i in range(40):
        boxes, box_labels = s.boxes_of(i)
        assert ((boxes >= 0) & (boxes <= 64)).all()
        assert set(np.unique(s.masks[i])) - {0} == set(box_labels.tolist())
        # Foreground pixels are exactly those brighter than the threshold.
        np.testing.assert_array_equal(s.masks[i] > 0, s.images[i, 0] > FOREGROUND)
        for (x0, y0, x1, y1), label in zip(boxes.astype(int), box_labels, strict=True):
            if (box_labels == label).sum() == 1:  # the class's pixels are this object's
                rows, cols = np.nonzero(s.masks[i] == label)
                assert [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1] == [x0, y0, x1, y1]


def test_bundle_splits_and_sources(tmp_path):
    write_constant_fashion(tmp_path / "fm")
    data = load(tmp_path / "fm", tmp_path / "cache", **SMALL)
    assert data.task == "segmentation" and data.num_classes == 11 and data.in_channels == 1
    assert data.class_names[0] == "background" and data.image_size == (64, 64)
    assert (len(data.train), len(data.val), len(data.test)) == (24, 6, 10)
    assert data.options["num_train"] == 30 and data.options["canvas"] == [64, 64]
    raw = {}
    for split in ("train", "val", "test"):
        ds = getattr(data, split)
        raw[split] = set(np.unique(ds.images.numpy()).tolist())
    # Training (and validation) scenes hold only training pixels (200), test scenes test ones.
    assert raw["train"] <= {0, 200} and raw["val"] <= {0, 200} and raw["test"] <= {0, 100}
    x, y, index = data.train.__getitems__([0, 3])
    assert x.shape == (2, 1, 64, 64) and x.dtype == torch.float32
    assert y.shape == (2, 64, 64) and y.dtype == torch.long and index.tolist() == [0, 3]
    single = data.train[3]
    torch.testing.assert_close(single[0], x[1])
    torch.testing.assert_close(single[1], y[1])
    # Normalised with the training scenes' statistics.
    images, _, _ = data.train.__getitems__(range(len(data.train)))
    assert abs(float(images.mean())) < 0.5


def test_detection_targets(tmp_path):
    write_constant_fashion(tmp_path / "fm")
    data = load(tmp_path / "fm", tmp_path / "cache", task="detection", **SMALL)
    x, targets, _ = data.test.__getitems__([0, 1, 2])
    assert x.shape == (3, 1, 64, 64) and isinstance(targets, list) and len(targets) == 3
    for t in targets:
        assert t["boxes"].dtype == torch.float32 and t["boxes"].shape[1] == 4
        assert t["labels"].dtype == torch.long and ((t["labels"] >= 1) & (t["labels"] <= 10)).all()
        assert (t["boxes"][:, 2:] > t["boxes"][:, :2]).all()
    image, target, i = data.test[1]
    torch.testing.assert_close(target["boxes"], targets[1]["boxes"])
    assert i == 1 and image.shape == (1, 64, 64)


def test_generated_once_and_keyed_by_parameters(tmp_path, monkeypatch):
    write_constant_fashion(tmp_path / "fm")
    first = load(tmp_path / "fm", tmp_path / "cache", **SMALL)
    folder = Path(first.options["cache"])
    assert json.loads((folder / "options.json").read_text())["num_test"] == 10

    def fail(*args, **kwargs):
        raise AssertionError("scenes regenerated")

    monkeypatch.setattr(scenes, "generate_scenes", fail)
    again = load(tmp_path / "fm", tmp_path / "cache", task="detection", seed=5, **SMALL)
    assert again.options["cache"] == str(folder)  # task and split seed do not change the scenes
    np.testing.assert_array_equal(again.test.images.numpy(), first.test.images.numpy())
    with pytest.raises(AssertionError, match="regenerated"):
        load(tmp_path / "fm", tmp_path / "cache", num_train=30, num_test=11)
    write_constant_fashion(tmp_path / "other", train_value=150)
    with pytest.raises(AssertionError, match="regenerated"):  # other source images, other cache
        load(tmp_path / "other", tmp_path / "cache", **SMALL)
    monkeypatch.undo()
    other = load(tmp_path / "fm", tmp_path / "cache", scene_seed=1, **SMALL)
    assert other.options["cache"] != str(folder)
    assert not np.array_equal(other.test.images.numpy(), first.test.images.numpy())


def test_registered_and_loaded_by_name(tmp_path):
    write_constant_fashion(tmp_path / "fm")
    assert "fmnist-scenes" in DATASETS
    data = load_data(
        "fmnist-scenes", data_dir=tmp_path / "fm", cache_dir=tmp_path / "c", canvas=48, **SMALL
    )
    assert data.image_size == (48, 48) and data.test.images.shape[-2:] == (48, 48)


def test_dense_data_takes_only_the_augmentation_that_moves_targets(tmp_path):
    write_constant_fashion(tmp_path / "fm")
    options = {"data_dir": tmp_path / "fm", "cache_dir": tmp_path / "c", **SMALL}
    assert load_data("fmnist-scenes", augment="dense", **options).augment is dense_augment
    with pytest.raises(ValueError, match="'dense'"):
        load_data("fmnist-scenes", augment="standard", **options)
    with pytest.raises(ValueError, match="image augmentation"):
        load_data("digits", augment="dense")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"task": "classification"}, "task must be one of"),
        ({"scale": (0.5, 3.0)}, "shorter side"),
        ({"objects": (0, 2)}, "objects must be a range"),
        ({"num_test": 0}, "must be >= 1"),
    ],
)
def test_bad_options_are_clear_errors(tmp_path, options, message):
    write_constant_fashion(tmp_path / "fm")
    with pytest.raises(ValueError, match=message):
        load(tmp_path / "fm", tmp_path / "cache", **{**SMALL, **options})


@pytest.mark.skipif(
    not fashion_mnist.DEBIAN_DIR.is_dir(), reason="Fashion-MNIST (Debian package) not installed"
)
def test_scenes_from_real_fashion_mnist(tmp_path):
    data = load(None, tmp_path, task="detection", **SMALL)
    labels = torch.cat([data.train.target(i)["labels"] for i in range(len(data.train))])
    assert len(labels.unique()) >= 5
    assert data.train.images.float().mean() > 0


# --- augmentation ------------------------------------------------------------------------------


def rectangle_batch() -> tuple[torch.Tensor, torch.Tensor, list[dict]]:
    masks = torch.zeros(6, 32, 32, dtype=torch.long)
    boxes = torch.tensor([[4, 6, 20, 14], [10, 2, 30, 30], [0, 0, 8, 8]] * 2, dtype=torch.float32)
    for i, (x0, y0, x1, y1) in enumerate(boxes.long().tolist()):
        masks[i, y0:y1, x0:x1] = 1 + i % 3
    masks[:, 31, :] = IGNORE_INDEX
    x = torch.randn(6, 2, 32, 32)
    targets = [{"boxes": boxes[i : i + 1], "labels": torch.tensor([1 + i % 3])} for i in range(6)]
    return x, masks, targets


def test_augment_same_generator_same_output_and_masks_move_with_images():
    x, masks, targets = rectangle_batch()
    out = [dense_augment(x, masks, torch.Generator().manual_seed(7)) for _ in range(2)]
    torch.testing.assert_close(out[0][0], out[1][0])
    torch.testing.assert_close(out[0][1], out[1][1])
    other = dense_augment(x, masks, torch.Generator().manual_seed(8))
    assert not torch.equal(other[0], out[0][0])
    # Images and masks take the same transform: a mask made from the image's own values
    # (pixels > 0) stays consistent up to resampling at the edges.
    marker = (masks == 1).float()[:, None].expand(-1, 2, -1, -1).contiguous()
    moved_marker, moved_masks = dense_augment(marker, masks, torch.Generator().manual_seed(7))
    agree = (moved_marker[:, 0] > 0.5) == (moved_masks == 1)
    assert agree.float().mean() > 0.98
    assert set(moved_masks.unique().tolist()) <= {0, 1, 2, 3, IGNORE_INDEX}
    assert moved_masks.dtype == torch.long


def test_augment_boxes_follow_masks():
    x, masks, targets = rectangle_batch()
    for seed in range(5):
        _, moved_masks = dense_augment(x, masks, torch.Generator().manual_seed(seed))
        _, moved = dense_augment(x, targets, torch.Generator().manual_seed(seed))
        for i, t in enumerate(moved):
            rows, cols = torch.nonzero((moved_masks[i] >= 1) & (moved_masks[i] <= 3), as_tuple=True)
            if len(t["boxes"]) == 0:
                continue
            tight = torch.tensor([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]).float()
            assert (t["boxes"][0] - tight).abs().max() <= 1.0, (seed, i)


def test_augment_flip_only_mirrors_boxes():
    x, masks, targets = rectangle_batch()
    g = torch.Generator().manual_seed(0)
    out, moved = dense_augment(x, targets, g, min_scale=1.0)
    for i in range(6):
        mirrored = torch.allclose(out[i], x[i].flip(-1), atol=1e-5)
        assert mirrored or torch.allclose(out[i], x[i], atol=1e-5)
        b = targets[i]["boxes"][0]
        expected = torch.stack([32 - b[2], b[1], 32 - b[0], b[3]]) if mirrored else b
        torch.testing.assert_close(moved[i]["boxes"][0], expected, atol=1e-4, rtol=0)


def test_augment_drops_boxes_cropped_away_and_checks_shapes():
    x = torch.randn(1, 1, 32, 32)
    corner = [{"boxes": torch.tensor([[0.0, 0.0, 1.0, 1.0]]), "labels": torch.tensor([4])}]
    dropped = 0
    for seed in range(20):
        _, moved = dense_augment(x, corner, torch.Generator().manual_seed(seed), min_scale=0.5)
        dropped += len(moved[0]["boxes"]) == 0
        assert len(moved[0]["boxes"]) == len(moved[0]["labels"])
    assert dropped > 0
    with pytest.raises(ValueError, match=r"\(B, H, W\)"):
        dense_augment(x, torch.zeros(1, 16, 16, dtype=torch.long), torch.Generator())
    with pytest.raises(ValueError, match="min_scale"):
        dense_augment(x, corner, torch.Generator(), min_scale=0.0)


def test_dense_collate_stacks_samples_and_passes_batches():
    seg = [(torch.zeros(1, 4, 4), torch.ones(4, 4, dtype=torch.long), i) for i in range(3)]
    images, masks, index = collate(seg)
    assert images.shape == (3, 1, 4, 4) and masks.shape == (3, 4, 4) and index.tolist() == [0, 1, 2]
    det = [(torch.zeros(1, 4, 4), {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0)}, 0)]
    _, targets, _ = collate(det)
    assert isinstance(targets, list) and targets[0]["boxes"].shape == (0, 4)
    batch = (torch.zeros(1), torch.zeros(1), torch.zeros(1))
    assert collate(batch) is batch
