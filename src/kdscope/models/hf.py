"""Hugging Face models read from a local folder, as ``hf:<path>``: sequence classifiers and causal
language models, never downloaded (``local_files_only``, ``HF_HUB_OFFLINE=1``)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from torch import Tensor, nn

from kdscope.models.info import ModelInfo, set_info


class HFClassifier(nn.Module):
    """Any Hugging Face sequence-classification model read from a local folder (``hf:<path>``).

    ``AutoModelForSequenceClassification.from_pretrained(path, num_labels=num_classes,
    local_files_only=True)``; a head of another size is re-initialised (transformers warns). The
    output is the model's logits. Stages are the layers of the model's largest ``nn.ModuleList``
    (the transformer blocks: ``model.bert.encoder.layer.<i>`` for BERT), each (B, T, D); the
    classifier is its last ``nn.Linear``; ``pooled_map`` is None because such heads read the first
    token, not a pooled map.
    """

    def __init__(self, path: str | Path, num_classes: int, in_channels: int, *, pad_id: int = 0):
        super().__init__()
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoModelForSequenceClassification

        folder = Path(path).expanduser()
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(
                f"hf:{path} is not a Hugging Face model folder (no config.json in {folder})"
            )
        self.model = AutoModelForSequenceClassification.from_pretrained(
            str(folder), num_labels=num_classes, local_files_only=True, ignore_mismatched_sizes=True
        )
        check_pretrained_vocab(self.model.config.vocab_size, in_channels, folder)
        self.pad_id = pad_id
        set_info(
            self,
            ModelInfo(
                num_classes=num_classes,
                in_channels=in_channels,
                stages=_block_names(self.model, "model"),
                classifier=_last_linear(self.model, "model"),
            ),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.model(input_ids=x, attention_mask=(x != self.pad_id).long()).logits


def check_pretrained_vocab(model_vocab: int, in_channels: int, folder: Path) -> None:
    if model_vocab != in_channels:
        raise ValueError(
            f"the model in {folder} has a vocabulary of {model_vocab} tokens but in_channels (the "
            f"run's tokenizer vocabulary) is {in_channels}; use that model's tokenizer for the "
            f"data (sst2's tokenizer option)"
        )


def _block_names(model: nn.Module, prefix: str) -> tuple[str, ...]:
    lists = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m)]
    if not lists:
        return ()
    name, blocks = max(lists, key=lambda nm: sum(p.numel() for p in nm[1].parameters()))
    return tuple(f"{prefix}.{name}.{i}" for i in range(len(blocks)))


def _last_linear(model: nn.Module, prefix: str) -> str | None:
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    return f"{prefix}.{names[-1]}" if names else None


class HFCausalLM(nn.Module):
    """A ``transformers`` causal LM read with ``AutoModelForCausalLM.from_pretrained(path,
    local_files_only=True)``: nothing is downloaded.

    ``forward(x (B, T))`` returns the logits (B, T, vocab); no attention mask is passed, so every
    position of ``x`` is a real token (what kdscope's fixed-length blocks give). Stages are the
    model's transformer blocks (the ``nn.ModuleList`` of ``config.num_hidden_layers`` modules,
    e.g. ``model.transformer.h.0`` for GPT-2, ``model.model.layers.0`` for Llama); the classifier
    is its output embedding (``model.lm_head``), tied to the input embedding where the config ties
    them.
    ``block_size`` is ``config.max_position_embeddings`` (None if the config has none).
    """

    def __init__(self, path: str | Path):
        super().__init__()
        path = Path(path).expanduser()
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"{path} is not a Hugging Face model directory (no config.json); hf:<path> takes "
                "a local folder written by save_pretrained"
            )
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoModelForCausalLM  # seconds to import: only when used

        self.model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
        config = self.model.config
        self.block_size = getattr(config, "max_position_embeddings", None)
        head = self.model.get_output_embeddings()
        names = {id(m): n for n, m in self.model.named_modules()}
        if not isinstance(head, nn.Linear) or id(head) not in names:
            raise TypeError(f"{path}: the model's output embedding is not an nn.Linear")
        stages = self._blocks(getattr(config, "num_hidden_layers", None))
        self.kdscope_info = ModelInfo(
            output="tokens",
            num_classes=head.out_features,
            stages=stages,
            classifier=f"model.{names[id(head)]}",
        )

    def _blocks(self, n_layers: int | None) -> tuple[str, ...]:
        for name, module in self.model.named_modules():
            if isinstance(module, nn.ModuleList) and len(module) == n_layers:
                return tuple(f"model.{name}.{i}" for i in range(n_layers))
        raise TypeError(
            f"{type(self.model).__name__} has no nn.ModuleList of config.num_hidden_layers "
            f"({n_layers}) blocks; kdscope cannot name its stages"
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.model(input_ids=x, use_cache=False).logits


def create_hf_causal_lm(
    path: str | Path, num_classes: int | None = None, in_channels: int | None = None
) -> HFCausalLM:
    """Build ``hf:<path>``. ``num_classes``, when given, must equal the model's vocabulary size
    (the data's vocabulary must be the model's); ``in_channels`` is not used (token ids)."""
    model = HFCausalLM(path)
    vocab = model.kdscope_info.num_classes
    if num_classes is not None and num_classes != vocab:
        raise ValueError(
            f"hf:{path} scores a vocabulary of {vocab} tokens but the data has {num_classes} "
            "classes; the data must be tokenised with the model's own vocabulary"
        )
    return model


def create_hf_model(path: str, num_classes: int, in_channels: int, **kwargs) -> nn.Module:
    """The model named ``hf:<path>``: a local Hugging Face folder, read as a causal language model
    when its config names a ``...ForCausalLM`` / ``...LMHeadModel`` architecture, else as a
    sequence classifier."""
    config = Path(path).expanduser() / "config.json"
    architectures = (
        json.loads(config.read_text()).get("architectures") or [] if config.is_file() else []
    )
    if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures):
        return create_hf_causal_lm(path, num_classes, in_channels)
    return HFClassifier(path, num_classes, in_channels, **kwargs)
