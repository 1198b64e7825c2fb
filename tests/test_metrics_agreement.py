"""Output agreement: hand values, split bookkeeping, streaming, ECE, bad input."""

import numpy as np
import pytest
import torch
from scipy.spatial.distance import jensenshannon
from scipy.stats import entropy

from kdscope.metrics.agreement import AgreementAccumulator, agreement, kl_per_example

MEANS = ("top1_agreement", "kl", "js", "activation_distance", "cosine")


def _data(seed: int = 0, n: int = 300, classes: int = 6):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (n,), generator=g)
    teacher = torch.randn(n, classes, generator=g) * 2 + 3 * torch.nn.functional.one_hot(labels)
    student = teacher + torch.randn(n, classes, generator=g) * 1.5
    return teacher, student, labels


def _reference_ece(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    conf, pred = probs.max(1), probs.argmax(1)
    edges = np.linspace(0, 1, bins + 1)
    total = 0.0
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        in_bin = (conf > lo) & (conf <= hi)
        if in_bin.any():
            total += in_bin.mean() * abs(
                conf[in_bin].mean() - (pred[in_bin] == labels[in_bin]).mean()
            )
    return total


def test_figures_match_scipy_per_example():
    teacher, student, labels = _data(n=40)
    result = agreement(teacher, student, labels)
    p_t = torch.softmax(teacher.double(), 1).numpy()
    p_s = torch.softmax(student.double(), 1).numpy()
    kl = entropy(p_t, p_s, axis=1)
    js = jensenshannon(p_t, p_s, axis=1) ** 2
    cos = (p_t * p_s).sum(1) / np.linalg.norm(p_t, axis=1) / np.linalg.norm(p_s, axis=1)
    assert result.all.kl == pytest.approx(kl.mean(), abs=1e-12)
    assert result.all.js == pytest.approx(js.mean(), abs=1e-12)
    assert result.all.cosine == pytest.approx(cos.mean(), abs=1e-12)
    assert result.all.activation_distance == pytest.approx(
        np.linalg.norm(p_t - p_s, axis=1).mean(), abs=1e-12
    )
    assert result.all.top1_agreement == pytest.approx((p_t.argmax(1) == p_s.argmax(1)).mean())
    assert result.all.student_ece == pytest.approx(_reference_ece(p_s, labels.numpy()), abs=1e-12)
    assert result.all.teacher_ece == pytest.approx(_reference_ece(p_t, labels.numpy()), abs=1e-12)
    assert kl_per_example(teacher, student).numpy() == pytest.approx(kl, abs=1e-12)


def test_splits_add_up_to_the_whole():
    teacher, student, labels = _data()
    r = agreement(teacher, student, labels)
    assert r.teacher_correct.n + r.teacher_incorrect.n == r.all.n == 300
    assert 0 < r.teacher_incorrect.n < 300
    assert r.teacher_correct.teacher_accuracy == 1.0 and r.teacher_incorrect.teacher_accuracy == 0.0
    for name in (*MEANS, "student_accuracy", "teacher_accuracy"):
        whole = getattr(r.teacher_correct, name) * r.teacher_correct.n
        whole += getattr(r.teacher_incorrect, name) * r.teacher_incorrect.n
        assert whole / r.all.n == pytest.approx(getattr(r.all, name), abs=1e-12), name


def test_same_error_counts_the_teachers_exact_mistakes():
    labels = torch.tensor([0, 0, 0, 0, 1])
    eye = torch.eye(3) * 5
    teacher = eye[[1, 1, 2, 0, 1]]  # wrong, wrong, wrong, right, right
    student = eye[[1, 2, 0, 0, 0]]  # same error, other error, right, right, wrong
    r = agreement(teacher, student, labels)
    assert r.teacher_incorrect.n == 3
    assert r.same_error == pytest.approx(1 / 3)
    assert r.teacher_incorrect.student_accuracy == pytest.approx(1 / 3)
    assert r.teacher_correct.top1_agreement == pytest.approx(1 / 2)


def test_streaming_equals_one_shot_and_empty_split_is_none():
    teacher, student, labels = _data(seed=1)
    acc = AgreementAccumulator()
    for start in range(0, 300, 70):
        acc.update(
            teacher[start : start + 70], student[start : start + 70], labels[start : start + 70]
        )
    streamed, whole = acc.compute().to_dict(), agreement(teacher, student, labels).to_dict()
    for split in ("all", "teacher_correct", "teacher_incorrect"):
        assert streamed[split] == pytest.approx(whole[split], abs=1e-12)
    perfect = torch.nn.functional.one_hot(labels, 6).float() * 10
    r = agreement(perfect, student, labels)
    assert r.teacher_incorrect.n == 0 and r.teacher_incorrect.kl is None and r.same_error is None


def test_temperature_and_identical_models():
    teacher, student, labels = _data(seed=2, n=50)
    assert agreement(teacher, student, labels, temperature=4.0).all.kl == pytest.approx(
        agreement(teacher / 4, student / 4, labels).all.kl, abs=1e-12
    )
    same = agreement(teacher, teacher, labels).all
    assert (same.top1_agreement, same.kl, same.activation_distance) == (1.0, 0.0, 0.0)
    assert same.js == pytest.approx(0.0, abs=1e-15)
    assert same.cosine == pytest.approx(1.0)


def test_bad_input():
    teacher, student, labels = _data(n=10)
    with pytest.raises(ValueError, match=r"\(n, classes\)"):
        agreement(teacher, student[:, :4], labels)
    with pytest.raises(ValueError, match="labels must have shape"):
        agreement(teacher, student, labels[:9])
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 6\)"):
        agreement(teacher, student, labels + 6)
    bad = student.clone()
    bad[0, 0] = float("inf")
    with pytest.raises(ValueError, match="student logits contain NaN or inf"):
        agreement(teacher, bad, labels)
    with pytest.raises(ValueError, match="temperature"):
        AgreementAccumulator(temperature=0)
