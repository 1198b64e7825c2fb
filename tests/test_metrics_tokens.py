"""Token-level transfer measures: hand-computed values on tiny tensors, properties, streaming."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from kdscope.data.lm import TokenBlocks
from kdscope.data.memory import collate
from kdscope.features import FeatureTap
from kdscope.metrics import AgreementAccumulator, evaluate
from kdscope.metrics.similarity import MinibatchCKA, linear_cka
from kdscope.metrics.tokens import (
    TokenAgreement,
    TokenCKA,
    agreement_profile_figure,
    position_calibration_constant,
    token_measures,
)
from kdscope.models.gpt import GPT

# One sequence of four positions over a vocabulary of three. Position by position: teacher right
# and student agrees; teacher wrong (predicts 1, truth 2) and the student makes the same mistake;
# teacher right, student disagrees; teacher wrong, student disagrees with a different wrong token.
P_T = np.array([[0.72, 0.18, 0.10], [0.2, 0.52, 0.28], [0.1, 0.28, 0.62], [0.42, 0.33, 0.25]])
P_S = np.array([[0.6, 0.3, 0.1], [0.1, 0.6, 0.3], [0.48, 0.22, 0.3], [0.2, 0.3, 0.5]])
TARGETS = torch.tensor([[0, 2, 2, 1]])


def as_logits(p: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.log(p))[None]


def kl(p, q):
    return (p * np.log(p / q)).sum(1)


def test_token_agreement_by_hand():
    acc = TokenAgreement(k=2, n_bins=10, c=1.0)
    acc.update(as_logits(P_T), as_logits(P_S), TARGETS)
    r = acc.compute()
    assert r.n == 4
    assert r.top1_agreement == 0.5
    assert (r.teacher_accuracy, r.student_accuracy) == (0.5, 0.25)
    assert (r.n_teacher_correct, r.agreement_teacher_correct) == (2, 0.5)
    assert (r.n_teacher_incorrect, r.same_mistake) == (2, 0.5)
    # Top-2 sets: {0,1}/{0,1}, {1,2}/{1,2}, {2,1}/{0,2}, {0,1}/{2,1}.
    assert r.topk_overlap == pytest.approx((1 + 1 + 0.5 + 0.5) / 4)
    kls = kl(P_T, P_S)
    m = (P_T + P_S) / 2
    assert r.kl == pytest.approx(kls.mean(), rel=1e-12)
    assert r.js == pytest.approx((0.5 * kl(P_T, m) + 0.5 * kl(P_S, m)).mean(), rel=1e-12)
    assert r.teacher_perplexity == pytest.approx((0.72 * 0.28 * 0.62 * 0.33) ** -0.25)
    assert r.student_perplexity == pytest.approx((0.6 * 0.3 * 0.3 * 0.3) ** -0.25)
    assert r.aoa == pytest.approx(np.clip(1 - kls / 1.0, 0, 1).mean(), rel=1e-12)
    assert r.c == 1.0
    assert r.by_position == [1.0, 1.0, 0.0, 0.0]
    # Teacher confidences 0.72, 0.52, 0.62, 0.42 fall in bins 7, 5, 6, 4 of ten.
    assert r.confidence_counts == [0, 0, 0, 0, 1, 1, 1, 1, 0, 0]
    assert r.by_confidence == [None, None, None, None, 0.0, 1.0, 0.0, 1.0, None, None]
    assert r.confidence_edges[4:6] == pytest.approx([0.4, 0.5])


def test_student_equal_to_teacher_agrees_fully():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 6, 9, generator=g) * 3
    targets = torch.randint(0, 9, (3, 6), generator=g)
    for c in (None, 0.5):
        acc = TokenAgreement(k=3, c=c)
        acc.update(logits, logits.clone(), targets)
        r = acc.compute()
        assert r.top1_agreement == 1.0 and r.topk_overlap == 1.0
        assert r.kl == 0.0 and r.js == pytest.approx(0.0, abs=1e-15)
        assert r.teacher_perplexity == r.student_perplexity
        assert r.aoa == 1.0
        assert r.by_position == [1.0] * 6
        assert r.same_mistake in (1.0, None) and r.agreement_teacher_correct in (1.0, None)


def test_streaming_equals_one_batch_and_positions_may_vary_in_length():
    g = torch.Generator().manual_seed(1)
    t, s = torch.randn(4, 5, 7, generator=g), torch.randn(4, 5, 7, generator=g)
    y = torch.randint(0, 7, (4, 5), generator=g)
    whole, parts = TokenAgreement(k=2), TokenAgreement(k=2)
    whole.update(t, s, y)
    parts.update(t[:1], s[:1], y[:1])
    parts.update(t[1:], s[1:], y[1:])
    a, b = whole.compute().to_dict(), parts.compute().to_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert a[key] == b[key] or a[key] == pytest.approx(b[key], rel=1e-12), key
    short = TokenAgreement()
    short.update(t[:, :3], s[:, :3], y[:, :3])
    short.update(t[:2], s[:2], y[:2])
    agree = (t.argmax(-1) == s.argmax(-1)).double()
    expected = (agree[:, :3].sum(0) + agree[:2, :3].sum(0)) / 6
    assert short.compute().by_position[:3] == pytest.approx(expected.tolist())
    assert short.compute().by_position[3:] == pytest.approx(agree[:2, 3:].mean(0).tolist())


def test_calibration_constant_is_the_largest_position_kl():
    c = position_calibration_constant(as_logits(P_T), as_logits(P_S))
    assert c == pytest.approx(kl(P_T, P_S).max(), rel=1e-6)
    acc = TokenAgreement(k=2, c=None)
    acc.update(as_logits(P_T), as_logits(P_S), TARGETS)
    assert acc.compute().aoa == pytest.approx(1 - kl(P_T, P_S).mean() / c, rel=1e-6)


def test_token_agreement_errors():
    acc = TokenAgreement(k=4)
    with pytest.raises(ValueError, match=r"k \(4\) exceeds the vocabulary size \(3\)"):
        acc.update(as_logits(P_T), as_logits(P_S), TARGETS)
    with pytest.raises(ValueError, match=r"targets must be \(B, T\) = \(1, 4\)"):
        TokenAgreement(k=1).update(as_logits(P_T), as_logits(P_S), TARGETS[:, :2])
    with pytest.raises(ValueError, match=r"targets must lie in \[0, 3\)"):
        TokenAgreement(k=1).update(as_logits(P_T), as_logits(P_S), TARGETS + 1)
    with pytest.raises(ValueError, match="at least one position"):
        TokenAgreement().compute()


# --- CKA ----------------------------------------------------------------------------------------


def features(seed, shape=(4, 32, 6)):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_token_cka_is_one_for_the_same_features_up_to_rotation_and_scale():
    x = features(0)
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=torch.Generator().manual_seed(9)))
    cka = TokenCKA([("a", "b"), ("a", "c")], positions=64)
    for seed in range(3):
        x = features(seed)
        cka.update({"a": x}, {"b": x, "c": 3 * x @ q + 1})
    values = cka.compute()
    assert values[("a", "b")] == pytest.approx(1.0, abs=1e-12)
    assert values[("a", "c")] == pytest.approx(1.0, abs=1e-10)


def test_token_cka_is_minibatch_cka_of_seeded_position_subsamples():
    s, t = [features(i) for i in (1, 3)], [features(i, (4, 32, 5)) for i in (2, 4)]
    cka = TokenCKA([("s", "t")], positions=50, seed=7)
    reference = MinibatchCKA()
    draw = torch.Generator().manual_seed(7)
    for a, b in zip(s, t, strict=True):
        cka.update({"s": a}, {"t": b})
        chosen = torch.randperm(128, generator=draw)[:50]
        reference.update(a.reshape(128, -1)[chosen], b.reshape(128, -1)[chosen])
    assert cka.compute()[("s", "t")] == reference.compute()
    other = TokenCKA([("s", "t")], positions=50, seed=8)
    for a, b in zip(s, t, strict=True):
        other.update({"s": a}, {"t": b})
    assert other.compute()[("s", "t")] != cka.compute()[("s", "t")]


def test_token_cka_with_all_positions_tracks_linear_cka():
    x = features(5, (2, 200, 4))
    y = x @ torch.randn(4, 3, generator=torch.Generator().manual_seed(0)) + 0.5 * features(
        6, (2, 200, 3)
    )
    cka = TokenCKA([("x", "y")], positions=400)
    cka.update({"x": x}, {"y": y})
    expected = linear_cka(x.reshape(400, 4), y.reshape(400, 3), debiased=True).item()
    assert cka.compute()[("x", "y")] == pytest.approx(expected, rel=1e-7)


def test_token_cka_errors():
    with pytest.raises(ValueError, match="positions must be an int >= 4"):
        TokenCKA([("a", "b")], positions=3)
    with pytest.raises(ValueError, match="at least one"):
        TokenCKA([])
    cka = TokenCKA([("a", "b")])
    with pytest.raises(ValueError, match="do not cover the same positions"):
        cka.update({"a": features(0)}, {"b": features(1, (4, 31, 6))})


# --- on models ----------------------------------------------------------------------------------


def tiny(n_layer: int, seed: int) -> GPT:
    torch.manual_seed(seed)
    return GPT(13, block_size=16, n_layer=n_layer, n_head=2, n_embd=16)


def loader(seed=0):
    tokens = torch.randint(0, 13, (16 * 12 + 1,), generator=torch.Generator().manual_seed(seed))
    return DataLoader(TokenBlocks(tokens, 16), batch_size=4, collate_fn=collate)


def test_token_measures_of_a_model_and_its_copy():
    teacher = tiny(3, 0)
    result, cka = token_measures(teacher, copy.deepcopy(teacher), loader(), k=3, cka_positions=32)
    assert result.n == 12 * 16
    assert result.top1_agreement == 1.0 and result.kl == 0.0
    assert result.teacher_perplexity == result.student_perplexity
    assert set(cka) == {(f"blocks.{i}", f"blocks.{i}") for i in range(3)}
    assert all(v == pytest.approx(1.0, abs=1e-9) for v in cka.values())


def test_token_measures_pair_stages_by_depth_and_restore_modes():
    teacher, student = tiny(4, 0).train(), tiny(2, 1).eval()
    result, cka = token_measures(teacher, student, loader(), cka_positions=32)
    assert set(cka) == {("blocks.0", "blocks.1"), ("blocks.1", "blocks.3")}
    assert all(0.0 < v < 1.0 for v in cka.values())
    assert 0.0 <= result.top1_agreement < 1.0 and result.kl > 0
    assert result.teacher_perplexity == pytest.approx(13, rel=0.2)  # untrained: near uniform
    assert teacher.training and not student.training
    _, none = token_measures(teacher, student, loader(), cka_positions=None)
    assert none == {}


@torch.no_grad()
def _run(model, data, layers):
    """Logits and block outputs of ``model`` per batch of ``data``."""
    out = []
    with FeatureTap(model.eval(), layers, detach=True) as tap:
        for x, y, _ in data:
            out.append((model(x), y, {k: v.clone() for k, v in tap.features.items()}))
    return out


def test_the_evaluator_reads_a_language_model_position_by_position():
    teacher, student = tiny(4, 0), tiny(2, 1)
    result = evaluate(teacher, student, loader(), metrics=["agreement", "krs"], positions=8)
    assert result.task == "language-modelling" and result.n == 12 * 16
    assert result.layers == [("blocks.0", "blocks.1"), ("blocks.1", "blocks.3")]
    t_batches = _run(teacher, loader(), ["blocks.1", "blocks.3"])
    s_batches = _run(student, loader(), ["blocks.0", "blocks.1"])
    # Agreement, KL and AOA take every position as an example ...
    by_position = AgreementAccumulator()
    for (t, y, _), (s, _, _) in zip(t_batches, s_batches, strict=True):
        by_position.update(t.flatten(0, 1), s.flatten(0, 1), y.flatten())
    expected = by_position.compute()
    got = result.agreement["student"]
    for split in ("all", "teacher_correct", "teacher_incorrect"):
        assert getattr(got, split).n == getattr(expected, split).n
        assert getattr(got, split).kl == pytest.approx(getattr(expected, split).kl, rel=1e-12)
    assert got.same_error == expected.same_error
    # ... and the token figures are TokenAgreement's over the same positions.
    tokens, _ = token_measures(teacher, student, loader(), cka_positions=None)
    measured = result.tokens["student"].to_dict()
    assert measured.keys() == tokens.to_dict().keys()
    for key, value in tokens.to_dict().items():
        assert measured[key] == value or measured[key] == pytest.approx(value, rel=1e-12), key
    assert result.tokens["student"].top1_agreement == pytest.approx(got.all.top1_agreement)
    # CKA: minibatch CKA over 8 positions per batch, drawn by a generator seeded 0 and shared by
    # the two models, so that a position's features are compared with its own.
    draw = torch.Generator().manual_seed(0)
    cka = {pair: MinibatchCKA() for pair in result.layers}
    for (_, y, t_feats), (_, _, s_feats) in zip(t_batches, s_batches, strict=True):
        chosen = torch.randperm(y.numel(), generator=draw)[:8]
        for (s_layer, t_layer), acc in cka.items():
            acc.update(
                s_feats[s_layer].flatten(0, 1)[chosen], t_feats[t_layer].flatten(0, 1)[chosen]
            )
    per_layer = result.krs["student"].per_layer
    for (s_layer, t_layer), acc in cka.items():
        assert per_layer[f"{s_layer}<->{t_layer}"] == pytest.approx(acc.compute(), abs=1e-5)
    assert "8 positions drawn per batch" in result.estimators["fss_cka"]


def test_the_evaluator_calibrates_on_positions_and_refuses_rs_for_language_models():
    teacher, student = tiny(4, 0), tiny(2, 1)
    result = evaluate(teacher, student, loader(), metrics=["krs"], calibration=loader(1))
    t, s = (torch.cat([z for z, _, _ in _run(m, loader(1), [])]) for m in (teacher, student))
    assert result.calibration["c"] == pytest.approx(position_calibration_constant(t, s), rel=1e-9)
    assert result.calibration["n"] == 12 * 16
    with pytest.raises(ValueError, match="rs is not measured"):
        evaluate(teacher, student, loader(), metrics=["rs"], class_names=list("abcdefghijklm"))


def test_agreement_profile_figure_draws_the_arrays():
    acc = TokenAgreement(k=2)
    acc.update(as_logits(P_T), as_logits(P_S), TARGETS)
    result = acc.compute()
    fig = agreement_profile_figure(result, title="t")
    by_pos, by_conf, bars = fig.axes
    assert by_pos.lines[0].get_ydata().tolist() == result.by_position
    drawn = by_conf.lines[0].get_ydata()
    assert np.array_equal(np.isnan(drawn), [a is None for a in result.by_confidence])
    assert len(bars.patches) == 10
    assert math.isclose(sum(p.get_height() for p in bars.patches), 1.0)
