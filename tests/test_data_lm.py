"""Character-level LM data: vocabulary, in-order splits, blocks, the text and tinyshakespeare."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from kdscope.data import lm
from kdscope.data.lm import (
    CharVocab,
    LMBundle,
    TokenBlocks,
    as_vocab,
    read_text,
    split_text,
    text_bundle,
)
from kdscope.data.memory import collate
from kdscope.data.registry import DatasetNotFoundError, dataset_dir, load_data

SHAKESPEARE = dataset_dir("tinyshakespeare", None) / "input.txt"
needs_shakespeare = pytest.mark.skipif(
    not SHAKESPEARE.is_file(), reason=f"Tiny Shakespeare not found at {SHAKESPEARE}"
)


def write(tmp_path: Path, data: str | bytes, name: str = "book.txt") -> Path:
    path = tmp_path / name
    path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return path


# --- vocabulary ---------------------------------------------------------------------------------


def test_vocab_from_text_is_sorted_and_round_trips_unicode():
    vocab = CharVocab.from_text("héllo wörld\n")
    assert vocab.chars == ("\n", " ", "d", "h", "l", "o", "r", "w", "é", "ö")
    ids = vocab.encode("wörld héllo")
    assert ids.dtype == torch.long
    assert ids.tolist()[:2] == [7, 9]
    assert vocab.decode(ids) == "wörld héllo"


def test_vocab_in_any_order_encodes_by_position():
    vocab = CharVocab(("z", "a", "\u20ac"))
    assert vocab.encode("a\u20acz").tolist() == [1, 2, 0]
    assert vocab.decode([2, 0]) == "\u20acz"


def test_vocab_errors_name_the_bad_values():
    vocab = CharVocab.from_text("abc")
    with pytest.raises(ValueError, match=r"outside the vocabulary of 3: 'x' \(2x\), 'y' \(1x\)"):
        vocab.encode("axbxy")
    with pytest.raises(ValueError, match=r"must lie in \[0, 3\), got \[3\]"):
        vocab.decode([0, 3])
    with pytest.raises(ValueError, match="distinct"):
        CharVocab(("a", "b", "a"))
    with pytest.raises(ValueError, match="single characters"):
        CharVocab(("ab", "c"))
    with pytest.raises(TypeError, match="vocab must be"):
        as_vocab(42)


def test_as_vocab_accepts_what_a_checkpoint_stores():
    vocab = CharVocab.from_text("hello")
    assert as_vocab("ehlo") == vocab
    assert as_vocab(["e", "h", "l", "o"]) == vocab
    assert as_vocab(vocab) is vocab


# --- splits and blocks --------------------------------------------------------------------------


def test_split_text_cuts_in_order_90_5_5():
    text = "".join(chr(97 + i % 26) for i in range(1000))
    train, val, test = split_text(text, 0.1)
    assert (len(train), len(val), len(test)) == (900, 50, 50)
    assert train + val + test == text
    # Odd held-out counts give validation the extra character.
    assert [len(p) for p in split_text("x" * 1003, 0.1)] == [903, 50, 50]
    with pytest.raises(ValueError, match=r"val_fraction must be in \(0, 1\)"):
        split_text(text, 0.0)


def test_token_blocks_are_non_overlapping_and_shifted_by_one():
    blocks = TokenBlocks(torch.arange(11), block_size=3)
    assert len(blocks) == 3  # (11 - 1) // 3; token 10 only serves as the last target
    x, y, i = blocks[1]
    assert x.tolist() == [3, 4, 5] and y.tolist() == [4, 5, 6] and i == 1
    xb, yb, index = blocks.__getitems__([2, 0])
    assert xb.tolist() == [[6, 7, 8], [0, 1, 2]]
    assert yb.tolist() == [[7, 8, 9], [1, 2, 3]]
    assert index.tolist() == [2, 0]
    with pytest.raises(IndexError):
        blocks[3]
    with pytest.raises(ValueError, match="cannot fill one block of 3"):
        TokenBlocks(torch.arange(3), block_size=3)


def test_token_blocks_serve_whole_batches_through_a_dataloader():
    blocks = TokenBlocks(torch.arange(41), block_size=4)
    loader = DataLoader(blocks, batch_size=4, collate_fn=collate)
    x, y, index = next(iter(loader))
    assert x.shape == y.shape == (4, 4)
    assert index.tolist() == [0, 1, 2, 3]
    assert torch.equal(y[:, :-1], x[:, 1:])
    assert torch.equal(x[:, 0], torch.tensor([0, 4, 8, 12]))


# --- the text dataset ---------------------------------------------------------------------------


def test_text_dataset_builds_vocab_from_train_and_drops_unseen_characters(tmp_path):
    # 900 training characters of "ab", then a held-out part holding "c" and "d" only there.
    text = "ab" * 450 + "abcab" * 10 + "abdab" * 10
    data = load_data("text", path=write(tmp_path, text), block_size=8)
    assert isinstance(data, LMBundle)
    assert data.vocab.chars == ("a", "b") and data.num_classes == 2
    assert data.class_names == ["a", "b"]
    assert data.dropped == {"c": 10, "d": 10}
    assert (len(data.train), len(data.val), len(data.test)) == (112, 4, 4)
    assert data.image_size == (1, 8) and data.in_channels == 1


def test_text_dataset_with_a_teacher_vocab_encodes_with_it_and_refuses_other_characters(tmp_path):
    path = write(tmp_path, "abcd" * 300)
    teacher_vocab = ["d", "c", "b", "a", "!"]
    data = load_data("text", path=path, block_size=16, vocab=teacher_vocab)
    assert data.vocab.chars == tuple(teacher_vocab) and data.num_classes == 5
    x, _, _ = data.train[0]
    assert data.vocab.decode(x) == "abcd" * 4
    assert x[:4].tolist() == [3, 2, 1, 0]
    with pytest.raises(
        ValueError, match=r"train split: .* outside the vocabulary of 3: 'd' \(270x\)"
    ):
        load_data("text", path=path, block_size=16, vocab="abc")


def test_text_dataset_errors(tmp_path):
    with pytest.raises(ValueError, match="needs the option path"):
        load_data("text")
    with pytest.raises(ValueError, match="is empty"):
        load_data("text", path=write(tmp_path, b""))
    with pytest.raises(ValueError, match=r"is not UTF-8: byte 3 \(b'\\xe9'\)"):
        load_data("text", path=write(tmp_path, b"abc" + "é".encode("latin-1")))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_text(tmp_path / "missing.txt")
    with pytest.raises(ValueError, match="the val split has 5 characters"):
        load_data("text", path=write(tmp_path, "ab" * 50), block_size=8)


def test_train_size_draws_whole_blocks_reproducibly_and_keeps_their_index(tmp_path):
    text = "".join(np.random.default_rng(0).choice(list("abcdefghij"), 4000))
    full = text_bundle("t", text, val_fraction=0.1, seed=0, train_size=None, block_size=10)
    a = text_bundle("t", text, val_fraction=0.1, seed=3, train_size=50, block_size=10)
    b = text_bundle("t", text, val_fraction=0.1, seed=3, train_size=50, block_size=10)
    c = text_bundle("t", text, val_fraction=0.1, seed=4, train_size=50, block_size=10)
    assert len(a.train) == 50
    assert torch.equal(a.train.windows, b.train.windows)
    assert not torch.equal(a.train.windows, c.train.windows)
    assert torch.equal(a.val.windows, full.val.windows)  # validation never depends on the subset
    # Each kept block is a block of the full split, kept in text order.
    rows = [int(np.flatnonzero((full.train.windows == w).all(1))[0]) for w in a.train.windows]
    assert rows == sorted(rows)
    with pytest.raises(ValueError, match=r"train_size must be between 1 and 359"):
        text_bundle("t", text, val_fraction=0.1, seed=0, train_size=360, block_size=10)


# --- tinyshakespeare ----------------------------------------------------------------------------


@needs_shakespeare
def test_tinyshakespeare_splits_90_5_5_with_65_characters():
    data = load_data("tinyshakespeare")
    assert data.num_classes == 65 and data.dropped == {}
    # 1,115,394 characters cut at 1,003,855 and 1,059,625; blocks of 128 (+1 target).
    assert (len(data.train), len(data.val), len(data.test)) == (7842, 435, 435)
    x, y, index = data.train.__getitems__([0])
    assert data.vocab.decode(x[0][:14]) == "First Citizen:"
    assert data.vocab.decode(y[0][:13]) == "irst Citizen:"
    assert index.tolist() == [0]
    assert data.vocab.decode(data.test[0][0][:1]) == SHAKESPEARE.read_text()[1059625]


@needs_shakespeare
def test_tinyshakespeare_reuses_a_given_vocab():
    data = load_data("tinyshakespeare", block_size=32)
    again = load_data("tinyshakespeare", block_size=32, vocab=list(data.vocab.chars))
    assert torch.equal(data.val.windows, again.val.windows)


def test_tinyshakespeare_missing_says_how_to_provide_it(tmp_path, monkeypatch):
    monkeypatch.delenv("KDSCOPE_DATA", raising=False)
    with pytest.raises(DatasetNotFoundError, match="download=True"):
        load_data("tinyshakespeare", data_dir=tmp_path)
    assert not os.listdir(tmp_path)


def test_tinyshakespeare_download_checks_the_digest_before_writing(tmp_path, monkeypatch):
    source = write(tmp_path, "First Citizen:\n" * 200, "original.txt")
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    monkeypatch.setattr(lm, "TINYSHAKESPEARE_URL", source.as_uri())
    monkeypatch.setattr(lm, "TINYSHAKESPEARE_SHA256", "0" * 64)
    target = tmp_path / "data"
    with pytest.raises(ValueError, match="expected 0000"):
        load_data("tinyshakespeare", data_dir=target, download=True, block_size=8)
    assert not target.exists()
    monkeypatch.setattr(lm, "TINYSHAKESPEARE_SHA256", digest)
    data = load_data("tinyshakespeare", data_dir=target, download=True, block_size=8)
    assert (target / "input.txt").read_bytes() == source.read_bytes()
    assert data.vocab.decode(data.train[0][0]) == "First Ci"
