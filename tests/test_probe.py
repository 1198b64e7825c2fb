"""Retention curves (train.probe): the probe set, its figures against reference computations,
training unchanged by it, an exact resume, and the run report's figure."""

import json
import math

import numpy as np
import pytest
import torch
from torch.utils.data import Subset, TensorDataset

from _interrupt import InterruptAt
from kdscope.analysis.plots import retention_curves
from kdscope.analysis.run_report import write_run_report
from kdscope.config import DataConfig, TrainConfig
from kdscope.features import FeatureTap
from kdscope.metrics import agreement, linear_cka, output_agreement
from kdscope.models import create_model, describe
from kdscope.train import Trainer
from kdscope.train.probe import probe_indices


def _fit(digits, epochs=2, run_dir=None, resume=False, train_set=None, teacher=True, **cfg):
    torch.manual_seed(0)
    t = create_model("resnet8", 10, 1).eval()
    s = create_model("resnet8", 10, 1)
    trainer = Trainer(
        s,
        train_set or digits.train,
        digits.val,
        teacher=t if teacher else None,
        method="kd" if teacher else "none",
        data=DataConfig(batch_size=32),
        train=TrainConfig(epochs=epochs, deterministic=True, **cfg),
        run_dir=run_dir,
        progress=False,
    )
    return trainer, trainer.fit(resume=resume)


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _probe_keys(record):
    return {k: v for k, v in record.items() if k.startswith("probe_") and k != "probe_time_s"}


def test_probe_set_is_stratified_and_seeded(digits):
    labels = digits.val.labels.numpy()
    a, b = probe_indices(digits.val, 50, seed=0), probe_indices(digits.val, 50, seed=0)
    assert np.array_equal(a, b) and len(set(a.tolist())) == 50
    assert not np.array_equal(a, probe_indices(digits.val, 50, seed=1))
    shares = np.bincount(labels[a], minlength=10) / 50
    assert np.abs(shares - np.bincount(labels, minlength=10) / len(labels)).max() <= 1 / 50
    with pytest.raises(ValueError, match=r"train.probe=5000 must be between 4 and 144"):
        probe_indices(digits.val, 5000, seed=0)
    # A dataset without a labels attribute: its labels are read through a loader.
    pairs = TensorDataset(torch.zeros(20, 1), torch.arange(20) % 2)
    assert np.bincount(np.arange(20)[probe_indices(pairs, 10, seed=0)] % 2).tolist() == [5, 5]


def test_probe_figures_match_references_and_leave_training_unchanged(digits, tmp_path):
    plain, _ = _fit(digits)
    probed, result = _fit(digits, probe=40, run_dir=tmp_path)
    assert _same_weights(plain.student, probed.student)
    stages = describe(probed.student).stages
    expected = {"probe_agree_all", "probe_agree_C", "probe_agree_I", "probe_aoa"}
    expected |= {f"probe_cka/{s}" for s in stages}
    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [set(_probe_keys(r)) for r in logged] == [expected, expected]

    # The last epoch's figures, recomputed from scratch for the final student.
    idx = probe_indices(digits.val, 40, seed=0)
    x, y, _ = digits.val.__getitems__(idx.tolist())
    models = {"teacher": probed.teacher, "student": probed.student.eval()}
    taps = {who: FeatureTap(m, describe(m).stages, detach=True) for who, m in models.items()}
    with torch.no_grad():
        logits = {}
        for who, m in models.items():
            with taps[who]:
                logits[who] = m(x)
    ref = agreement(logits["teacher"], logits["student"], y)
    last = logged[-1]
    assert last["probe_agree_all"] == pytest.approx(ref.all.top1_agreement)
    assert last["probe_agree_C"] == pytest.approx(ref.teacher_correct.top1_agreement)
    assert last["probe_agree_I"] == pytest.approx(ref.teacher_incorrect.top1_agreement)
    p_t = logits["teacher"].double().softmax(1)
    c = (math.log(10) + (p_t * p_t.log()).sum(1)).max().item()
    aoa = output_agreement(logits["teacher"], logits["student"], c)
    assert last["probe_aoa"] == pytest.approx(aoa, abs=1e-9)
    for s in stages:  # same architecture: stage i pairs with stage i; one chunk is plain CKA
        cka = linear_cka(taps["student"][s], taps["teacher"][s], debiased=True).item()
        assert last[f"probe_cka/{s}"] == pytest.approx(cka, abs=1e-6)

    html = write_run_report(tmp_path).read_text()
    assert "Retention curves" in html and 'alt="Retention curves' in html


def test_resume_with_probe_is_exact(digits, tmp_path):
    reference, ref_result = _fit(digits, probe=24)
    with pytest.raises(KeyboardInterrupt):
        _fit(digits, probe=24, run_dir=tmp_path, train_set=InterruptAt(digits.train, at=12))
    resumed, result = _fit(digits, probe=24, run_dir=tmp_path, resume=True)
    assert _same_weights(reference.student, resumed.student)
    assert [_probe_keys(r) for r in result.history] == [_probe_keys(r) for r in ref_result.history]


def test_probe_needs_a_teacher_and_a_validation_set(digits):
    with pytest.raises(ValueError, match="train.probe=8 scores agreement with one teacher"):
        _fit(digits, epochs=1, probe=8, teacher=False)
    trainer = Trainer(
        create_model("resnet8", 10, 1),
        Subset(digits.train, range(64)),
        teacher=create_model("resnet8", 10, 1),
        method="kd",
        train=TrainConfig(epochs=1, probe=8),
        progress=False,
    )
    with pytest.raises(ValueError, match="train.probe=8 draws from the validation set"):
        trainer.fit()


def test_retention_curves_draw_several_runs():
    history = [
        {"epoch": e, "probe_agree_C": 0.5 + e / 10, "probe_agree_I": e / 10, "probe_aoa": 0.6,
         "probe_cka/layer1": 0.4, "probe_cka/layer2": None}
        for e in (1, 2, 3)
    ]  # fmt: skip
    fig = retention_curves({"kd": history, "control": history}, title="retention")
    agree_ax, _, cka_ax = fig.axes[:3]
    assert len(agree_ax.get_lines()) == 4 and len(cka_ax.get_lines()) == 4
    assert list(agree_ax.get_lines()[1].get_ydata()) == pytest.approx([0.1, 0.2, 0.3])
