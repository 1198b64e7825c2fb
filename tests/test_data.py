"""Datasets: splits, loaders (reading files written here in each real format), augmentation."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import BatchSampler, DataLoader, SequentialSampler

from kdscope.data import (
    DATASETS,
    DatasetNotFoundError,
    InMemoryDataset,
    carve_splits,
    collate,
    fashion_mnist,
    get_augment,
    list_datasets,
    load_data,
    register_dataset,
    standard_augment,
    stratified_sample,
    stratified_split,
)
from kdscope.data.bundle import DataBundle
from kdscope.data.fashion_mnist import read_idx
from kdscope.data.registry import dataset_dir
from kdscope.data.splits import split_index
from kdscope.data.transforms import channel_stats
from kdscope.registry import UnknownNameError


def raw_pixels(dataset: InMemoryDataset, scale: float, mean, std) -> np.ndarray:
    """Undo the normalisation: the stored integer pixel values of a split."""
    images, _ = dataset.tensors()
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    return ((images * s + m) / scale).round().numpy().astype(np.int64)


def per_class(labels) -> np.ndarray:
    return np.bincount(np.asarray(labels), minlength=10)


# --- splits -------------------------------------------------------------------------------------


def test_stratified_sample_is_exact_proportional_sorted_and_deterministic():
    labels = np.repeat(np.arange(3), [50, 30, 20])
    picked = stratified_sample(labels, 10, seed=3)
    assert len(picked) == 10
    assert list(np.bincount(labels[picked])) == [5, 3, 2]
    assert np.all(np.diff(picked) > 0)
    assert np.array_equal(picked, stratified_sample(labels, 10, seed=3))
    assert not np.array_equal(picked, stratified_sample(labels, 10, seed=4))
    # Largest remainder: 7 of (50, 30, 20) -> exact (3.5, 2.1, 1.4) -> (4, 2, 1).
    assert list(np.bincount(labels[stratified_sample(labels, 7, seed=0)])) == [4, 2, 1]
    with pytest.raises(ValueError, match="count must be between 0 and 100"):
        stratified_sample(labels, 101, seed=0)


def test_stratified_split_partitions_the_indices():
    labels = np.repeat(np.arange(4), 25)
    rest, held = stratified_split(labels, 0.2, seed=0)
    assert len(held) == 20 and len(rest) == 80
    assert sorted(np.concatenate([rest, held]).tolist()) == list(range(100))
    assert list(np.bincount(labels[held])) == [5, 5, 5, 5]
    with pytest.raises(ValueError, match=r"fraction must be in \[0, 1\), got 1.0"):
        stratified_split(labels, 1.0, seed=0)


def test_carve_splits_val_does_not_depend_on_train_size():
    labels = np.repeat(np.arange(5), 40)
    train, val = carve_splits(labels, val_fraction=0.1, seed=7)
    small, val_small = carve_splits(labels, val_fraction=0.1, seed=7, train_size=50)
    assert np.array_equal(val, val_small)
    assert set(small) <= set(train) and not set(small) & set(val)
    assert list(np.bincount(labels[small])) == [10] * 5
    assert not np.array_equal(val, carve_splits(labels, val_fraction=0.1, seed=8)[1])
    with pytest.raises(ValueError, match="train_size must be between 1 and 180"):
        carve_splits(labels, val_fraction=0.1, seed=0, train_size=181)


# --- digits -------------------------------------------------------------------------------------


def test_digits_shapes_and_metadata():
    data = load_data("digits")
    assert (len(data.train), len(data.val), len(data.test)) == (1294, 144, 359)
    image, label, index = data.train[5]
    assert image.shape == (1, 8, 8) and image.dtype == torch.float32
    assert isinstance(label, int) and index == 5
    assert data.num_classes == 10 and data.in_channels == 1 and data.image_size == (8, 8)
    assert data.class_names == [str(d) for d in range(10)]
    assert data.augment is None
    # The hard-coded statistics are those of the train split: it comes out standardised.
    images = torch.cat([data.train.tensors()[0], data.val.tensors()[0]])
    assert abs(images.mean().item()) < 1e-3 and abs(images.std().item() - 1) < 1e-3
    pixels = raw_pixels(data.test, 1 / 16, data.mean, data.std)
    assert pixels.min() == 0 and pixels.max() == 16


def test_digits_splits_are_stratified_and_seeded():
    a, b, other = (
        load_data("digits", seed=1),
        load_data("digits", seed=1),
        load_data("digits", seed=2),
    )
    for split in ("train", "val", "test"):
        assert torch.equal(getattr(a, split).tensors()[0], getattr(b, split).tensors()[0])
    assert torch.equal(a.test.tensors()[0], other.test.tensors()[0])  # test never depends on seed
    assert not torch.equal(a.val.tensors()[0], other.val.tensors()[0])
    from sklearn.datasets import load_digits

    totals = np.bincount(load_digits().target)
    for split, share in (("test", 0.2), ("val", 0.8 * 0.1)):
        counts = per_class(getattr(a, split).labels)
        assert np.all(np.abs(counts - share * totals) <= 1)


def test_train_size_subset_is_stratified_and_deterministic():
    data = load_data("digits", train_size=100, seed=3)
    again = load_data("digits", train_size=100, seed=3)
    full = load_data("digits", seed=3)
    assert len(data.train) == 100 and list(per_class(data.train.labels)) == [10] * 10
    assert torch.equal(data.train.tensors()[0], again.train.tensors()[0])
    assert torch.equal(data.val.tensors()[0], full.val.tensors()[0])
    subset = {tuple(x.flatten().tolist()) for x in data.train.tensors()[0]}
    assert subset <= {tuple(x.flatten().tolist()) for x in full.train.tensors()[0]}


def test_split_index_follows_python_and_names_the_split_size():
    assert [split_index(i, 5) for i in (0, 4, -1, -5)] == [0, 4, 4, 0]
    with pytest.raises(IndexError, match="index 5 out of range for a split of 5 examples"):
        split_index(5, 5)
    with pytest.raises(IndexError, match="index -4 out of range for a split of 3 blocks"):
        split_index(-4, 3, "blocks")
    train = load_data("digits", train_size=20).train
    assert train[-1][2] == len(train) - 1
    with pytest.raises(IndexError, match=f"split of {len(train)} examples"):
        train[len(train)]


def test_getitems_is_per_item_indexing_and_dataloader_passes_it_through():
    train = load_data("digits").train
    picks = [7, 0, 300, 7, 1293]
    images, labels, index = train.__getitems__(picks)
    assert torch.equal(index, torch.tensor(picks))
    for k, i in enumerate(picks):
        image, label, position = train[i]
        assert torch.equal(images[k], image) and labels[k].item() == label and position == i
    assert torch.equal(train[-1][0], train[len(train) - 1][0]) and train[-1][2] == len(train) - 1
    with pytest.raises(IndexError):
        train[len(train)]
    sampler = BatchSampler(SequentialSampler(train), batch_size=128, drop_last=False)
    loader = DataLoader(train, batch_sampler=sampler, collate_fn=collate)
    batches = list(loader)
    assert len(batches) == 11
    all_images, all_labels = train.tensors()
    assert torch.equal(torch.cat([b[0] for b in batches]), all_images)
    assert torch.equal(torch.cat([b[1] for b in batches]), all_labels)
    assert torch.equal(torch.cat([b[2] for b in batches]), torch.arange(len(train)))


def test_in_memory_dataset_rejects_float_images():
    with pytest.raises(ValueError, match="uint8 of shape"):
        InMemoryDataset(torch.zeros(2, 1, 4, 4), torch.zeros(2), scale=1.0, mean=(0,), std=(1,))


# --- fashion-mnist ------------------------------------------------------------------------------


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


def write_fashion(folder: Path, rng: np.random.Generator, suffix: str = ".gz") -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train": (rng.integers(0, 256, (50, 28, 28), np.uint8), np.repeat(np.arange(10), 5)),
        "test": (rng.integers(0, 256, (20, 28, 28), np.uint8), np.tile(np.arange(10), 2)),
    }
    for split, (images_name, labels_name) in fashion_mnist.FILES.items():
        write_idx(folder / (images_name + suffix), arrays[split][0])
        write_idx(folder / (labels_name + suffix), arrays[split][1])
    return arrays


@pytest.fixture
def no_debian(monkeypatch, tmp_path):
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", tmp_path / "no-debian")


def test_fashion_mnist_from_idx_gz_files(tmp_path, no_debian):
    arrays = write_fashion(tmp_path / "fm", np.random.default_rng(0))
    data = load_data("fashion-mnist", data_dir=tmp_path / "fm", val_fraction=0.2)
    assert (len(data.train), len(data.val), len(data.test)) == (40, 10, 20)
    assert data.class_names[0] == "T-shirt/top" and data.class_names[9] == "Ankle boot"
    assert (data.in_channels, data.image_size, data.num_classes) == (1, (28, 28), 10)
    assert list(per_class(data.val.labels)) == [1] * 10
    test_pixels = raw_pixels(data.test, 1 / 255, data.mean, data.std)
    assert np.array_equal(test_pixels[:, 0], arrays["test"][0])
    assert np.array_equal(data.test.labels.numpy(), arrays["test"][1])
    # Every train/val image is one of the written ones, with its label.
    written = {arrays["train"][0][i].tobytes(): arrays["train"][1][i] for i in range(50)}
    for split in (data.train, data.val):
        pixels = raw_pixels(split, 1 / 255, data.mean, data.std).astype(np.uint8)
        got = {pixels[i, 0].tobytes(): int(split.labels[i]) for i in range(len(split))}
        assert all(written[key] == label for key, label in got.items())


def test_fashion_mnist_reads_torchvision_layout_unpacked(tmp_path, no_debian):
    arrays = write_fashion(tmp_path / "FashionMNIST" / "raw", np.random.default_rng(1), suffix="")
    data = load_data("fashion-mnist", data_dir=tmp_path, val_fraction=0.0)
    assert len(data.train) == 50 and len(data.val) == 0
    assert np.array_equal(data.train.labels.numpy(), arrays["train"][1])


def test_fashion_mnist_missing_names_the_three_ways(tmp_path, no_debian):
    with pytest.raises(DatasetNotFoundError) as err:
        load_data("fashion-mnist", data_dir=tmp_path)
    assert isinstance(err.value, FileNotFoundError)
    message = str(err.value)
    assert "data_dir" in message and str(tmp_path) in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert "download=True" in message


def test_an_explicit_fashion_mnist_folder_must_be_complete_and_consistent(tmp_path):
    """An incomplete data_dir never falls back to another copy (the Debian one is there when
    this test runs in CI): what the user named is what is read, or an error names the gap."""
    folder = tmp_path / "fm"
    write_fashion(folder, np.random.default_rng(0))
    (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DatasetNotFoundError, match="holds only part of Fashion-MNIST: "
                       "t10k-labels-idx1-ubyte"):  # fmt: skip
        load_data("fashion-mnist", data_dir=folder)
    with pytest.raises(DatasetNotFoundError, match="not found"):
        load_data("fashion-mnist", data_dir=tmp_path / "empty")
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", np.arange(7) % 10)  # 7 labels, 20 images
    with pytest.raises(ValueError, match="test files do not match"):
        load_data("fashion-mnist", data_dir=folder)
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", np.tile(np.arange(10), 2))
    assert load_data("fashion-mnist", data_dir=folder).source == str(folder)
    gz = folder / "train-images-idx3-ubyte.gz"
    gz.write_bytes(gz.read_bytes()[:100])  # truncated in a download
    with pytest.raises(ValueError, match="train-images-idx3-ubyte.gz cannot be read"):
        load_data("fashion-mnist", data_dir=folder)


def test_read_idx_rejects_other_files(tmp_path):
    path = tmp_path / "x.idx"
    path.write_bytes(b"\x89PNG\r\n")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(path)
    write_idx(path, np.zeros((3, 2)))
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(ValueError, match=r"holds 5 values but its header says \(3, 2\)"):
        read_idx(path)


@pytest.mark.skipif(
    not fashion_mnist.DEBIAN_DIR.is_dir(),
    reason="Debian package dataset-fashion-mnist not installed",
)
def test_fashion_mnist_from_debian_package(tmp_path, monkeypatch):
    labels = read_idx(fashion_mnist.DEBIAN_DIR / "train-labels-idx1-ubyte.gz")
    assert labels[:10].tolist() == [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]
    monkeypatch.setenv("KDSCOPE_DATA", str(tmp_path))  # nothing there: the search goes on
    data = load_data("fashion-mnist")
    assert data.source == str(fashion_mnist.DEBIAN_DIR)
    assert (len(data.train), len(data.val), len(data.test)) == (54000, 6000, 10000)
    assert list(per_class(data.train.labels) + per_class(data.val.labels)) == [6000] * 10
    assert list(per_class(data.val.labels)) == [600] * 10
    assert list(per_class(data.test.labels)) == [1000] * 10
    images = torch.cat([data.train.tensors()[0], data.val.tensors()[0]])
    assert abs(images.mean().item()) < 1e-3 and abs(images.std().item() - 1) < 1e-3


# --- cifar --------------------------------------------------------------------------------------


CIFAR_LAYOUTS = {
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], "test_batch",
                "batches.meta", "labels", "label_names", 10),
    "cifar100": ("cifar-100-python", ["train"], "test", "meta", "fine_labels", "fine_label_names",
                 100),
}  # fmt: skip


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_from_pickles_in_the_real_format(tmp_path, name):
    folder, train_files, test_file, meta, label_key, names_key, classes = CIFAR_LAYOUTS[name]
    root = tmp_path / folder
    root.mkdir()
    rng = np.random.default_rng(0)
    per_file = 2 * classes // len(train_files)
    train_labels = np.repeat(np.arange(classes), 2)
    for k, file in enumerate(train_files):
        labels = train_labels[k * per_file : (k + 1) * per_file].tolist()
        batch = {"data": rng.integers(0, 256, (per_file, 3072), dtype=np.uint8), label_key: labels}
        (root / file).write_bytes(pickle.dumps(batch, protocol=2))
    # A test image whose planes are constant 10 (red), 20 (green), 30 (blue), except one pixel.
    planes = np.stack([np.full((32, 32), v, np.uint8) for v in (10, 20, 30)])
    planes[2, 0, 31] = 255
    test = {"data": np.stack([planes.reshape(-1)] * classes), label_key: list(range(classes))}
    (root / test_file).write_bytes(pickle.dumps(test, protocol=2))
    names = [f"class{i}" for i in range(classes)]
    (root / meta).write_bytes(pickle.dumps({names_key: names}, protocol=2))

    data = load_data(name, data_dir=tmp_path, val_fraction=0.5)
    assert (len(data.train), len(data.val), len(data.test)) == (classes, classes, classes)
    assert data.class_names == names and data.num_classes == classes
    assert (data.in_channels, data.image_size) == (3, (32, 32))
    pixels = raw_pixels(data.test, 1 / 255, data.mean, data.std)
    assert np.array_equal(pixels[0], planes)
    assert sorted(data.train.labels.tolist()) == list(range(classes))


def test_cifar_missing_says_how_to_provide_it(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="download=True"):
        load_data("cifar10", data_dir=tmp_path)


# --- imagefolder --------------------------------------------------------------------------------


def write_pngs(folder: Path, colours: dict[str, tuple[int, int, int]], count: int) -> None:
    rng = np.random.default_rng(len(str(folder)))
    for cls, colour in colours.items():
        (folder / cls).mkdir(parents=True)
        for i in range(count):
            noise = rng.integers(-20, 21, (10, 14, 3))
            pixels = np.clip(np.array(colour) + noise, 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / cls / f"{i}.png")


def test_imagefolder_with_train_val_test(tmp_path):
    colours = {"cat": (200, 30, 30), "dog": (30, 30, 200), "emu": (30, 200, 30)}
    write_pngs(tmp_path / "train", colours, 4)
    write_pngs(tmp_path / "val", colours, 1)
    write_pngs(tmp_path / "test", {"dog": colours["dog"]}, 2)  # a split may lack classes
    data = load_data("imagefolder", data_dir=tmp_path, image_size=8)
    assert (len(data.train), len(data.val), len(data.test)) == (12, 3, 2)
    assert data.class_names == ["cat", "dog", "emu"] and data.num_classes == 3
    assert [label for _, label, _ in data.test] == [1, 1]
    image, label, index = data.train[4]
    assert image.shape == (3, 8, 8) and data.image_size == (8, 8) and (label, index) == (1, 4)
    images, labels, indices = next(iter(DataLoader(data.train, batch_size=12, collate_fn=collate)))
    assert images.shape == (12, 3, 8, 8) and torch.equal(indices, torch.arange(12))
    assert labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    # Channels stay in RGB order: dogs are the bluest, cats the reddest.
    assert images[labels == 1][:, 2].mean() > images[labels != 1][:, 2].mean()
    assert images[labels == 0][:, 0].mean() > images[labels != 0][:, 0].mean()
    # Statistics come from the train images: the train split comes out standardised.
    assert images.mean(dim=(0, 2, 3)).abs().max() < 1e-4
    assert (images.std(dim=(0, 2, 3), unbiased=False) - 1).abs().max() < 1e-3


def test_imagefolder_single_folder_carves_test_and_val(tmp_path):
    write_pngs(tmp_path, {"a": (255, 0, 0), "b": (0, 0, 255)}, 10)
    data = load_data("imagefolder", data_dir=tmp_path, val_fraction=0.25, image_size=4)
    assert (len(data.train), len(data.val), len(data.test)) == (12, 4, 4)
    for split in (data.train, data.val, data.test):
        assert sorted(split.labels) == sorted([0, 1] * (len(split) // 2))
    paths = [set(p for p, _ in s.samples) for s in (data.train, data.val, data.test)]
    assert not (paths[0] & paths[1] or paths[0] & paths[2] or paths[1] & paths[2])
    other_seed = load_data("imagefolder", data_dir=tmp_path, val_fraction=0.25, seed=5)
    assert other_seed.test.samples == data.test.samples


def test_imagefolder_rejects_unknown_val_class(tmp_path):
    write_pngs(tmp_path / "train", {"a": (0, 0, 0)}, 2)
    write_pngs(tmp_path / "val", {"zebra": (0, 0, 0)}, 1)
    with pytest.raises(ValueError, match=r"classes \['zebra'\] that the train folder lacks"):
        load_data("imagefolder", data_dir=tmp_path)


def test_channel_stats_matches_torch():
    x = torch.randn(10, 3, 5, 5) * torch.tensor([1.0, 2.0, 3.0]).view(1, 3, 1, 1) + 4
    mean, std = channel_stats([x[:3], x[3:]])
    assert torch.allclose(torch.tensor(mean), x.mean(dim=(0, 2, 3)), atol=1e-5)
    expected_std = x.transpose(0, 1).reshape(3, -1).std(dim=1, unbiased=False)
    assert torch.allclose(torch.tensor(std), expected_std, atol=1e-5)


# --- augmentation -------------------------------------------------------------------------------


def which_window(
    original: torch.Tensor, augmented: torch.Tensor, pad: int
) -> tuple[int, int, bool]:
    """The oracle: the (row offset, column offset, mirrored) whose crop of the zero-padded original
    is ``augmented``; fails if no crop or mirrored crop matches."""
    _, h, w = original.shape
    padded = torch.nn.functional.pad(original, (pad, pad, pad, pad))
    for dy in range(2 * pad + 1):
        for dx in range(2 * pad + 1):
            crop = padded[:, dy : dy + h, dx : dx + w]
            for mirrored in (False, True):
                if torch.equal(augmented, crop.flip(-1) if mirrored else crop):
                    return dy, dx, mirrored
    raise AssertionError("augmented image is not a crop of the padded original")


@pytest.mark.parametrize(("size", "pad"), [(32, 4), (8, 1), (4, 1), (28, 3)])
def test_standard_augment_is_a_crop_or_mirrored_crop_of_each_image(size, pad):
    x = torch.randn(64, 3, size, size)
    out = standard_augment(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    found = [which_window(a, b, pad) for a, b in zip(x, out, strict=True)]
    offsets = {dy for dy, _, _ in found} | {dx for _, dx, _ in found}
    assert offsets == set(range(2 * pad + 1))  # shifts span exactly the padding
    assert 16 < sum(mirrored for _, _, mirrored in found) < 48  # about half are mirrored
    assert sum(not torch.equal(a, b) for a, b in zip(x, out, strict=True)) >= 48


def test_standard_augment_is_deterministic_per_generator_state():
    x = torch.randn(8, 1, 8, 8)
    a = standard_augment(x, torch.Generator().manual_seed(1))
    assert torch.equal(a, standard_augment(x, torch.Generator().manual_seed(1)))
    assert not torch.equal(a, standard_augment(x, torch.Generator().manual_seed(2)))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        standard_augment(x[0], torch.Generator())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_standard_augment_on_cuda_matches_its_own_oracle():
    x = torch.randn(16, 3, 32, 32, device="cuda")
    out = standard_augment(x, torch.Generator(device="cuda").manual_seed(0))
    assert out.device == x.device
    for original, augmented in zip(x.cpu(), out.cpu(), strict=True):
        which_window(original, augmented, pad=4)


def test_augment_presets():
    assert get_augment("none") is None and get_augment("standard") is standard_augment
    assert load_data("digits", augment="standard").augment is standard_augment
    accepted = "Accepted: dense, none, specaugment, standard, waveform"
    with pytest.raises(UnknownNameError, match=accepted):
        load_data("digits", augment="heavy")


# --- registry -----------------------------------------------------------------------------------


def test_unknown_dataset_lists_the_valid_names():
    assert {"digits", "fashion-mnist", "cifar10", "cifar100", "imagefolder"} <= set(list_datasets())
    with pytest.raises(UnknownNameError, match="Did you mean 'fashion-mnist'.*Accepted: cifar10"):
        load_data("fashion_mnist")


def test_register_dataset_makes_a_loader_available():
    seen = {}

    def tiny(**kwargs) -> DataBundle:
        seen.update(kwargs)
        return load_data("digits", train_size=kwargs["train_size"])

    register_dataset("test-tiny")(tiny)
    try:
        data = load_data("test-tiny", data_dir="~/x", train_size=20, augment="standard", seed=4)
    finally:
        DATASETS._items.pop("test-tiny")
    assert len(data.train) == 20 and data.augment is standard_augment
    assert seen == {
        "data_dir": Path.home() / "x",
        "download": False,
        "val_fraction": 0.1,
        "seed": 4,
        "train_size": 20,
    }


def test_dataset_dir_is_absolute_when_kdscope_data_is_relative(tmp_path, monkeypatch):
    """CI sets KDSCOPE_DATA=../shared/data: a link made to the found files from another folder
    must still reach them."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KDSCOPE_DATA", "shared/data")
    assert dataset_dir("fsdd", None) == tmp_path / "shared" / "data" / "fsdd"
    assert dataset_dir("sst2", Path("mine")) == tmp_path / "mine"
    monkeypatch.delenv("KDSCOPE_DATA")
    assert dataset_dir("sst2", None).is_absolute()
