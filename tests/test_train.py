import json
import sys

import pytest
import torch

from _interrupt import InterruptAt
from kdscope.config import DataConfig, OptimConfig, TrainConfig
from kdscope.methods import Method, Needs, create_method
from kdscope.models import create_model
from kdscope.train import CheckpointError, NonFiniteLossError, Trainer, read_checkpoint
from kdscope.train.cache import cache_mode


def _models(seed=0):
    torch.manual_seed(seed)
    teacher = create_model("resnet8", 10, 1).eval()
    student = create_model("resnet8", 10, 1)
    return teacher, student


def _fit(
    digits,
    run_dir=None,
    method="kd",
    epochs=2,
    resume=False,
    student=None,
    teacher=None,
    train_set=None,
    val_set=None,
    **cfg,
):
    t, s = _models()
    trainer = Trainer(
        student or s,
        train_set or digits.train,
        val_set or digits.val,
        teacher=teacher or t,
        method=create_method(method) if isinstance(method, str) else method,
        data=DataConfig(batch_size=32),
        train=TrainConfig(epochs=epochs, deterministic=True, **cfg),
        run_dir=run_dir,
        progress=False,
    )
    return trainer, trainer.fit(resume=resume)


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return all(torch.equal(sa[k], sb[k]) for k in sa)


def test_student_learns_and_logs_each_term(digits, tmp_path):
    trainer, result = _fit(digits, run_dir=tmp_path, epochs=3)
    assert len(result.history) == 3
    assert set(result.history[0]["terms"]) == {"ce", "kd"}
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    assert result.history[-1]["train_acc"] > 0.3
    assert result.cache == "memory"
    assert (tmp_path / "metrics.jsonl").read_text().count("\n") == 3
    assert (
        read_checkpoint(tmp_path / "checkpoints" / "best.pt")["best_val_acc"] == result.best_val_acc
    )


def test_teacher_cache_is_exact(digits, tmp_path):
    cached, _ = _fit(digits, cache="memory")
    uncached, _ = _fit(digits, cache="off")
    on_disk, _ = _fit(digits, cache="disk", run_dir=tmp_path)
    assert cached.cache is not None and uncached.cache is None
    assert _same_weights(cached.student, uncached.student)
    assert _same_weights(cached.student, on_disk.student)


def test_cache_refused_with_random_augmentation(digits):
    from kdscope.data import get_augment

    t, s = _models()
    trainer = Trainer(
        s,
        digits.train,
        teacher=t,
        method="kd",
        augment=get_augment("standard"),
        train=TrainConfig(epochs=1, cache="memory"),
        progress=False,
    )
    with pytest.raises(ValueError, match="deterministic inputs"):
        trainer.fit()


@pytest.mark.parametrize(
    ("wanted", "needed", "augmented", "expected"),
    [
        ("auto", True, False, "memory"),
        ("disk", True, False, "disk"),
        ("off", True, False, "off"),
        ("auto", False, False, "off"),  # method "none": nothing to cache
        ("memory", False, True, "off"),
        ("auto", True, True, "off"),  # random augmentation: cached outputs would not match
    ],
)
def test_cache_mode(wanted, needed, augmented, expected):
    assert cache_mode(wanted, needed=needed, augmented=augmented) == expected


def test_cache_mode_refuses_asked_cache_under_augmentation():
    with pytest.raises(ValueError, match="train.cache='disk' needs deterministic inputs"):
        cache_mode("disk", needed=True, augmented=True)


def test_ctrl_c_checkpoints_mid_epoch_and_resume_is_exact(digits, tmp_path):
    reference, _ = _fit(digits, epochs=2)
    with pytest.raises(KeyboardInterrupt):
        _fit(digits, run_dir=tmp_path, epochs=2, train_set=InterruptAt(digits.train, at=12))
    ckpt = read_checkpoint(tmp_path / "checkpoints" / "last.pt")
    # fetches: 1 for the teacher cache, 8 in epoch 1, so the 12th is epoch 2's third batch: the stop
    # lands before that batch is trained on, after 2 steps of epoch 2.
    assert (ckpt["epoch"], ckpt["step"]) == (1, 2)
    resumed, result = _fit(digits, run_dir=tmp_path, epochs=2, resume=True)
    assert _same_weights(reference.student, resumed.student)
    assert [r["epoch"] for r in result.history] == [1, 2]


def test_interrupt_during_validation_keeps_the_epochs_losses(digits, tmp_path, monkeypatch):
    reference, expected = _fit(digits, epochs=2)

    def interrupted(self):
        raise KeyboardInterrupt  # a second Ctrl-C, which stops at once

    with monkeypatch.context() as m:
        m.setattr(Trainer, "_val_acc", interrupted)
        with pytest.raises(KeyboardInterrupt):
            _fit(digits, run_dir=tmp_path, epochs=2)
    resumed, result = _fit(digits, run_dir=tmp_path, epochs=2, resume=True)
    assert _same_weights(reference.student, resumed.student)
    first, again = expected.history[0], result.history[0]
    assert again["loss"] == pytest.approx(first["loss"]) and again["loss"] > 0
    assert again["train_acc"] == pytest.approx(first["train_acc"])
    assert again["val_acc"] == pytest.approx(first["val_acc"])
    assert again["images_per_s"] is None  # nothing was trained in the resumed session
    assert result.history[1]["images_per_s"] > 0


class _Explodes(Method):
    needs = Needs(teacher=False)

    def forward(self, out):
        bad = out.epoch == 1 and out.step == 3
        return {"boom": out.student_logits.sum() * (float("nan") if bad else 0.0)}


def test_nan_loss_names_term_and_step_and_keeps_last_good_checkpoint(digits, tmp_path):
    with pytest.raises(NonFiniteLossError, match=r"'boom' became nan at epoch 2, step 3"):
        _fit(digits, run_dir=tmp_path, method=_Explodes(), epochs=2)
    assert read_checkpoint(tmp_path / "checkpoints" / "last.pt")["epoch"] == 1


def test_resume_refuses_corrupt_and_mismatched_checkpoints(digits, tmp_path):
    _fit(digits, run_dir=tmp_path, epochs=1, method="none")
    other = create_model("resnet14", 10, 1)
    with pytest.raises(CheckpointError, match="resnet8"):
        _fit(digits, run_dir=tmp_path, epochs=2, method="none", student=other, resume=True)
    (tmp_path / "checkpoints" / "last.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt"):
        _fit(digits, run_dir=tmp_path, epochs=2, method="none", resume=True)


def test_training_state_round_trip(tmp_path):
    from kdscope.train import LoopState
    from kdscope.train.checkpoint import restore_training_state, save_training_state

    def parts(seed):
        torch.manual_seed(seed)
        model = create_model("resnet8", 10, 1)
        method = create_method("kd")
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        model(torch.randn(4, 1, 8, 8)).sum().backward()
        optimizer.step()  # momentum buffers to carry
        return {
            "model": model,
            "method": method,
            "optimizer": optimizer,
            "scaler": torch.amp.GradScaler("cuda", enabled=False),
        }

    saved = parts(0)
    torch.manual_seed(123)
    save_training_state(
        tmp_path / "s.pt", saved, LoopState(epoch=3, step=7, history=[{"epoch": 3}])
    )
    after_save = torch.rand(3)
    fresh = parts(1)
    ckpt = restore_training_state(tmp_path / "s.pt", fresh)
    assert (ckpt["epoch"], ckpt["step"], ckpt["method_name"]) == (3, 7, "kd")
    assert _same_weights(fresh["model"], saved["model"])
    momentum = [o.state_dict()["state"] for o in (fresh["optimizer"], saved["optimizer"])]
    assert all(
        torch.equal(a["momentum_buffer"], momentum[1][k]["momentum_buffer"])
        for k, a in momentum[0].items()
    )
    assert torch.equal(torch.rand(3), after_save)  # the RNG continues where it was saved
    with pytest.raises(CheckpointError, match="written for student 'resnet8'"):
        other = parts(0) | {"model": create_model("resnet14", 10, 1)}
        restore_training_state(tmp_path / "s.pt", other)


def test_teacher_and_student_must_share_classes(digits):
    teacher = create_model("resnet8", 5, 1)
    with pytest.raises(ValueError, match="5 classes"):
        Trainer(create_model("resnet8", 10, 1), digits.train, teacher=teacher, method="kd")


def test_method_needing_teacher_without_one(digits):
    with pytest.raises(ValueError, match="needs a teacher"):
        Trainer(create_model("resnet8", 10, 1), digits.train, method="kd")


def test_several_teachers_reach_the_method_stacked(digits):
    seen = []

    class Probe(Method):
        def __init__(self):
            super().__init__(Needs(teacher_logits=True))

        def forward(self, out):
            seen.append(tuple(out.teacher_logits.shape))
            return {}

    torch.manual_seed(0)
    teachers = [create_model("resnet8", 10, 1).eval() for _ in range(3)]
    for cache in ("memory", "off"):
        seen.clear()
        trainer = Trainer(
            create_model("resnet8", 10, 1),
            digits.train,
            teacher=teachers,
            method=Probe(),
            data=DataConfig(batch_size=32),
            train=TrainConfig(epochs=1, cache=cache),
            progress=False,
        )
        trainer.fit()
        assert seen[0] == (3, 32, 10)


def test_multi_teacher_method_trains(digits):
    torch.manual_seed(0)
    teachers = [create_model("resnet8", 10, 1).eval() for _ in range(2)]
    trainer = Trainer(
        create_model("resnet8", 10, 1),
        digits.train,
        teacher=teachers,
        method="multi_teacher",
        data=DataConfig(batch_size=32),
        train=TrainConfig(epochs=1),
        progress=False,
    )
    result = trainer.fit()
    assert set(result.history[0]["terms"]) >= {"ce"} and len(result.history[0]["terms"]) >= 2


def test_fitnet_hint_stage_trains_without_labels(digits):
    method = create_method("fitnet", hint_epochs=1)
    trainer, result = _fit(digits, method=method, epochs=2, ce_weight=0.5)
    first, second = result.history
    hint_terms = sum(v for k, v in first["terms"].items() if k != "ce")
    assert first["loss"] == pytest.approx(hint_terms, rel=1e-5)  # CE weight 0 in the hint epoch
    later_terms = sum(v for k, v in second["terms"].items() if k != "ce")
    assert second["loss"] == pytest.approx(later_terms + 0.5 * second["terms"]["ce"], rel=1e-4)


def test_ddp_ranks_share_memory_banks(tmp_path, torchrun):
    """CRD's banks are per-example state outside DDP: every rank must write the global batch."""
    from pathlib import Path

    torchrun(Path(__file__).with_name("ddp_worker.py"), "crd", tmp_path)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    method = [r["method"] for r in ranks]
    for name in ("memory_s", "memory_t", "z_s", "z_t"):
        assert torch.equal(method[0][name], method[1][name]), name
    # every example of the epoch (200, sharded 100 + 100) was written on both ranks
    fresh = method[0]["memory_s"].norm(dim=1)
    assert torch.allclose(fresh, torch.ones(200), atol=1e-5)
    weights = [{k: v for k, v in r["student"].items() if "running" not in k} for r in ranks]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_early_stop_ends_on_a_validation_plateau_and_stays_stopped(digits, tmp_path):
    # A learning rate this small barely moves validation accuracy: no new best for 2 epochs.
    trainer = Trainer(
        create_model("resnet8", 10, 1),
        digits.train,
        digits.val,
        method="none",
        data=DataConfig(batch_size=32),
        optim=OptimConfig(lr=1e-6),
        train=TrainConfig(epochs=20, early_stop=2, early_stop_delta=0.5),
        run_dir=tmp_path,
        progress=False,
    )
    result = trainer.fit()
    assert result.stopped_early and result.best_epoch == 1 and result.epochs == 3
    assert len(result.history) == 3
    again = trainer.fit(resume=True)  # a stopped run trains no further
    assert again.epochs == 3 and len(again.history) == 3
    with pytest.raises(ValueError, match="early_stop needs a validation set"):
        Trainer(
            create_model("resnet8", 10, 1),
            digits.train,
            method="none",
            train=TrainConfig(epochs=2, early_stop=1),
            progress=False,
        ).fit()


def test_tensorboard_log_holds_the_metrics_jsonl_scalars(digits, tmp_path):
    pytest.importorskip("tensorboard", reason="the optional tensorboard extra is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _fit(digits, run_dir=tmp_path, epochs=2, log="tensorboard", probe=16)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"loss", "terms/ce", "terms/kd", "lr", "val_acc", "probe_agree_I"} <= tags
    assert any(tag.startswith("probe_cka/") for tag in tags)
    for tag in tags:
        section, _, name = tag.partition("/")
        want = [r[tag] if tag in r else r[section][name] for r in records]
        got = events.Scalars(tag)
        assert [e.step for e in got] == [1, 2]
        assert [e.value for e in got] == pytest.approx(want, rel=1e-6)


def test_tensorboard_log_says_what_it_needs(digits, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="train.log=tensorboard needs a run directory"):
        _fit(digits, log="tensorboard")
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if not installed
    with pytest.raises(ImportError, match=r"pip install 'kdscope\[tensorboard\]'"):
        _fit(digits, run_dir=tmp_path, log="tensorboard")
