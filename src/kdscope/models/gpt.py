"""A decoder-only transformer language model (GPT-2's layout, Radford et al. 2019), sized for CPUs.

Token and learned position embeddings, ``n_layer`` pre-norm blocks (causal self-attention through
``scaled_dot_product_attention(is_causal=True)``, then a 4x GELU MLP, each added to the residual
stream), a final LayerNorm and a linear head tied to the token embedding (Press & Wolf 2017).
Initialisation as GPT-2: N(0, 0.02) weights, zero biases, the residual projections scaled by
1/sqrt(2 n_layer).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from kdscope.models.info import ModelInfo
from kdscope.models.registry import register_model

# Presets: gpt-mini is the teacher, gpt-micro the student (sizes and speeds in GPT's docstring).
PRESETS = {
    "gpt-mini": {"n_layer": 4, "n_head": 4, "n_embd": 128},
    "gpt-micro": {"n_layer": 2, "n_head": 2, "n_embd": 64},
}


class CausalSelfAttention(nn.Module):
    def __init__(self, n_embd: int, n_head: int, dropout: float):
        super().__init__()
        self.n_head = n_head
        self.qkv = nn.Linear(n_embd, 3 * n_embd)
        self.proj = nn.Linear(n_embd, n_embd)
        self.dropout = dropout
        self.resid_drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        b, t, c = x.shape
        q, k, v = (
            z.view(b, t, self.n_head, c // self.n_head).transpose(1, 2)
            for z in self.qkv(x).split(c, dim=2)
        )
        y = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True
        )
        return self.resid_drop(self.proj(y.transpose(1, 2).reshape(b, t, c)))


class Block(nn.Module):
    """x + attn(ln1(x)), then + mlp(ln2(x)): the block output is the residual stream."""

    def __init__(self, n_embd: int, n_head: int, dropout: float):
        super().__init__()
        self.ln1 = nn.LayerNorm(n_embd)
        self.attn = CausalSelfAttention(n_embd, n_head, dropout)
        self.ln2 = nn.LayerNorm(n_embd)
        self.mlp = nn.Sequential(
            nn.Linear(n_embd, 4 * n_embd),
            nn.GELU(),
            nn.Linear(4 * n_embd, n_embd),
            nn.Dropout(dropout),
        )

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    """Character-level GPT: token ids (B, T) -> next-token logits (B, T, vocab_size).

    ``block_size`` is the longest context (the number of position embeddings). Stages are the
    block outputs ``blocks.0`` .. ``blocks.{n_layer-1}`` (B, T, n_embd); ``lm_head`` is the
    classifier and ``lm_head:in`` (the final LayerNorm's output) the penultimate features.

    ``lm_head.weight`` *is* ``tok_emb.weight`` (one Parameter): whatever a method does to the
    classifier (reuse a teacher's, freeze it, regularise it) it also does to the input embedding;
    replacing ``lm_head`` by a new layer unties them.

    Presets at vocabulary 65 and block 128, timed as forward + backward + AdamW step of a 32 x 128
    batch on one thread of a busy 2-core CPU (re-time on a quiet machine):

    - ``gpt-mini`` (teacher): 4 layers, 4 heads, width 128; 818,048 parameters; ~6,600 tokens/s.
      On Tiny Shakespeare, 2000 steps (AdamW 1e-3, cosine to 1e-4, weight decay 0.1) took 21.5
      minutes and reached 1.615 nats/char on the validation split.
    - ``gpt-micro`` (student): 2 layers, 2 heads, width 64; 112,448 parameters; ~32,000 tokens/s.
      600 steps (AdamW 3e-3) took 82 seconds: 2.15 nats/char from labels alone.
    """

    def __init__(
        self,
        vocab_size: int,
        block_size: int = 128,
        n_layer: int = 4,
        n_head: int = 4,
        n_embd: int = 128,
        dropout: float = 0.0,
    ):
        super().__init__()
        for name, value in (
            ("vocab_size", vocab_size),
            ("block_size", block_size),
            ("n_layer", n_layer),
            ("n_head", n_head),
            ("n_embd", n_embd),
        ):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if n_embd % n_head:
            raise ValueError(f"n_embd ({n_embd}) must be divisible by n_head ({n_head})")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.block_size = block_size
        self.tok_emb = nn.Embedding(vocab_size, n_embd)
        self.pos_emb = nn.Embedding(block_size, n_embd)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(n_embd, n_head, dropout) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd)
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        self.lm_head.weight = self.tok_emb.weight
        self.apply(self._init)
        for name, p in self.named_parameters():
            if name.endswith("attn.proj.weight") or name.endswith("mlp.2.weight"):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * n_layer))

        stages = tuple(f"blocks.{i}" for i in range(n_layer))
        self.kdscope_info = ModelInfo(
            output="tokens", num_classes=vocab_size, stages=stages, classifier="lm_head"
        )

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, idx: Tensor) -> Tensor:
        if idx.dim() != 2:
            raise ValueError(f"GPT takes token ids of shape (B, T), got {tuple(idx.shape)}")
        t = idx.shape[1]
        if t > self.block_size:
            raise ValueError(
                f"sequence length {t} exceeds this model's block_size {self.block_size}"
            )
        pos = torch.arange(t, device=idx.device)
        x = self.drop(self.tok_emb(idx) + self.pos_emb(pos))
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))


@register_model("gpt", task="language-modelling", inputs=("tokens",))
def gpt(num_classes: int, in_channels: int = 1, **kwargs) -> GPT:
    """GPT with vocabulary ``num_classes``; kwargs ``block_size``, ``n_layer``, ``n_head``,
    ``n_embd``, ``dropout``. ``in_channels`` is not used: the input is token ids."""
    return GPT(num_classes, **kwargs)


@register_model("gpt-mini", task="language-modelling", inputs=("tokens",))
def gpt_mini(num_classes: int, in_channels: int = 1, **kwargs) -> GPT:
    """The teacher preset: 4 layers, 4 heads, width 128 (kwargs override)."""
    return GPT(num_classes, **{**PRESETS["gpt-mini"], **kwargs})


@register_model("gpt-micro", task="language-modelling", inputs=("tokens",))
def gpt_micro(num_classes: int, in_channels: int = 1, **kwargs) -> GPT:
    """The student preset: 2 layers, 2 heads, width 64 (kwargs override)."""
    return GPT(num_classes, **{**PRESETS["gpt-micro"], **kwargs})
