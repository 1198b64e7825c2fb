"""The GPT language model, the Hugging Face wrapper, sampling, and a short real training run."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from kdscope.data.lm import CharVocab
from kdscope.data.registry import dataset_dir, load_data
from kdscope.features import FeatureTap
from kdscope.models.generate import generate, generate_text
from kdscope.models.gpt import GPT, PRESETS
from kdscope.models.hf import HFCausalLM, create_hf_causal_lm
from kdscope.models.info import classifier_of, describe
from kdscope.models.registry import create_model

SHAKESPEARE = dataset_dir("tinyshakespeare", None) / "input.txt"


def tiny_gpt(vocab: int = 11, block_size: int = 8, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(vocab, block_size=block_size, n_layer=2, n_head=2, n_embd=16)


# --- GPT ----------------------------------------------------------------------------------------


def test_gpt_outputs_next_token_logits_and_describes_itself():
    model = tiny_gpt()
    logits = model(torch.randint(0, 11, (3, 8)))
    assert logits.shape == (3, 8, 11)
    info = describe(model)
    assert info.output == "tokens" and info.class_dim == -1 and info.num_classes == 11
    assert info.stages == ("blocks.0", "blocks.1")
    assert info.classifier == "lm_head" and info.penultimate == "lm_head:in"
    assert describe(model).stages == ("blocks.0", "blocks.1")
    with FeatureTap(model, [*info.stages, info.penultimate], detach=True) as tap:
        model(torch.zeros(2, 5, dtype=torch.long))
    assert [tuple(f.shape) for f in tap.ordered()] == [(2, 5, 16)] * 3


def test_gpt_head_is_tied_to_the_token_embedding():
    model = tiny_gpt()
    head = classifier_of(model)
    assert head is model.lm_head
    assert head.weight is model.tok_emb.weight
    # One matrix: a change to the embedding is a change to the head's output.
    model.tok_emb.weight.data[3].zero_()
    assert torch.all(model(torch.tensor([[1, 2]]))[..., 3] == 0)


def test_gpt_is_causal():
    model = tiny_gpt().eval()
    x = torch.randint(0, 11, (1, 8))
    changed = x.clone()
    changed[0, 5] = (x[0, 5] + 1) % 11
    a, b = model(x), model(changed)
    assert torch.equal(a[0, :5], b[0, :5])
    assert not torch.allclose(a[0, 5:], b[0, 5:])


def test_gpt_presets_and_registry():
    for name, params in (("gpt-mini", 818_048), ("gpt-micro", 112_448)):
        model = create_model(name, 65, 1)
        assert isinstance(model, GPT)
        assert sum(p.numel() for p in model.parameters()) == params
        assert len(model.blocks) == PRESETS[name]["n_layer"]
    assert create_model("gpt", 20, 1, n_layer=1, n_embd=8, n_head=2).lm_head.out_features == 20


def test_gpt_errors():
    model = tiny_gpt()
    with pytest.raises(ValueError, match="sequence length 9 exceeds this model's block_size 8"):
        model(torch.zeros(1, 9, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\(B, T\)"):
        model(torch.zeros(9, dtype=torch.long))
    with pytest.raises(ValueError, match=r"n_embd \(10\) must be divisible by n_head \(4\)"):
        GPT(11, n_embd=10, n_head=4)
    with pytest.raises(ValueError, match="n_layer must be a positive int"):
        GPT(11, n_layer=0)


# --- Hugging Face -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(
        vocab_size=23,
        n_positions=16,
        n_embd=16,
        n_layer=3,
        n_head=2,
        bos_token_id=0,
        eos_token_id=0,
    )
    torch.manual_seed(0)
    reference = transformers.GPT2LMHeadModel(config).eval()
    path = tmp_path_factory.mktemp("tiny-gpt2")
    reference.save_pretrained(path)
    return path, reference


def test_hf_wrapper_gives_the_model_logits_and_its_blocks(hf_dir):
    path, reference = hf_dir
    model = create_hf_causal_lm(path, num_classes=23).eval()
    assert isinstance(model, HFCausalLM) and model.block_size == 16
    x = torch.randint(0, 23, (2, 7))
    logits = model(x)
    assert logits.shape == (2, 7, 23)
    assert torch.allclose(logits, reference(input_ids=x).logits, atol=1e-6)
    info = describe(model)
    assert info.output == "tokens" and info.num_classes == 23
    assert info.stages == (
        "model.transformer.h.0",
        "model.transformer.h.1",
        "model.transformer.h.2",
    )
    assert info.classifier == "model.lm_head"
    assert classifier_of(model).weight is model.model.transformer.wte.weight
    with FeatureTap(model, info.stages, detach=True) as tap:
        model(x)
    assert [tuple(f.shape) for f in tap.ordered()] == [(2, 7, 16)] * 3


def test_hf_wrapper_errors(hf_dir, tmp_path):
    path, _ = hf_dir
    with pytest.raises(ValueError, match="vocabulary of 23 tokens but the data has 65 classes"):
        create_hf_causal_lm(path, num_classes=65)
    with pytest.raises(FileNotFoundError, match="not a Hugging Face model directory"):
        create_hf_causal_lm(tmp_path)


# --- sampling -----------------------------------------------------------------------------------


class FixedLogits(nn.Module):
    """Ignores its input: the same next-token logits at every position."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.logits = nn.Parameter(logits, requires_grad=False)

    def forward(self, x):
        return self.logits.expand(*x.shape, -1)


def greedy(model: nn.Module, ids: torch.Tensor, tokens: int) -> torch.Tensor:
    for _ in range(tokens):
        nxt = model(ids[:, -model.block_size :])[:, -1].argmax(-1, keepdim=True)
        ids = torch.cat([ids, nxt], 1)
    return ids


def test_generate_greedy_limits():
    model = tiny_gpt(block_size=8).eval()
    prompt = torch.tensor([[1, 2, 3], [4, 5, 6]])
    expected = greedy(model, prompt, 12)  # runs past block_size: the context is cropped
    assert torch.equal(generate(model, prompt, 12, temperature=0.0), expected)
    assert torch.equal(generate(model, prompt, 12, top_k=1), expected)
    assert torch.equal(generate(model, prompt, 12, temperature=1e-6), expected)
    assert torch.equal(generate(model, prompt[0], 12, temperature=0.0), expected[0])


def test_generate_is_reproducible_with_a_generator_and_restores_the_mode():
    model = tiny_gpt().train()
    prompt = torch.tensor([0])
    a = generate(model, prompt, 40, generator=torch.Generator().manual_seed(1))
    b = generate(model, prompt, 40, generator=torch.Generator().manual_seed(1))
    c = generate(model, prompt, 40, generator=torch.Generator().manual_seed(2))
    assert a.shape == (41,) and torch.equal(a, b) and not torch.equal(a, c)
    assert model.training


def test_generate_samples_softmax_at_temperature_within_top_k():
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0])
    model = FixedLogits(logits)
    prompt = torch.zeros(4000, 1, dtype=torch.long)
    draws = generate(model, prompt, 1, temperature=2.0, generator=torch.Generator().manual_seed(0))
    freq = torch.bincount(draws[:, 1], minlength=4) / 4000
    assert torch.allclose(freq, torch.softmax(logits / 2, 0), atol=0.025)
    draws = generate(model, prompt, 1, top_k=2, generator=torch.Generator().manual_seed(0))
    freq = torch.bincount(draws[:, 1], minlength=4) / 4000
    assert freq[2:].sum() == 0
    assert torch.allclose(freq[:2], torch.softmax(logits[:2], 0), atol=0.025)


def test_generate_text_and_errors():
    vocab = CharVocab.from_text("abcdefghijk")
    model = tiny_gpt(vocab=len(vocab))
    text = generate_text(model, vocab, "abc", 10, generator=torch.Generator().manual_seed(0))
    assert len(text) == 13 and text.startswith("abc") and set(text) <= set(vocab.chars)
    with pytest.raises(ValueError, match="at least one character"):
        generate_text(model, vocab, "", 3)
    with pytest.raises(ValueError, match="temperature must be >= 0"):
        generate(model, torch.tensor([1]), 3, temperature=-1.0)
    with pytest.raises(ValueError, match="top_k must be None or an int >= 1"):
        generate(model, torch.tensor([1]), 3, top_k=0)


# --- a real short run ---------------------------------------------------------------------------


@pytest.mark.skipif(not SHAKESPEARE.is_file(), reason=f"Tiny Shakespeare not at {SHAKESPEARE}")
def test_gpt_micro_learns_tinyshakespeare_in_100_steps():
    data = load_data("tinyshakespeare", block_size=64)
    torch.manual_seed(0)
    model = create_model("gpt-micro", data.num_classes, 1, block_size=64)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    draw = torch.Generator().manual_seed(0)
    for _ in range(100):
        x, y, _ = data.train.__getitems__(torch.randint(len(data.train), (16,), generator=draw))
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    x, y = data.val.tensors()
    with torch.no_grad():
        val_loss = F.cross_entropy(model(x[:64]).flatten(0, 1), y[:64].flatten()).item()
    counts = Counter(data.train.windows[:, 1:].flatten().tolist())
    total = sum(counts.values())
    unigram = -sum(c / total * math.log(c / total) for c in counts.values())
    # Uniform guessing scores log 65 = 4.17 nats; character frequencies alone 3.31.
    assert val_loss < unigram - 0.4 < math.log(65)
