"""The shared teacher cache (train.cache_dir): found by content, reused exactly, never partial."""

import json

import pytest
import torch

from kdscope.config import DataConfig, TrainConfig
from kdscope.methods import create_method
from kdscope.models import create_model
from kdscope.study.config import load_study
from kdscope.study.plan import expand
from kdscope.train import Trainer
from kdscope.train import cache as cache_module
from kdscope.train.cache_store import cache_key, load_or_fill


def _teacher(seed=0):
    torch.manual_seed(seed)
    return create_model("resnet8", 10, 1).eval()


def _key(teacher, dataset, layers=(), dtype=torch.float32, batch_size=64):
    return cache_key(teacher, dataset, list(layers), dtype=dtype, batch_size=batch_size,
                     autocast=False, device=torch.device("cpu"))  # fmt: skip


def _fit(digits, method="kd", seed=0, **train):
    torch.manual_seed(100 + seed)
    student = create_model("resnet8", 10, 1)
    trainer = Trainer(
        student,
        digits.train,
        digits.val,
        teacher=_teacher(),
        method=create_method(method),
        data=DataConfig(batch_size=32),
        train=TrainConfig(epochs=2, seed=seed, deterministic=True, **train),
        progress=False,
    )
    return trainer, trainer.fit()


def test_the_key_is_the_content_of_teacher_inputs_and_settings(digits):
    teacher = _teacher()
    key = _key(teacher, digits.train)
    assert key == _key(_teacher(), digits.train)  # the same weights, another module
    other = _teacher()
    with torch.no_grad():
        next(other.parameters()).view(-1)[0] += 1e-6
    assert _key(other, digits.train) != key
    assert _key(_teacher(1), digits.train) != key
    assert _key(teacher, digits.val) != key
    assert _key(teacher, torch.utils.data.Subset(digits.train, range(255))) != key
    assert _key(teacher, digits.train, layers=["layer1"]) != key
    assert _key(teacher, digits.train, dtype=torch.float16) != key
    assert _key(teacher, digits.train, batch_size=32) != key


def test_runs_share_one_fill_and_train_as_with_their_own(digits, tmp_path, monkeypatch):
    builds = []
    build = cache_module.TeacherCache.build
    monkeypatch.setattr(
        cache_module.TeacherCache,
        "build",
        classmethod(lambda cls, *a, **k: builds.append(k["where"]) or build(*a, **k)),
    )
    own, _ = _fit(digits)
    store = tmp_path / "teacher-cache"
    first, _ = _fit(digits, cache_dir=store)
    again, _ = _fit(digits, cache_dir=store)
    control, _ = _fit(digits, method="random_control", seed=1, cache_dir=store)
    assert builds == ["memory", "disk"]  # the run of its own, then one fill for three runs
    (entry,) = [p for p in store.iterdir()]
    manifest = json.loads((entry / "manifest.json").read_text())
    assert manifest["arrays"] == ["teacher_0.npy"] and len(manifest["key"]) == 64
    for trainer in (first, again):
        assert all(
            torch.equal(a, b)
            for a, b in zip(
                own.student.state_dict().values(), trainer.student.state_dict().values(),
                strict=True,
            )
        )  # fmt: skip
        assert isinstance(trainer.cache.logits, torch.Tensor)  # memory: loaded, not mapped
    assert torch.equal(control.cache.logits, own.cache.logits)
    disk, _ = _fit(digits, cache="disk", cache_dir=store)
    assert builds == ["memory", "disk"] and not isinstance(disk.cache.logits, torch.Tensor)
    fitnet, _ = _fit(digits, method="fitnet", cache_dir=store)
    assert builds[-1] == "disk" and len(list(store.iterdir())) == 2  # features: another entry


def test_a_partial_fill_is_never_read_and_a_wrong_entry_is_refused(digits, tmp_path):
    teacher = _teacher()
    key = _key(teacher, digits.train)
    store = tmp_path / "store"

    def crash(into):
        (into / "teacher_0.npy").write_bytes(b"partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        load_or_fill(store, key, crash, "memory", torch.device("cpu"), print)
    assert list(store.iterdir()) == []  # no entry, and the staging directory removed

    def fill(into):
        cache_module.TeacherCache.build(teacher, digits.train, [], where="disk", directory=into)

    arrays, reused = load_or_fill(store, key, fill, "memory", torch.device("cpu"), print)
    assert not reused and arrays[0].shape == (len(digits.train), 10)
    assert load_or_fill(store, key, crash, "memory", torch.device("cpu"), print)[1]
    manifest = store / key[:32] / "manifest.json"
    manifest.write_text(json.dumps({"key": "0" * 64, "arrays": ["teacher_0.npy"]}))
    with pytest.raises(ValueError, match="holds another cache"):
        load_or_fill(store, key, fill, "memory", torch.device("cpu"), print)


def test_a_fill_that_loses_the_race_reads_the_winners_entry(digits, tmp_path):
    teacher = _teacher()
    key = _key(teacher, digits.train)
    store = tmp_path / "store"

    def fill(into, *, winner=False):
        cache_module.TeacherCache.build(teacher, digits.train, [], where="disk", directory=into)
        if not winner:  # another run renames its entry into place during this one's fill
            load_or_fill(store, key, lambda d: fill(d, winner=True), "disk", torch.device("cpu"),
                         print)  # fmt: skip

    arrays, reused = load_or_fill(store, key, fill, "memory", torch.device("cpu"), print)
    assert not reused and arrays[0].shape == (len(digits.train), 10)
    assert [p.name for p in store.iterdir()] == [key[:32]]  # the loser's staging is gone


def test_a_study_shares_its_teacher_cache_without_changing_its_runs_identity(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text(
        "name: s\nout_dir: " + str(tmp_path) + "\ndata: {name: digits}\n"
        "pairs: [{teacher: resnet8, student: resnet8}]\nmethods: [{name: kd}]\nseeds: [0]\n"
    )
    plan = expand(load_study(path))
    dirs = {str(r.config.train.cache_dir) for r in plan.runs.values()}
    assert dirs == {str(tmp_path / "s" / "teacher-cache")}
    path.write_text(path.read_text() + f"train: {{cache_dir: {tmp_path / 'elsewhere'}}}\n")
    moved = expand(load_study(path))
    assert {r.fingerprint for r in moved.runs.values()} == {
        r.fingerprint for r in plan.runs.values()
    }
    assert {str(r.config.train.cache_dir) for r in moved.runs.values()} == {
        str(tmp_path / "elsewhere")
    }
