from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import kdscope
from kdscope.api import IndexedDataset
from kdscope.config import check_names, load_config

CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_run_configs_are_valid(path):
    assert check_names(load_config(path)) == []


class Tiny(nn.Module):
    """A user's own module: no zoo spec, features at ``body.1``."""

    def __init__(self, width=16):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, width), nn.ReLU())
        self.classifier = nn.Linear(width, 10)
        self.feature_layers = ["body.2"]

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
        "explain",
    ]:
        assert callable(getattr(kdscope, name)), name


def test_run_measures_a_teacher_once_per_file(tmp_path, monkeypatch):
    import os

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
    t2 = api.run(cfg("t2", epochs=3), progress=False)
    passes = []
    measure = api.accuracy
    monkeypatch.setattr(api, "accuracy", lambda *a, **k: passes.append(1) or measure(*a, **k))
    first = api.run(cfg("s1", t1.run_dir), progress=False)
    second = api.run(cfg("s2", t1.run_dir), progress=False)
    other = api.run(cfg("s3", t2.run_dir), progress=False)
    assert len(passes) == 3 + 2  # each student, and each teacher once
    assert first.teacher_test_acc == second.teacher_test_acc == t1.test_acc
    assert other.teacher_test_acc == t2.test_acc
    best = t1.run_dir / "checkpoints" / "best.pt"
    os.utime(best, ns=(best.stat().st_atime_ns, best.stat().st_mtime_ns + 10**9))
    api.run(cfg("s4", t1.run_dir), progress=False)
    assert len(passes) == 5 + 2  # a rewritten teacher file is measured again
