"""Schemes that are sequences of runs: TA chain, born-again, data-free, quantized student."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from torch import nn

from kdscope.config import ConfigError, DataConfig, TrainConfig, build_config
from kdscope.data import collate
from kdscope.models import create_model
from kdscope.pipelines import (
    SyntheticSet,
    bn_statistics_loss,
    born_again,
    data_free,
    deep_inversion,
    model_bytes,
    prepare_qat,
    quantized_student,
    teacher_assistant_chain,
    total_variation,
)
from kdscope.train import Trainer, read_checkpoint


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # Tiny models on a shared 2-core machine: one intra-op thread is many times faster than two.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def teacher(digits):
    torch.manual_seed(0)
    model = create_model("resnet8", 10, 1)
    Trainer(
        model,
        digits.train,
        digits.val,
        method="none",
        data=DataConfig(batch_size=32),
        train=TrainConfig(epochs=4),
        progress=False,
    ).fit()
    return model.eval()


def _config(tmp_path, name, **fields):
    base = {
        "name": name,
        "out_dir": str(tmp_path),
        "student": {"name": "resnet8"},
        "method": {"name": "kd"},
        "data": {"train_size": 400, "batch_size": 32},
        "train": {"epochs": 3},
    }
    return build_config({**base, **fields})


# ---- teacher-assistant chain and born-again ----------------------------------------------------
def test_teacher_assistant_chain_trains_and_keeps_every_checkpoint(tmp_path):
    cfg = _config(tmp_path, "ta", teacher={"name": "resnet14"})
    result = teacher_assistant_chain(cfg, ["resnet8"], progress=False)
    names = [s.run_dir.name for s in result.stages]
    assert names == ["0-teacher-resnet14", "1-assistant-resnet8", "2-student-resnet8"]
    for i, stage in enumerate(result.stages):
        ckpts = stage.run_dir / "checkpoints"
        assert (ckpts / "best.pt").exists() and (ckpts / "last.pt").exists()
        if i:  # each distilled stage was taught by the stage before it
            taught_by = json.loads((ckpts / "teacher.json").read_text())["checkpoint"]
            assert taught_by == str(result.stages[i - 1].run_dir)
            assert stage.teacher_test_acc == pytest.approx(result.stages[i - 1].test_acc)
    assert (
        read_checkpoint(result.stages[0].run_dir / "checkpoints" / "best.pt")["model_spec"]["name"]
        == "resnet14"
    )
    assert result.final.test_acc > 0.6
    listed = json.loads((tmp_path / "ta" / "pipeline.json").read_text())
    assert [s["run_dir"] for s in listed["stages"]] == [str(s.run_dir) for s in result.stages]


def test_chain_starts_from_a_given_teacher_checkpoint(tmp_path):
    first = teacher_assistant_chain(
        _config(tmp_path, "a", teacher={"name": "resnet8"}, train={"epochs": 1}), [], progress=False
    )
    teacher_dir = first.stages[0].run_dir
    cfg = _config(
        tmp_path,
        "b",
        teacher={"name": "resnet8", "checkpoint": str(teacher_dir)},
        train={"epochs": 1},
    )
    again = teacher_assistant_chain(cfg, [], progress=False)
    assert [s.run_dir.name for s in again.stages] == ["0-student-resnet8"]


def test_pipelines_refuse_a_method_without_teacher(tmp_path):
    cfg = _config(tmp_path, "x", teacher={"name": "resnet8"}, method={"name": "none"})
    with pytest.raises(ConfigError, match="uses a teacher"):
        teacher_assistant_chain(cfg, [], progress=False)
    with pytest.raises(ConfigError, match="uses a teacher"):
        born_again(cfg, progress=False)


def test_born_again_generations_teach_the_next(tmp_path):
    cfg = _config(
        tmp_path, "ban", method={"name": "kd", "params": {"alpha": 1.0, "temperature": 1.0}}
    )
    result = born_again(cfg, generations=2, progress=False)
    names = [s.run_dir.name for s in result.stages]
    assert names == ["0-teacher-resnet8", "1-gen1-resnet8", "2-gen2-resnet8"]
    seeds = [
        yaml.safe_load((s.run_dir / "config.yaml").read_text())["train"]["seed"]
        for s in result.stages
    ]
    assert seeds == [0, 1, 2]
    for prev, stage in zip(result.stages, result.stages[1:], strict=False):
        assert stage.teacher_test_acc == pytest.approx(prev.test_acc)
        assert stage.test_acc > 0.6
    with pytest.raises(ValueError, match="generations"):
        born_again(cfg, generations=0, progress=False)


# ---- data-free ---------------------------------------------------------------------------------
def test_bn_statistics_loss_is_zero_exactly_at_the_running_statistics():
    x = torch.randn(16, 3, 4, 4) * 2 + 1
    bn = nn.BatchNorm2d(3)
    bn.running_mean = x.mean((0, 2, 3))
    bn.running_var = x.var((0, 2, 3), unbiased=False)
    assert bn_statistics_loss([x], [bn]).item() == pytest.approx(0.0, abs=1e-5)
    shifted = x + torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)
    assert bn_statistics_loss([shifted], [bn]).item() == pytest.approx(1.0, rel=1e-5)


def test_total_variation_of_constant_and_striped_images():
    assert total_variation(torch.full((1, 1, 4, 4), 3.0)).item() == 0.0
    stripes = torch.zeros(1, 1, 4, 4)
    stripes[..., 1::2] = 1.0  # columns 0,1,0,1: every horizontal and diagonal step changes by 1
    expected = 12**0.5 + 0.0 + 9**0.5 + 9**0.5
    assert total_variation(stripes).item() == pytest.approx(expected)


# jitter 0: a 1-pixel roll of an 8x8 digit already changes what the teacher sees
INVERSION = {"steps": 100, "lr": 0.1, "bn_weight": 1.0, "jitter": 0}


def test_deep_inversion_images_cover_every_class(teacher):
    grads = [p.requires_grad for p in teacher.parameters()]
    images, targets = deep_inversion(teacher, 40, (1, 8, 8), batch_size=40, **INVERSION)
    assert images.shape == (40, 1, 8, 8) and torch.equal(targets, torch.arange(40) % 10)
    with torch.no_grad():
        predicted = teacher(images).argmax(1)
    assert set(predicted.tolist()) == set(range(10))
    assert (predicted == targets).float().mean() > 0.8
    assert [p.requires_grad for p in teacher.parameters()] == grads
    with pytest.raises(ValueError, match="BatchNorm"):
        deep_inversion(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), 4, (1, 8, 8), steps=1)


def test_data_free_distills_without_real_data(teacher, digits, tmp_path):
    torch.manual_seed(1)
    student = create_model("resnet8", 10, 1)
    result = data_free(
        teacher,
        student,
        tmp_path,
        image_shape=(1, 8, 8),
        num_images=80,
        inversion={**INVERSION, "batch_size": 40},
        test_set=digits.test,
        epochs=8,
        batch_size=16,
        progress=False,
        seed=0,
    )
    assert result.classes_covered == 10 and result.teacher_agreement > 0.8
    assert result.test_acc > 0.3, result.summary()  # chance is 0.1; real data is not seen
    assert {p.name for p in tmp_path.iterdir()} >= {"synthetic.pt", "distill", "summary.json"}
    assert json.loads((tmp_path / "summary.json").read_text())["test_acc"] == result.test_acc


def test_synthetic_set_serves_kdscope_batches():
    ds = SyntheticSet(torch.randn(5, 1, 2, 2), torch.tensor([0, 1, 2, 3, 4]))
    x, y, i = collate(ds.__getitems__([4, 1]))
    assert torch.equal(y, torch.tensor([4, 1])) and torch.equal(i, torch.tensor([4, 1]))
    assert ds[2][1:] == (2, 2)
    with pytest.raises(ValueError, match="labels"):
        SyntheticSet(torch.randn(3, 1), torch.zeros(2))


# ---- quantized student -------------------------------------------------------------------------
def test_quantized_student_has_int8_weights_and_keeps_its_accuracy(teacher, digits, tmp_path):
    torch.manual_seed(1)
    student = create_model("resnet8", 10, 1)
    result = quantized_student(
        teacher,
        student,
        digits.train,
        tmp_path,
        val=digits.val,
        test_set=digits.test,
        epochs=3,
        batch_size=32,
        progress=False,
    )
    weighted = [m for m in result.model.modules() if callable(getattr(m, "weight", None))]
    assert len(weighted) == 10  # 7 conv (3 fused with ReLU), 2 shortcut convs, 1 linear
    assert all(m.weight().dtype == torch.qint8 for m in weighted)
    assert not any(isinstance(m, (nn.Conv2d, nn.Linear)) for m in result.model.modules())
    assert result.int8_bytes < result.float_bytes / 2.5
    assert result.float_bytes == model_bytes(student)
    assert result.int8_test_acc > 0.3 and abs(result.int8_test_acc - result.qat_test_acc) < 0.1
    assert (tmp_path / "int8.pt").exists()
    assert (tmp_path / "qat" / "checkpoints" / "last.pt").exists()


def test_qat_observers_move_in_training_only(digits):
    x = collate([digits.train[i] for i in range(8)])[0]
    qat = prepare_qat(create_model("resnet8", 10, 1), x)
    scale = next(b for n, b in qat.named_buffers() if n.endswith("scale"))
    qat.eval()(x * 5)
    before = scale.clone()
    qat.eval()(x * 50)
    assert torch.equal(scale, before)
    qat.train()(x * 50)
    assert not torch.equal(scale, before)
    with pytest.raises(ValueError, match="backend"):
        prepare_qat(create_model("resnet8", 10, 1), x, backend="tpu")
