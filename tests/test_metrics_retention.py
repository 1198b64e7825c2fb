"""Knowledge Retention Score: formula, range, identity, pairing, C, segmentation AOA, bad input."""

import pytest
import torch

from kdscope.metrics.agreement import kl_per_example
from kdscope.metrics.dense import mask_agreement
from kdscope.metrics.retention import (
    OutputAgreement,
    calibration_constant,
    knowledge_retention_score,
    krs_from_components,
    output_agreement,
    segmentation_agreement,
    task_weights,
)
from kdscope.metrics.similarity import linear_cka


def _models(seed: int, n: int = 60):
    g = torch.Generator().manual_seed(seed)
    t_feats = {f"t{i}": torch.randn(n, 4 * (i + 1), 2, 2, generator=g) for i in range(3)}
    s_feats = {
        "s0": t_feats["t1"].flatten(1)[:, :5] + torch.randn(n, 5, generator=g),
        "s1": torch.randn(n, 7, generator=g),
    }
    t_logits = torch.randn(n, 5, generator=g) * 2
    s_logits = t_logits + torch.randn(n, 5, generator=g)
    return t_feats, s_feats, t_logits, s_logits


def test_krs_of_teacher_with_itself_is_one():
    t_feats, _, t_logits, _ = _models(0)
    r = knowledge_retention_score(t_feats, t_feats, t_logits, t_logits)
    assert (r.krs, r.fss, r.aoa) == (pytest.approx(1.0), pytest.approx(1.0), 1.0)
    assert r.c == 0.0 and r.c_source == "evaluation set"


@pytest.mark.parametrize("seed", range(4))
def test_krs_in_unit_interval_and_formula(seed):
    t_feats, s_feats, t_logits, s_logits = _models(seed)
    c = calibration_constant(t_logits[:20], s_logits[:20])  # the held-out calibration split
    t_feats = {k: v[20:] for k, v in t_feats.items()}
    s_feats = {k: v[20:] for k, v in s_feats.items()}
    r = knowledge_retention_score(t_feats, s_feats, t_logits[20:], s_logits[20:], c=c)
    assert 0.0 <= r.krs <= 1.0
    assert r.krs == pytest.approx(0.3 * r.fss + 0.7 * r.aoa, abs=1e-12)
    # Pairing by relative depth: two student layers against three teacher layers.
    assert r.layers == [("s0", "t1"), ("s1", "t2")]
    expected = linear_cka(s_feats["s0"], t_feats["t1"], debiased=True).item()
    assert r.per_layer["s0<->t1"] == pytest.approx(expected, abs=1e-12)
    assert r.c == c and r.c_source == "given" and r.n == 40


def test_explicit_layers_and_sequences():
    t_feats, s_feats, t_logits, s_logits = _models(1)
    pairs = [("s1", "t0")]
    r = knowledge_retention_score(t_feats, s_feats, t_logits, s_logits, layers=pairs, c=1.0)
    assert list(r.per_layer) == ["s1<->t0"]
    seq = knowledge_retention_score(
        list(t_feats.values()), list(s_feats.values()), t_logits, s_logits
    )
    assert seq.layers == [("0", "1"), ("1", "2")]
    with pytest.raises(KeyError, match="'s9'"):
        knowledge_retention_score(t_feats, s_feats, t_logits, s_logits, layers=[("s9", "t0")])
    with pytest.raises(ValueError, match="teacher features 't0' have 60 examples, outputs 59"):
        knowledge_retention_score(t_feats, s_feats, t_logits[:59], s_logits[:59], layers=pairs)


def test_aoa_clips_and_calibration_constant():
    t_logits = torch.tensor([[2.0, 0.0], [0.0, 3.0], [1.0, 1.0]])
    s_logits = torch.tensor([[0.0, 2.0], [0.0, 3.0], [1.0, 0.0]])
    kl = kl_per_example(t_logits, s_logits)
    assert calibration_constant(t_logits, s_logits) == pytest.approx(kl.max().item())
    c = kl[2].item()  # smaller than the first example's KL: that term clips to 0
    expected = (0.0 + 1.0 + 0.0) / 3
    assert output_agreement(t_logits, s_logits, c) == pytest.approx(expected, abs=1e-12)
    assert output_agreement(t_logits, s_logits, 2 * c) == pytest.approx(
        (0 + 1 + 0.5) / 3, abs=1e-12
    )
    assert output_agreement(t_logits, s_logits, 0.0) == pytest.approx(1 / 3)  # only exact agreement
    with pytest.raises(ValueError, match="C must be >= 0"):
        output_agreement(t_logits, s_logits, -1.0)


def test_streaming_aoa():
    _, _, t_logits, s_logits = _models(2)
    given = OutputAgreement(c=0.5)
    free = OutputAgreement()
    for start in range(0, 60, 25):
        given.update(t_logits[start : start + 25], s_logits[start : start + 25])
        free.update(t_logits[start : start + 25], s_logits[start : start + 25])
    assert given.compute() == pytest.approx(output_agreement(t_logits, s_logits, 0.5), abs=1e-12)
    c = calibration_constant(t_logits, s_logits)
    assert free.max_kl == pytest.approx(c)
    assert free.compute() == pytest.approx(output_agreement(t_logits, s_logits, c), abs=1e-12)
    assert free.compute(2 * c) == pytest.approx(
        output_agreement(t_logits, s_logits, 2 * c), abs=1e-12
    )
    with pytest.raises(ValueError, match="must be >= the largest KL"):
        free.compute(c / 2)


def test_task_weights():
    assert task_weights("classification") == (0.3, 0.7)
    assert task_weights("detection") == task_weights("segmentation") == (0.7, 0.3)
    assert task_weights("classification", alpha=0.5) == (0.5, 0.5)
    with pytest.raises(ValueError, match="unknown task 'pose'; accepted: classification"):
        task_weights("pose")
    with pytest.raises(ValueError, match="alpha must lie in"):
        task_weights("classification", alpha=1.5)
    r = krs_from_components({"a": 0.4, "b": 0.8}, 0.5, task="detection", c=1.0)
    assert r.fss == pytest.approx(0.6) and r.krs == pytest.approx(0.7 * 0.6 + 0.3 * 0.5)
    assert krs_from_components({"a": -0.1}, 0.5).fss == 0.0  # debiased CKA below 0 is clipped


def test_segmentation_mean_iou():
    teacher = torch.tensor([[[0, 0, 1], [1, 2, 2]]])
    student = torch.tensor([[[0, 1, 1], [1, 2, 0]]])
    # class 0: I=1, U=3; class 1: I=2, U=3; class 2: I=1, U=2.
    assert segmentation_agreement(teacher, student, 3) == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)
    assert segmentation_agreement(teacher, teacher, 4) == 1.0  # class 3 absent from both: left out
    logits = torch.nn.functional.one_hot(teacher, 3).permute(0, 3, 1, 2).float()
    assert segmentation_agreement(logits, logits, 3) == 1.0
    ignored = segmentation_agreement(teacher, student, 3, ignore_index=2)
    assert ignored == pytest.approx((1 / 2 + 2 / 3) / 2)
    with pytest.raises(ValueError, match="mask shapes differ"):
        segmentation_agreement(teacher, student[:, :1], 3)
    with pytest.raises(ValueError, match=r"lie in \[0, 2\)"):
        segmentation_agreement(teacher, student, 2)


def test_segmentation_krs_uses_iou_and_its_weights():
    g = torch.Generator().manual_seed(3)
    feats = {"f": torch.randn(8, 6, generator=g)}
    masks = torch.randint(0, 3, (8, 4, 4), generator=g)
    r = knowledge_retention_score(feats, feats, masks, masks, task="segmentation", num_classes=3)
    assert (r.krs, r.alpha, r.beta, r.c) == (pytest.approx(1.0), 0.7, 0.3, None)
    with pytest.raises(ValueError, match="num_classes"):
        knowledge_retention_score(feats, feats, masks, masks, task="segmentation")


def test_segmentation_aoa_is_the_mean_per_image_iou_as_the_evaluator_measures():
    g = torch.Generator().manual_seed(4)
    feats = {"f": torch.randn(6, 5, generator=g)}
    teacher = torch.randint(0, 3, (6, 5, 5), generator=g)
    student = torch.where(torch.rand(6, 5, 5, generator=g) < 0.3, 0, teacher)
    student[0] = 2  # one image far off: pooled and per-image IoU then differ
    r = knowledge_retention_score(
        feats, feats, teacher, student, task="segmentation", num_classes=3
    )
    per_image = [
        segmentation_agreement(teacher[i : i + 1], student[i : i + 1], 3) for i in range(6)
    ]
    assert r.aoa == pytest.approx(sum(per_image) / 6)
    assert r.aoa == pytest.approx(mask_agreement(teacher, student, 3))
    assert r.aoa != pytest.approx(segmentation_agreement(teacher, student, 3))
