"""Evaluator: one pass equals the function forms; C handling; JSON; bad input."""

import json

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from kdscope.features import FeatureTap, UnknownLayerError
from kdscope.metrics import (
    MinibatchCKA,
    ZeroVarianceError,
    agreement,
    calibration_constant,
    evaluate,
    output_agreement,
)
from kdscope.models import ModelInfo, set_info


class Tiny(nn.Module):
    def __init__(self, width: int, seed: int, classes: int = 3):
        super().__init__()
        torch.manual_seed(seed)
        self.conv1 = nn.Conv2d(1, width, 3, padding=1)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv2d(width, width, 3, stride=2, padding=1)
        self.act2 = nn.ReLU()
        self.fc = nn.Linear(width, classes)
        set_info(self, ModelInfo(stages=("act1", "act2")))

    def forward(self, x):
        return self.fc(self.act2(self.conv2(self.act1(self.conv1(x)))).mean((2, 3)))


def _data(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 8, 8, generator=g)
    y = torch.arange(n) % 3
    return TensorDataset(x, y, torch.arange(n))


def _collect(model, loader, layers):
    logits, feats = [], {name: [] for name in layers}
    with torch.no_grad(), FeatureTap(model, layers, detach=True) as tap:
        for x, *_ in loader:
            logits.append(model(x))
            for name in layers:
                feats[name].append(tap[name])
    return torch.cat(logits), feats


def test_one_pass_matches_function_forms():
    teacher, student = Tiny(8, 0), Tiny(4, 1)
    loader = DataLoader(_data(70), batch_size=16)  # last batch of 6
    calib = DataLoader(_data(30, seed=1), batch_size=10)
    result = evaluate(teacher, student, loader, calibration=calib)

    t_logits, t_feats = _collect(teacher, loader, ["act1", "act2"])
    s_logits, s_feats = _collect(student, loader, ["act1", "act2"])
    labels = torch.arange(70) % 3
    expected = agreement(t_logits, s_logits, labels).to_dict()
    got = result.agreement["student"].to_dict()
    for split in ("all", "teacher_correct", "teacher_incorrect"):
        assert got[split] == pytest.approx(expected[split], abs=1e-12)
    c = calibration_constant(*(_collect(m, calib, [])[0] for m in (teacher, student)))
    assert result.calibration["c"] == pytest.approx(c, abs=1e-12)
    assert result.calibration["source"] == "calibration split, n = 30"
    krs = result.krs["student"]
    assert krs.aoa == pytest.approx(output_agreement(t_logits, s_logits, c), abs=1e-12)
    for layer in ("act1", "act2"):
        mb = MinibatchCKA()
        for t, s in zip(t_feats[layer], s_feats[layer], strict=True):
            mb.update(s, t)
        assert krs.per_layer[f"{layer}<->{layer}"] == pytest.approx(mb.compute(), abs=1e-12)
    assert krs.krs == pytest.approx(0.3 * krs.fss + 0.7 * krs.aoa)
    assert result.n == 70 and result.cka_skipped_examples == 0
    assert result.layers == [("act1", "act1"), ("act2", "act2")]
    assert "batches of 16" in result.estimators["fss_cka"]


def test_teacher_against_itself_and_mode_restored():
    teacher = Tiny(6, 0)
    teacher.train()
    result = evaluate(teacher, teacher, _data(40), batch_size=20)
    assert result.krs["student"].krs == pytest.approx(1.0)
    assert result.agreement["student"].all.top1_agreement == 1.0
    assert result.calibration["source"].startswith("evaluation set")
    assert teacher.training


def test_base_fss_rs_json_and_table(tmp_path):
    teacher, student, base = Tiny(8, 0), Tiny(4, 1), Tiny(4, 2)
    emb = torch.randn(3, 5, generator=torch.Generator().manual_seed(0))
    result = evaluate(
        teacher,
        student,
        _data(64),
        base=base,
        metrics=("agreement", "krs", "fss", "rs"),
        embeddings=emb,
        batch_size=32,
        c=0.25,
    )
    assert set(result.krs) == set(result.agreement) == {"student", "base"}
    assert result.krs["base"].c == result.krs["student"].c == 0.25
    assert set(result.fss) == {"act1", "act2"} and result.fss["act1"].batches == 2
    assert set(result.rs) == {"teacher", "student", "base"}
    path = tmp_path / "eval.json"
    result.save_json(path)
    loaded = json.loads(path.read_text())
    assert (
        loaded["krs"]["base"]["per_layer"]["act2<->act2"]
        == result.krs["base"].per_layer["act2<->act2"]
    )
    assert loaded["calibration"] == {"c": 0.25, "source": "given", "n": None}
    table = result.to_table()
    assert "KRS" in table and "base" in table and "FSS student~base act1" in table


def test_shared_c_from_evaluation_set_is_the_largest_kl():
    teacher, student, base = Tiny(8, 0), Tiny(4, 1), Tiny(4, 2)
    data = _data(40)
    result = evaluate(teacher, student, data, base=base, metrics=("krs",))
    loader = DataLoader(data, batch_size=256)
    t_logits = _collect(teacher, loader, [])[0]
    cs = [calibration_constant(t_logits, _collect(m, loader, [])[0]) for m in (student, base)]
    assert result.calibration["c"] == pytest.approx(max(cs), abs=1e-12)
    assert result.agreement == {}


def test_default_layers_from_zoo_models():
    models = pytest.importorskip("kdscope.models")
    teacher = models.create_model("resnet14", num_classes=3, in_channels=1)
    student = models.create_model("resnet8", num_classes=3, in_channels=1)
    result = evaluate(teacher, student, _data(12), metrics=("krs",), batch_size=12)
    assert result.layers == [("layer1", "layer1"), ("layer2", "layer2"), ("layer3", "layer3")]


def test_small_last_batch_and_single_class_batches_are_counted():
    teacher, student = Tiny(8, 0), Tiny(4, 1)
    x = _data(42).tensors[0]
    y = torch.cat([torch.zeros(20, dtype=torch.long), torch.arange(22) % 3])
    loader = DataLoader(TensorDataset(x, y), batch_size=20)  # one-class batch, mixed, then 2 left
    result = evaluate(
        teacher, student, loader, metrics=("krs", "rs"), embeddings=torch.eye(3), c=1.0
    )
    assert result.cka_skipped_examples == 2
    assert result.rs["student"]["act1"].skipped_batches == 2
    assert result.rs["student"]["act1"].batches == 1


def test_bad_input():
    teacher, student = Tiny(8, 0), Tiny(4, 1)
    data = _data(16)
    with pytest.raises(ValueError, match="unknown metrics \\['cka'\\]; accepted: agreement"):
        evaluate(teacher, student, data, metrics=("cka",))
    with pytest.raises(ValueError, match="pass base="):
        evaluate(teacher, student, data, metrics=("fss",))
    with pytest.raises(ValueError, match="class_names="):
        evaluate(teacher, student, data, metrics=("rs",))
    with pytest.raises(UnknownLayerError, match="'act3'.*act2"):
        evaluate(teacher, student, data, layers=[("act3", "act2")])
    broken = Tiny(4, 1)
    with torch.no_grad():
        broken.conv2.weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="student layer 'act2' has .* NaN or inf"):
        evaluate(teacher, broken, data)
    dead = Tiny(4, 1)
    with torch.no_grad():
        dead.conv2.weight.zero_()
        dead.conv2.bias.zero_()
    with pytest.raises(ZeroVarianceError, match="student act2 / teacher act2"):
        evaluate(teacher, dead, data, c=1.0)
    with pytest.raises(ValueError, match="empty"):
        evaluate(teacher, student, TensorDataset(torch.zeros(0, 1, 8, 8), torch.zeros(0)))
