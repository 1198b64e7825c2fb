"""Sampling text from a next-token model (any module mapping ids (B, T) to logits (B, T, V))."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from kdscope.data.lm import CharVocab
from kdscope.features import unwrap


@torch.no_grad()
def generate(
    model: nn.Module,
    prompt_ids: Tensor,
    tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Append ``tokens`` sampled tokens to ``prompt_ids`` ((T0,) or (B, T0)); returns the whole
    sequence in the prompt's rank.

    Each step feeds the last ``model.block_size`` tokens (all of them if the model has no
    ``block_size``), divides the last position's logits by ``temperature``, keeps the ``top_k``
    largest when given, and draws from their softmax with ``generator`` (the same generator state
    gives the same text). ``temperature=0`` or ``top_k=1`` is greedy decoding (argmax; ties go to
    the lowest id). There is no KV cache: each step reruns the context, which is cheap at the
    block sizes kdscope trains. The model runs in eval mode; its mode is restored afterwards.
    """
    if prompt_ids.dim() not in (1, 2) or prompt_ids.shape[-1] == 0:
        raise ValueError(
            f"prompt_ids must be (T0,) or (B, T0) with T0 >= 1, got {tuple(prompt_ids.shape)}"
        )
    if not isinstance(tokens, int) or tokens < 0:
        raise ValueError(f"tokens must be an int >= 0, got {tokens!r}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be None or an int >= 1, got {top_k!r}")
    context = getattr(unwrap(model), "block_size", None)
    ids = prompt_ids.long().reshape(-1, prompt_ids.shape[-1])
    was_training = model.training
    model.eval()
    try:
        for _ in range(tokens):
            logits = model(ids if context is None else ids[:, -context:])[:, -1].float()
            if temperature == 0 or top_k == 1:
                nxt = logits.argmax(-1, keepdim=True)
            else:
                logits = logits / temperature
                if top_k is not None and top_k < logits.shape[-1]:
                    kth = logits.topk(top_k, dim=-1).values[:, -1:]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                nxt = torch.multinomial(logits.softmax(-1), 1, generator=generator)
            ids = torch.cat([ids, nxt], dim=1)
    finally:
        model.train(was_training)
    return ids if prompt_ids.dim() == 2 else ids[0]


def generate_text(
    model: nn.Module,
    vocab: CharVocab,
    prompt: str,
    tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
) -> str:
    """:func:`generate` from a text prompt, decoded with the bundle's vocabulary (prompt
    included)."""
    if not prompt:
        raise ValueError("prompt must hold at least one character")
    device = next(model.parameters()).device
    ids = generate(model, vocab.encode(prompt).to(device), tokens, temperature, top_k, generator)
    return vocab.decode(ids.cpu())
