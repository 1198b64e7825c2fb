"""Hugging Face models read from a local folder, as ``hf:<path>``: never downloaded
(``local_files_only``, ``HF_HUB_OFFLINE=1``)."""

from __future__ import annotations

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


def create_hf_model(path: str, num_classes: int, in_channels: int, **kwargs) -> HFClassifier:
    """The model named ``hf:<path>``: a local Hugging Face sequence-classification folder."""
    return HFClassifier(path, num_classes, in_channels, **kwargs)
