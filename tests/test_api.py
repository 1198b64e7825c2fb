from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import kdscope
from kdscope.api import IndexedDataset, check_config
from kdscope.config import build_config, load_config
from kdscope.models import ModelInfo, set_info

CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_run_configs_are_valid(path):
    assert check_config(load_config(path)) == []


class Tiny(nn.Module):
    """A user's own module: no zoo spec, features at ``body.1``."""

    def __init__(self, width=16):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, width), nn.ReLU())
        self.classifier = nn.Linear(width, 10)
        set_info(self, ModelInfo(stages=("body.2",)))

    def forward(self, x):
        return self.classifier(self.body(x))


def _user_data(digits):
    x, y = digits.train.tensors()
    return TensorDataset(x, y)


def test_distill_users_modules_and_dataloaders(digits, tmp_path):
    torch.manual_seed(0)
    teacher, student = Tiny(64), Tiny(8)
    train = DataLoader(_user_data(digits), batch_size=32, shuffle=True)
    kdscope.distill(None, teacher, train, method="none", epochs=3, progress=False)
    result = kdscope.distill(
        teacher,
        student,
        train,
        method="kd",
        epochs=3,
        progress=False,
        run_dir=tmp_path,
        optim={"lr": 0.1},
    )
    assert result.cache == "memory"
    assert result.history[-1]["train_acc"] > 0.5
    assert (tmp_path / "checkpoints" / "last.pt").exists()


def test_indexed_dataset_adds_indices(digits):
    ds = IndexedDataset(_user_data(digits))
    x, y, i = ds[5]
    assert i == 5 and x.shape == (1, 8, 8) and int(y) == int(digits.train[5][1])


def test_top_level_api_is_importable():
    for name in [
        "create_model",
        "load_data",
        "distill",
        "run",
        "FeatureTap",
        "Trainer",
        "load_model",
        "evaluate",
        "explain_student",
        "describe",
        "DistillStep",
    ]:
        assert callable(getattr(kdscope, name)), name


def test_run_measures_the_teacher_unless_its_accuracy_is_passed_in(tmp_path, monkeypatch):
    import kdscope.api as api
    from kdscope.config import RunConfig

    def cfg(name, teacher=None, epochs=1):
        return RunConfig.model_validate(
            {
                "name": name,
                "out_dir": str(tmp_path),
                "student": {"name": "mlp"},
                "teacher": {"name": "mlp", "checkpoint": str(teacher)} if teacher else None,
                "method": {"name": "kd" if teacher else "none"},
                "train": {"epochs": epochs},
            }
        )

    t1 = api.run(cfg("t1"), progress=False)
    passes = []
    measure = api.task_score
    monkeypatch.setattr(api, "task_score", lambda *a, **k: passes.append(1) or measure(*a, **k))
    first = api.run(cfg("s1", t1.run_dir), progress=False)
    assert len(passes) == 2  # the student, then the teacher
    assert first.teacher_test_acc == t1.test_acc
    given = api.run(cfg("s2", t1.run_dir), progress=False, teacher_test_acc=t1.test_acc)
    assert len(passes) == 3  # the student alone: whoever trained the teacher knows its accuracy
    assert given.teacher_test_acc == t1.test_acc


def test_check_config_lists_every_problem_at_once():
    cfg = build_config(
        {"student": {"name": "resnet9"}, "data": {"name": "digitz"}, "method": {"name": "kd"}}
    )
    problems = check_config(cfg)
    assert any(p.startswith("data.name") and "digits" in p for p in problems)
    assert any(p.startswith("student.name") and "resnet8" in p for p in problems)
    assert any(p.startswith("teacher") for p in problems)
