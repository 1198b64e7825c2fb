"""Nothing lost, nothing silently wrong: locked run directories, merged evaluations, resumes that
refuse a changed config and continue bitwise for every random method, studies that retrain
edited cells, safe checkpoints, and one clear sentence for every bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from torch.utils.data import TensorDataset
from typer.testing import CliRunner

from _interrupt import InterruptAt
from kdscope import api
from kdscope.cli import app
from kdscope.config import ConfigError, DataConfig, TrainConfig, build_config
from kdscope.data import get_augment, load_data
from kdscope.evaluation import evaluate_runs, explain_runs
from kdscope.methods import Method, Needs, create_method
from kdscope.models import create_model
from kdscope.train import (
    CheckpointError,
    LoopState,
    NonFiniteLossError,
    RunDirectory,
    Trainer,
    read_checkpoint,
)
from kdscope.train.checkpoint import save_training_state, write_checkpoint
from kdscope.train.run_dir import RunLockedError, resume_conflicts

runner = CliRunner()
SMALL = {"train_size": 200, "batch_size": 50}


def cfg(tmp_path, name="r", **fields):
    base = {
        "name": name,
        "out_dir": str(tmp_path),
        "data": {"name": "digits", **SMALL},
        "student": {"name": "resnet8"},
        "train": {"epochs": 1, "threads": 1},
    }
    for key, value in fields.items():
        section, _, leaf = key.partition("__")
        if leaf:
            base.setdefault(section, {})[leaf] = value
        else:
            base[section] = value
    return build_config(base)


def _cli(*args):
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, result.output


def _process(*args):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return [sys.executable, "-m", "kdscope.cli", *map(str, args)], env


def _same(a, b) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


# ---- one run, one directory -------------------------------------------------------------------


def test_a_second_process_cannot_train_into_a_locked_run_directory(tmp_path):
    args = ["train", "--model", "resnet8", "--data", "digits", "--epochs", 50, "--name",
            "same", "--out", tmp_path, "--set", "data.batch_size=16", "--set",
            "train.threads=1"]  # fmt: skip
    cmd, env = _process(*args)
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    lock = tmp_path / "same" / "run.lock"
    deadline = time.time() + 600  # a loaded shared machine is slow; a hang still fails
    while not lock.exists():
        assert first.poll() is None and time.time() < deadline
        time.sleep(0.05)
    second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert second.returncode == 2
    assert f"is in use by process {first.pid}" in second.stdout
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=60) == 130
    assert not lock.exists()  # released on the way out


def test_a_dead_processs_lock_is_taken_over_and_a_live_one_is_not(tmp_path):
    run = RunDirectory(tmp_path / "r")
    dead = subprocess.Popen(["true"])
    dead.wait()
    run.path.mkdir()
    run.lock_file.write_text(json.dumps({"pid": dead.pid, "host": os.uname().nodename,
                                         "started": 0}))  # fmt: skip
    with run:
        assert json.loads(run.lock_file.read_text())["pid"] == os.getpid()
        with pytest.raises(RunLockedError, match=f"in use by process {os.getpid()}"):
            RunDirectory(tmp_path / "r").lock()
    assert not run.lock_file.exists()


def test_a_directory_that_holds_a_run_is_not_started_again(tmp_path):
    api.run(cfg(tmp_path), progress=False)
    with pytest.raises(ConfigError, match="already holds a run"):
        api.run(cfg(tmp_path), progress=False)
    (tmp_path / "r" / "checkpoints" / "last.pt").unlink()  # killed before its first epoch ended
    with pytest.raises(ConfigError, match="already holds a run"):
        api.run(cfg(tmp_path), progress=False)


# ---- resume -------------------------------------------------------------------------------------


def test_resume_refuses_a_config_that_changes_the_result_and_lets_epochs_grow(tmp_path):
    two = {"epochs": 2, "threads": 1}
    api.run(cfg(tmp_path, train=two), progress=False)
    for change, field in [
        ({"optim": {"lr": 0.2}}, "optim.lr: 0.05 -> 0.2"),
        ({"train": two | {"seed": 3}}, "train.seed: 0 -> 3"),
        ({"data": {"name": "digits", **SMALL, "train_size": 150}}, "data.train_size: 200 -> 150"),
        ({"train": {"epochs": 1, "threads": 1}}, "train.epochs: 1 is fewer than the 2 already"),
    ]:
        with pytest.raises(CheckpointError) as err:
            api.run(cfg(tmp_path, **({"train": two} | change)), resume=True, progress=False)
        assert field in str(err.value) and "Cannot resume" in str(err.value)
    grown = api.run(cfg(tmp_path, train={"epochs": 3, "threads": 2}), resume=True, progress=False)
    assert grown.summary()["epochs"] == 3
    lines = (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2, 3]
    assert "epochs: 3" in (tmp_path / "r" / "config.yaml").read_text()


def test_resume_may_switch_between_exact_cache_modes_but_not_to_the_view_bank():
    assert resume_conflicts({"train": {"cache": "off"}}, {"train": {"cache": "memory"}}, 1) == []
    for a, b in [("off", "views"), ("views", "memory")]:
        problems = resume_conflicts({"train": {"cache": a}}, {"train": {"cache": b}}, 1)
        assert problems == [f"train.cache: {a!r} -> {b!r}"]


def test_a_run_of_an_older_kdscope_resumes_when_only_new_fields_were_added(tmp_path):
    api.run(cfg(tmp_path, train={"epochs": 1, "threads": 1}), progress=False)
    last = tmp_path / "r" / "checkpoints" / "last.pt"
    ckpt = read_checkpoint(last)
    del ckpt["config"]["train"]["probe"]  # a field this kdscope has and that one did not
    write_checkpoint(ckpt, last)
    grown = api.run(cfg(tmp_path, train={"epochs": 2, "threads": 1}), resume=True, progress=False)
    assert grown.summary()["epochs"] == 2
    ckpt["config"]["train"]["probe"] = 8  # the same field at another value is still a change
    write_checkpoint(ckpt, last)
    with pytest.raises(CheckpointError, match="train.probe: 8 -> 0"):
        api.run(cfg(tmp_path, train={"epochs": 3, "threads": 1}), resume=True, progress=False)


@pytest.fixture(scope="module")
def digits():
    return load_data("digits", train_size=256)


def _fit(digits, method, params, augment=None, run_dir=None, resume=False, train_set=None):
    torch.manual_seed(0)
    teacher, student = create_model("resnet8", 10, 1).eval(), create_model("resnet8", 10, 1)
    trainer = Trainer(
        student,
        train_set or digits.train,
        digits.val,
        teacher=teacher,
        method=create_method(method, **params),
        augment=get_augment(augment) if augment else None,
        data=DataConfig(batch_size=32),
        train=TrainConfig(epochs=2),
        run_dir=run_dir,
        progress=False,
    )
    return trainer, trainer.fit(resume=resume)


@pytest.mark.parametrize(
    ("method", "params", "augment"),
    [
        ("crd", {"nce_k": 64}, None),  # negatives drawn each step, memory banks
        ("crd", {"nce_k": 64}, "standard"),  # and augmentation with the teacher run live
        ("random_control", {}, None),  # fresh Gaussian targets each step
        ("random_control", {"mode": "permute"}, None),  # a permutation drawn at bind, a bank
        ("uet", {}, None),  # binomial MC-dropout draws
        ("gkd", {}, None),  # random head dropout
        ("dml", {}, None),  # peers initialised from their own stream
    ],
)
def test_interrupted_and_resumed_runs_of_random_methods_end_bitwise_equal(
    digits, tmp_path, method, params, augment
):
    reference, _ = _fit(digits, method, params, augment)
    with pytest.raises(KeyboardInterrupt):
        _fit(digits, method, params, augment, tmp_path, train_set=InterruptAt(digits.train, 12))
    assert read_checkpoint(tmp_path / "checkpoints" / "last.pt")["step"] > 0  # mid-epoch
    resumed, result = _fit(digits, method, params, augment, tmp_path, resume=True)
    assert _same(reference.student.state_dict(), resumed.student.state_dict())
    assert _same(reference.method.state_dict(), resumed.method.state_dict())
    # the resumed epoch's throughput counts this session's images over this session's time
    assert result.history[-1]["images_per_s"] < 1e5


def test_a_killed_crd_run_with_augmentation_resumes_to_the_same_weights(tmp_path):
    teacher = api.run(cfg(tmp_path, "t"), progress=False).run_dir
    args = ["distill", "--teacher", teacher, "--student", "resnet8", "--method", "crd",
            "--data", "digits", "--epochs", 3, "--out", tmp_path, "--set", "data.train_size=300",
            "--set", "data.batch_size=20", "--set", "data.augment=standard",
            "--set", "method.params.nce_k=64", "--set", "train.threads=1"]  # fmt: skip
    cmd, env = _process(*args, "--name", "full")
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    cmd, env = _process(*args, "--name", "killed")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = tmp_path / "killed" / "metrics.jsonl"
    deadline = time.time() + 600  # a loaded shared machine is slow; a hang still fails
    while not (metrics.exists() and metrics.read_text().count("\n") >= 1):
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    cmd, env = _process(*args, "--name", "killed", "--resume")
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    a, b = (read_checkpoint(tmp_path / n / "checkpoints" / "last.pt") for n in ("full", "killed"))
    assert _same(a["model"], b["model"]) and _same(a["method"], b["method"])


# ---- results that must not be silently wrong ----------------------------------------------------


def test_without_a_validation_set_the_last_epoch_is_the_result(tmp_path):
    result = api.run(cfg(tmp_path, data={"name": "digits", "val_fraction": 0.0, **SMALL},
                         train={"epochs": 2, "threads": 1}), progress=False)  # fmt: skip
    summary = result.summary()
    assert summary["tested_checkpoint"] == "last" and summary["best_val_acc"] is None
    assert not (tmp_path / "r" / "checkpoints" / "best.pt").exists()
    last = api.load_model(tmp_path / "r", "last")
    assert result.test_acc == api.task_score(last, load_data("digits").test)


def test_labels_a_model_cannot_predict_are_refused(digits):
    x, y = digits.train.tensors()
    for labels, error, words in [
        (torch.where(y == 3, 10, y), ValueError, "label 10, outside the model's classes 0..9"),
        (torch.full_like(y, -1), ValueError, "label -1"),
        (y.float(), TypeError, "integer class indices, got torch.float32"),
    ]:
        student = create_model("resnet8", 10, 1)
        with pytest.raises(error, match=words):
            api.distill(None, student, TensorDataset(x, labels), method="none", epochs=1,
                        progress=False)  # fmt: skip
    bad_val = TensorDataset(*digits.val.tensors()[:1], torch.full((len(digits.val),), 12))
    with pytest.raises(ValueError, match="label 12"):
        api.distill(None, create_model("resnet8", 10, 1), TensorDataset(x, y), bad_val,
                    method="none", epochs=1, progress=False)  # fmt: skip


class _Explodes(Method):
    def forward(self, out):
        return {"boom": out.student_logits.sum() * float("nan")}


def test_a_nan_without_a_checkpoint_does_not_cite_one(digits, tmp_path):
    student = create_model("resnet8", 10, 1)
    with pytest.raises(NonFiniteLossError, match="no checkpoint was written before it"):
        api.distill(None, student, digits.train, method=_Explodes(), epochs=1, progress=False)
    with pytest.raises(NonFiniteLossError) as err:
        api.distill(None, student, digits.train, method=_Explodes(), epochs=1, progress=False,
                    run_dir=tmp_path)  # fmt: skip
    assert "last.pt" not in str(err.value)


def test_evaluate_merges_metrics_and_records_their_inputs(tmp_path):
    teacher = api.run(cfg(tmp_path, "t"), progress=False).run_dir
    student = api.run(cfg(tmp_path, "s", train={"epochs": 1, "threads": 1, "seed": 1}),
                      progress=False).run_dir  # fmt: skip
    evaluate_runs(teacher, student, metrics=["krs"])
    evaluate_runs(teacher, student, metrics=["agreement"], split="val")
    saved = json.loads((student / "eval.json").read_text())
    assert saved["krs"]["student"]["krs"] is not None and saved["agreement"]["student"]
    assert saved["metrics"] == ["agreement", "krs"]
    assert (
        saved["inputs"]["krs"]["split"] == "test" and saved["inputs"]["agreement"]["split"] == "val"
    )
    assert saved["inputs"]["krs"]["teacher"] == str(teacher)


def test_inputs_that_cannot_be_compared_are_refused(tmp_path):
    student = api.run(cfg(tmp_path, "s"), progress=False).run_dir
    other = api.run(cfg(tmp_path, "o", student={"name": "resnet14"}), progress=False).run_dir
    with pytest.raises(ValueError, match="the base must have the student's architecture"):
        explain_runs(student, other, num_images=4)
    rgb = create_model("resnet8", 10, 3)
    parts = {"model": rgb, "method": create_method("none"),
             "optimizer": torch.optim.SGD(rgb.parameters(), lr=0.1),
             "scaler": torch.amp.GradScaler("cuda", enabled=False)}  # fmt: skip
    save_training_state(tmp_path / "rgb.pt", parts, LoopState())
    with pytest.raises(ValueError, match="the teacher takes 3 input channel"):
        evaluate_runs(tmp_path / "rgb.pt", student)


# ---- studies ------------------------------------------------------------------------------------


def test_an_edited_study_retrains_its_changed_cells_and_keeps_the_old_runs(tmp_path):
    from kdscope.study import StudyConfig, run_study

    study = {
        "name": "edit", "out_dir": str(tmp_path), "data": {"name": "digits", **SMALL},
        "train": {"epochs": 1, "threads": 1}, "pairs": [{"teacher": "resnet8",
        "student": "resnet8"}], "seeds": [0], "evaluation": {"test_size": 100},
    }  # fmt: skip
    first = run_study(StudyConfig.model_validate(study), log=lambda m: None)
    assert len(first.trained) == 3
    logs = []
    edited = run_study(StudyConfig.model_validate(study | {"optim": {"lr": 0.02}}), log=logs.append)
    assert len(edited.trained) == 3 and not edited.skipped  # every cell changed
    assert logs[0].startswith("3 run(s) to train")  # the estimate counts the changed cells
    runs = tmp_path / "edit" / "runs"
    kept = sorted(p.name for p in runs.iterdir() if "@" in p.name)
    assert len(kept) == 3 and any("optim.lr" in m for m in logs)
    prints = {r["run"]: r["fingerprint"] for r in edited.rows}
    assert all(prints[r["run"]] != r["fingerprint"] for r in first.rows)
    again = run_study(StudyConfig.model_validate(study | {"optim": {"lr": 0.02}}), log=print)
    assert not again.trained and len(again.skipped) == 3
    # A cell that a live process trains into (a second study process) is not moved from under it.
    busy = RunDirectory(runs / edited.rows[-1]["run"])
    busy.lock()
    with pytest.raises(RunLockedError, match="is in use by process"):
        run_study(StudyConfig.model_validate(study | {"optim": {"lr": 0.03}}), log=lambda m: None)
    assert busy.lock_file.exists()
    busy.unlock()


# ---- checkpoints ------------------------------------------------------------------------------


def test_a_damaged_checkpoint_is_refused_naming_the_file(tmp_path):
    run = api.run(cfg(tmp_path), progress=False).run_dir
    path = run / "checkpoints" / "last.pt"
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 2000] = bytes(b ^ 0xFF for b in data[middle : middle + 2000])
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=f"{path}.*corrupt"):
        read_checkpoint(path)
    with pytest.raises(CheckpointError, match="corrupt"):
        api.run(cfg(tmp_path), resume=True, progress=False)


class _Payload:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ['KD_MARKER']}",))


def test_loading_a_checkpoint_never_runs_its_code(tmp_path, monkeypatch):
    marker = tmp_path / "ran"
    monkeypatch.setenv("KD_MARKER", str(marker))
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "payload": _Payload()}, path)
    with pytest.raises(CheckpointError, match="does not load without being told to trust"):
        read_checkpoint(path)
    code, text = _cli("evaluate", "--teacher", path, "--student", path)
    assert code == 2 and "trust" in text
    assert not marker.exists()


# ---- one sentence, no traceback ------------------------------------------------------------------


def test_names_cannot_escape_their_folder(tmp_path):
    for name in ("../../x", "/abs", "a/b", ".."):
        with pytest.raises(ConfigError, match="is not a folder name"):
            cfg(tmp_path, name)
    from kdscope.study import StudyConfig

    with pytest.raises(ValueError, match="is not a folder name"):
        StudyConfig.model_validate({"name": "../../x", "pairs": [{"teacher": "a", "student": "b"}]})


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    (root / "broken.yaml").write_text("student:\n  name: [resnet8\n")
    (root / "afile").write_text("")
    images = root / "images" / "train"
    from PIL import Image

    for cls in ("a", "b"):
        (images / cls).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(images / cls / f"{i}.png")
    (images / "a" / "9.png").write_bytes(b"not a png")
    return root


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["train", "{root}/broken.yaml"], "is not valid YAML at line 3"),
        (["train", "--model", "resnet8", "--set", "optim.lr=[1,"], "is not valid YAML"),
        (["train", "--model", "resnet8", "--set", "student.kwargs.width=3"],
         "model 'resnet8' cannot be built with {'width': 3}"),
        (["train", "--model", "resnet8", "--set", "data.options.foo=1"],
         "dataset 'digits' has no option 'foo'"),
        (["models", "--input-size", 0], "Invalid value for '--input-size'"),
        (["train", "--model", "resnet8", "--out", "{root}/afile"], "is a file"),
        (["train", "--model", "resnet8", "--name", "../../x"], "is not a folder name"),
        (["train", "--model", "resnet8", "--data", "imagefolder", "--set",
          "data.data_dir={root}/images", "--set", "data.options.image_size=8"],
         "9.png cannot be read"),
        (["train", "--model", "resnet8", "--set", "method.name=kd"], "needs a teacher"),
        (["train", "--model", "resnet8", "--set", "method.name=at", "--set",
          "method.params.alpha=2"], "got unknown parameter(s) alpha"),
    ],
)  # fmt: skip
def test_bad_inputs_give_one_clear_sentence(bad_files, tmp_path, args, words):
    args = [str(a).format(root=bad_files) for a in args]
    if args[0] == "train" and "--out" not in args:
        args += ["--out", tmp_path, "--epochs", 1]
        args += [] if "--data" in args else ["--set", "data.train_size=100"]
    code, text = _cli(*args)
    assert code == 2, text
    assert words in text and "Traceback" not in text


def test_cuda_without_a_gpu_is_named(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    code, text = _cli("train", "--model", "resnet8", "--out", tmp_path, "--epochs", 1,
                      "--set", "train.device=cuda")  # fmt: skip
    assert code == 2 and "no CUDA GPU is available" in text


def test_mismatched_layer_lists_are_named(digits):
    student, teacher = create_model("resnet8", 10, 1), create_model("resnet8", 10, 1)
    method = create_method("at", student_layers=["layer1", "layer2"], teacher_layers=["layer3"])
    trainer = Trainer(student, digits.train, teacher=teacher, method=method, progress=False)
    with pytest.raises(ValueError, match="must pair one to one"):
        trainer.fit()


def test_debug_shows_the_traceback(tmp_path):
    result = runner.invoke(app, ["--debug", "train", "--model", "resnet8", "--set",
                                 "student.kwargs.width=3", "--out", str(tmp_path)])  # fmt: skip
    assert isinstance(result.exception, ValueError)


def test_a_method_without_a_teacher_for_needs(digits):
    class Wants(Method):
        def __init__(self):
            super().__init__(Needs(teacher_logits=True))

    with pytest.raises(ValueError, match="needs a teacher"):
        Trainer(create_model("resnet8", 10, 1), digits.train, method=Wants())
