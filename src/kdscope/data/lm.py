"""Character-level language-model data: Tiny Shakespeare and any UTF-8 text file.

A text is split in order into train, validation and test (no shuffling: neighbouring blocks share
context, so a random split would leak). The vocabulary is the sorted set of the training text's
characters unless one is given (a teacher's, so that student and teacher score the same symbols).
Each split is cut into non-overlapping blocks of ``block_size`` tokens: example i is the block
starting at token ``i * block_size``, ``x`` its tokens and ``y`` the tokens one step later, so the
index of an example names its block and a teacher cache keyed by index is exact.
"""

from __future__ import annotations

import hashlib
import urllib.request
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from kdscope.data.bundle import DataBundle
from kdscope.data.registry import DatasetNotFoundError, dataset_dir, register_dataset
from kdscope.data.splits import split_index

TINYSHAKESPEARE_URL = (
    "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
)
TINYSHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
DEFAULT_BLOCK_SIZE = 128

Batch = tuple[Tensor, Tensor, Tensor]


@dataclass(frozen=True)
class CharVocab:
    """A character vocabulary: token id i is ``chars[i]``.

    >>> vocab = CharVocab.from_text("hello")
    >>> vocab.chars, vocab.decode(vocab.encode("hole"))
    (('e', 'h', 'l', 'o'), 'hole')
    """

    chars: tuple[str, ...]
    _codes: np.ndarray = field(init=False, repr=False, compare=False)
    _order: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        chars = tuple(self.chars)
        bad = [c for c in chars if not isinstance(c, str) or len(c) != 1]
        if bad:
            raise ValueError(f"a vocabulary holds single characters, got {bad[:5]!r}")
        if len(set(chars)) != len(chars):
            twice = sorted(c for c, n in Counter(chars).items() if n > 1)
            raise ValueError(f"vocabulary characters must be distinct, {twice!r} repeat")
        if len(chars) < 2:
            raise ValueError(f"a vocabulary needs at least 2 characters, got {len(chars)}")
        codes = np.array([ord(c) for c in chars], dtype=np.uint32)
        order = np.argsort(codes, kind="stable")
        object.__setattr__(self, "chars", chars)
        object.__setattr__(self, "_codes", codes[order])
        object.__setattr__(self, "_order", order)

    @classmethod
    def from_text(cls, text: str) -> CharVocab:
        """The sorted distinct characters of ``text``."""
        return cls(tuple(sorted(set(text))))

    def __len__(self) -> int:
        return len(self.chars)

    def missing(self, text: str) -> Counter:
        """The characters of ``text`` outside this vocabulary, with their counts."""
        known = set(self.chars)
        return Counter(c for c in text if c not in known)

    def encode(self, text: str) -> Tensor:
        """Token ids of ``text`` as a LongTensor; a ValueError names characters outside the
        vocabulary."""
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        pos = np.searchsorted(self._codes, codes).clip(max=len(self._codes) - 1)
        if not np.array_equal(self._codes[pos], codes):
            shown = ", ".join(f"{c!r} ({n}x)" for c, n in self.missing(text).most_common(10))
            raise ValueError(
                f"the text holds characters outside the vocabulary of {len(self)}: {shown}; "
                "use a vocabulary that holds them, or remove them from the text"
            )
        return torch.from_numpy(self._order[pos].astype(np.int64))

    def decode(self, ids: Tensor | Sequence[int]) -> str:
        """The text of a 1-D sequence of token ids."""
        ids = torch.as_tensor(ids).reshape(-1).tolist()
        bad = [i for i in ids if not 0 <= i < len(self)]
        if bad:
            raise ValueError(f"token ids must lie in [0, {len(self)}), got {bad[:5]}")
        return "".join(self.chars[i] for i in ids)


def as_vocab(vocab: CharVocab | str | Sequence[str]) -> CharVocab:
    """A :class:`CharVocab` from itself, a string of its characters, or a list of them (what a
    config file or a teacher checkpoint stores)."""
    if isinstance(vocab, CharVocab):
        return vocab
    if isinstance(vocab, str) or (
        isinstance(vocab, Sequence) and all(isinstance(c, str) for c in vocab)
    ):
        return CharVocab(tuple(vocab))
    raise TypeError(
        f"vocab must be a CharVocab, a string or a list of characters, got {type(vocab).__name__}"
    )


class TokenBlocks(Dataset):
    """Non-overlapping blocks of a token stream.

    Example i is ``(x, y, i)`` with ``x = tokens[s : s + T]`` and
    ``y = tokens[s + 1 : s + T + 1]`` where ``s = i * T`` (``T = block_size``), so
    ``len = (len(tokens) - 1) // T`` and the tokens after the last whole block are not used.
    ``blocks`` keeps only those block numbers (a training subset); indices then count within the
    subset. ``__getitems__`` serves a batch with one ``index_select``.
    """

    def __init__(self, tokens: Tensor, block_size: int, blocks: Tensor | None = None):
        if tokens.dim() != 1:
            raise ValueError(f"tokens must be 1-D, got shape {tuple(tokens.shape)}")
        if len(tokens) < block_size + 1:
            raise ValueError(
                f"{len(tokens)} tokens cannot fill one block of {block_size} "
                f"(a block needs block_size + 1 = {block_size + 1} tokens)"
            )
        windows = tokens.long().unfold(0, block_size + 1, block_size)
        if blocks is not None:
            windows = windows.index_select(0, blocks)
        self.windows = windows.contiguous()
        self.block_size = block_size

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor, int]:
        i = split_index(i, len(self), "blocks")
        return self.windows[i, :-1].clone(), self.windows[i, 1:].clone(), i

    def __getitems__(self, indices: Sequence[int]) -> Batch:
        index = torch.as_tensor(indices, dtype=torch.long)
        w = self.windows.index_select(0, index)
        return w[:, :-1].contiguous(), w[:, 1:].contiguous(), index

    def tensors(self) -> tuple[Tensor, Tensor]:
        """The whole split as ``(x (N, T), y (N, T))``."""
        return self.windows[:, :-1].contiguous(), self.windows[:, 1:].contiguous()


@dataclass(kw_only=True)
class LMBundle(DataBundle):
    """A :class:`DataBundle` of token blocks, with its vocabulary.

    ``num_classes`` is the vocabulary size and ``class_names`` its characters; ``in_channels`` is 1
    and ``image_size`` is ``(1, block_size)`` (one row of token ids); there is no mean or std.
    ``dropped`` counts the characters removed from validation and test because the training text
    lacks them (only when the vocabulary was built from the training text).
    """

    vocab: CharVocab
    block_size: int
    dropped: dict[str, int] = field(default_factory=dict)


def split_text(text: str, val_fraction: float) -> tuple[str, str, str]:
    """Cut ``text`` in order into (train, val, test) by characters.

    ``held = round(val_fraction * n)`` characters are held out at the end: validation gets the
    first ``held - held // 2`` of them, test the last ``held // 2``. At the default
    ``val_fraction=0.1`` this is the usual 90/5/5 split; for Tiny Shakespeare (n = 1,115,394) the
    cuts fall at characters 1,003,855 and 1,059,625.
    """
    if not 0 < val_fraction < 1:
        raise ValueError(
            f"val_fraction must be in (0, 1) for text data (the share held out for validation "
            f"and test), got {val_fraction}"
        )
    n = len(text)
    held = round(val_fraction * n)
    train_end = n - held
    val_end = train_end + held - held // 2
    return text[:train_end], text[train_end:val_end], text[val_end:]


def text_bundle(
    name: str,
    text: str,
    *,
    val_fraction: float,
    seed: int,
    train_size: int | None,
    block_size: int = DEFAULT_BLOCK_SIZE,
    vocab: CharVocab | str | Sequence[str] | None = None,
    train_text: str | None = None,
) -> LMBundle:
    """An :class:`LMBundle` from one text: split by :func:`split_text`, encoded, cut into blocks.
    ``train_text`` replaces the training split (a teacher's generated text, for sequence-level
    KD); validation and test stay the text's.

    With ``vocab`` given, every character of every split must be in it (a ValueError names those
    that are not). Without it, the vocabulary is the training text's characters, and characters
    that occur only in validation or test are removed from those splits and counted in
    ``bundle.dropped``. ``train_size`` keeps that many training blocks, drawn without replacement by
    ``numpy.random.default_rng(seed)`` and kept in text order; ``seed`` affects nothing else.
    """
    if not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size must be a positive int, got {block_size!r}")
    if not text:
        raise ValueError(f"{name}: the text is empty")
    parts = dict(zip(("train", "val", "test"), split_text(text, val_fraction), strict=True))
    if train_text is not None:
        parts["train"] = train_text
    dropped: Counter = Counter()
    if vocab is None:
        vocab = CharVocab.from_text(parts["train"])
        for split in ("val", "test"):
            unseen = vocab.missing(parts[split])
            if unseen:
                dropped += unseen
                parts[split] = "".join(c for c in parts[split] if c not in unseen)
    else:
        vocab = as_vocab(vocab)
    splits = {}
    for split, part in parts.items():
        if len(part) < block_size + 1:
            raise ValueError(
                f"{name}: the {split} split has {len(part)} characters, fewer than one block of "
                f"block_size + 1 = {block_size + 1}; lower block_size or use a longer text"
            )
        try:
            splits[split] = vocab.encode(part)
        except ValueError as e:
            raise ValueError(f"{name}, {split} split: {e}") from None
    subset = None
    if train_size is not None:
        available = (len(splits["train"]) - 1) // block_size
        if not 1 <= train_size <= available:
            raise ValueError(
                f"train_size must be between 1 and {available} (the training blocks of "
                f"{block_size} tokens), got {train_size}"
            )
        chosen = np.random.default_rng(seed).choice(available, train_size, replace=False)
        subset = torch.from_numpy(np.sort(chosen))
    return LMBundle(
        name=name,
        train=TokenBlocks(splits["train"], block_size, subset),
        val=TokenBlocks(splits["val"], block_size),
        test=TokenBlocks(splits["test"], block_size),
        num_classes=len(vocab),
        in_channels=1,
        image_size=(1, block_size),
        class_names=list(vocab.chars),
        mean=(),
        std=(),
        task="language-modelling",
        inputs="tokens",
        vocab=vocab,
        block_size=block_size,
        dropped=dict(dropped),
    )


def read_text(path: str | Path) -> str:
    """The contents of a UTF-8 text file; a ValueError for an empty or non-UTF-8 file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"text file {path} does not exist")
    data = path.read_bytes()
    if not data:
        raise ValueError(f"text file {path} is empty")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(
            f"text file {path} is not UTF-8: byte {e.start} ({data[e.start : e.start + 1]!r}) "
            "does not decode; convert it first (e.g. iconv -t UTF-8)"
        ) from None


@register_dataset("tinyshakespeare")
def load_tinyshakespeare(
    *,
    data_dir: Path | None,
    download: bool,
    val_fraction: float,
    seed: int,
    train_size: int | None,
    block_size: int = DEFAULT_BLOCK_SIZE,
    vocab: CharVocab | str | Sequence[str] | None = None,
    train_text: str | Path | None = None,
) -> LMBundle:
    """Tiny Shakespeare (Karpathy 2015, char-rnn): 1,115,394 characters, 65 distinct.

    Read from ``input.txt`` in :func:`~kdscope.data.registry.dataset_dir` (``data_dir``, else
    ``$KDSCOPE_DATA/tinyshakespeare``, else the cache); ``download=True`` fetches char-rnn's
    original there and checks its SHA-256. Split 90/5/5 in order at the default ``val_fraction``
    (see :func:`split_text`); every character occurs in the training part. Blocks of
    ``block_size`` (default 128) characters, as :func:`text_bundle` describes; ``train_text``, a
    UTF-8 file, replaces the training split (sequence-level KD).
    """
    path = dataset_dir("tinyshakespeare", data_dir) / "input.txt"
    if not path.is_file():
        if not download:
            raise DatasetNotFoundError(
                f"Tiny Shakespeare not found: no {path}. Put char-rnn's input.txt there (or in a "
                f"folder passed as data_dir), or pass download=True to fetch {TINYSHAKESPEARE_URL}"
            )
        _download(TINYSHAKESPEARE_URL, path, TINYSHAKESPEARE_SHA256)
    return text_bundle(
        "tinyshakespeare",
        read_text(path),
        val_fraction=val_fraction,
        seed=seed,
        train_size=train_size,
        block_size=block_size,
        vocab=vocab,
        train_text=read_text(train_text) if train_text is not None else None,
    )


@register_dataset("text")
def load_text(
    *,
    data_dir: Path | None,
    download: bool,
    val_fraction: float,
    seed: int,
    train_size: int | None,
    path: str | Path | None = None,
    block_size: int = DEFAULT_BLOCK_SIZE,
    vocab: CharVocab | str | Sequence[str] | None = None,
    train_text: str | Path | None = None,
) -> LMBundle:
    """Any UTF-8 text file (option ``path``), character-level as :func:`text_bundle` describes.

    ``data_dir`` and ``download`` are not used. Pass a teacher's ``vocab`` to train a student on
    the symbols the teacher scores, and ``train_text`` (a UTF-8 file) to replace the training
    split.
    """
    if path is None:
        raise ValueError("dataset 'text' needs the option path=<a UTF-8 text file>")
    return text_bundle(
        "text",
        read_text(path),
        val_fraction=val_fraction,
        seed=seed,
        train_size=train_size,
        block_size=block_size,
        vocab=vocab,
        train_text=read_text(train_text) if train_text is not None else None,
    )


def _download(url: str, path: Path, sha256: str) -> None:
    with urllib.request.urlopen(url, timeout=60) as response:
        data = response.read()
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256:
        raise ValueError(f"{url} has SHA-256 {digest}, expected {sha256}; nothing was written")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".part")
    tmp.write_bytes(data)
    tmp.replace(path)
