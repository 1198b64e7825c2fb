"""Any Hugging Face causal language model on local disk, as a kdscope model (``hf:<path>``)."""

from __future__ import annotations

from pathlib import Path

from torch import Tensor, nn

from kdscope.models.info import ModelInfo


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
        # create_model on this branch still reads the older attributes.
        self.feature_layers = list(stages)
        self.preact_layers: list[str] = []
        self.classifier_layer = self.kdscope_info.classifier

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
