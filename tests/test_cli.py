"""End-to-end CLI runs on the bundled digits data."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from typer.testing import CliRunner

from kdscope.cli import app
from kdscope.train import read_checkpoint

runner = CliRunner()
SMALL = ["--set", "data.train_size=200", "--set", "data.batch_size=50"]


def _invoke(*args):
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    code, text = _invoke(
        "train",
        "--model",
        "resnet8",
        "--data",
        "digits",
        "--epochs",
        2,
        "--name",
        "teacher",
        "--out",
        out,
        *SMALL,
    )
    assert code == 0, text
    return out / "teacher"


def test_train_writes_the_run_directory(teacher_run):
    assert {p.name for p in teacher_run.iterdir()} >= {
        "config.yaml",
        "metrics.jsonl",
        "checkpoints",
        "summary.json",
    }
    assert {p.name for p in (teacher_run / "checkpoints").iterdir()} >= {"last.pt", "best.pt"}
    summary = json.loads((teacher_run / "summary.json").read_text())
    assert 0.0 <= summary["test_acc"] <= 1.0 and summary["teacher_test_acc"] is None


def test_distill_from_a_teacher_run(teacher_run, tmp_path):
    code, text = _invoke(
        "distill",
        "--teacher",
        teacher_run,
        "--student",
        "resnet8",
        "--method",
        "kd",
        "--data",
        "digits",
        "--epochs",
        1,
        "--name",
        "kd",
        "--out",
        tmp_path,
        *SMALL,
    )
    assert code == 0, text
    summary = json.loads((tmp_path / "kd" / "summary.json").read_text())
    assert summary["cache"] == "memory" and summary["teacher_test_acc"] is not None


def test_config_file_and_overrides(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("name: fromfile\nstudent: {name: mlp}\ndata: {name: digits}\n")
    code, text = _invoke(
        "train", cfg, "--set", f"out_dir={tmp_path}", "--set", "train.epochs=1", *SMALL
    )
    assert code == 0, text
    assert (tmp_path / "fromfile" / "checkpoints" / "best.pt").exists()


def test_refuses_to_overwrite_a_run(teacher_run):
    code, text = _invoke(
        "train",
        "--model",
        "resnet8",
        "--data",
        "digits",
        "--epochs",
        1,
        "--name",
        "teacher",
        "--out",
        teacher_run.parent,
        *SMALL,
    )
    assert code == 2 and "--resume" in text


def test_unknown_names_are_listed_with_accepted_values(tmp_path):
    code, text = _invoke("train", "--model", "resnet9", "--data", "digitz", "--out", tmp_path)
    assert code == 2
    assert "student.name" in text and "resnet8" in text and "data.name" in text and "digits" in text


def test_bad_field_type_names_the_field(tmp_path):
    code, text = _invoke(
        "train", "--model", "resnet8", "--set", "train.epochs=lots", "--out", tmp_path
    )
    assert code == 2 and "train.epochs" in text


def test_distill_without_teacher_is_refused(tmp_path):
    code, text = _invoke("distill", "--student", "resnet8", "--out", tmp_path)
    assert code == 2 and "teacher" in text


def test_models_and_methods_listings():
    code, text = _invoke("models", "--in-channels", 1, "--input-size", 8)
    assert code == 0 and "resnet56" in text and "wrn_40_2" in text
    code, text = _invoke("methods")
    assert code == 0 and "kd" in text and "Hinton" in text
    code, text = _invoke("methods", "kd")
    assert code == 0 and "temperature" in text and "a real number > 0" in text
    code, text = _invoke("methods", "kdd")
    assert code == 2 and "Accepted" in text


def _kdscope(*args, env_extra=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    return [sys.executable, "-m", "kdscope.cli", *map(str, args)], env


def test_killed_run_resumes_to_the_same_weights(tmp_path):
    args = [
        "train",
        "--model",
        "resnet8",
        "--data",
        "digits",
        "--epochs",
        3,
        "--set",
        "train.deterministic=true",
        "--set",
        "train.threads=1",
        "--set",
        "data.train_size=300",
        "--set",
        "data.batch_size=20",
    ]
    cmd, env = _kdscope(*args, "--name", "full", "--out", tmp_path)
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    cmd, env = _kdscope(*args, "--name", "killed", "--out", tmp_path)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = tmp_path / "killed" / "metrics.jsonl"
    deadline = time.time() + 600  # a loaded shared machine is slow; a hang still fails
    while not (metrics.exists() and metrics.read_text().count("\n") >= 1):
        assert proc.poll() is None and time.time() < deadline, "run ended before it could be killed"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    cmd, env = _kdscope(*args, "--name", "killed", "--out", tmp_path, "--resume")
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    a = read_checkpoint(tmp_path / "full" / "checkpoints" / "last.pt")["model"]
    b = read_checkpoint(tmp_path / "killed" / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    lines = (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2, 3]


def test_sigterm_checkpoints_and_exits_130(tmp_path):
    cmd, env = _kdscope(
        "train",
        "--model",
        "resnet8",
        "--data",
        "digits",
        "--epochs",
        50,
        "--name",
        "term",
        "--out",
        tmp_path,
        "--set",
        "data.batch_size=16",
    )
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    metrics = tmp_path / "term" / "metrics.jsonl"
    deadline = time.time() + 600  # a loaded shared machine is slow; a hang still fails
    while not (metrics.exists() and metrics.read_text().count("\n") >= 1):
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, out
    assert "--resume" in out
    ckpt = read_checkpoint(tmp_path / "term" / "checkpoints" / "last.pt")
    assert ckpt["epoch"] >= 1


def test_ddp_two_processes_on_cpu(tmp_path, torchrun):
    torchrun(
        "-m",
        "kdscope.cli",
        "train",
        "--model",
        "resnet8",
        "--data",
        "digits",
        "--epochs",
        2,
        "--name",
        "ddp",
        "--out",
        tmp_path,
        "--set",
        "data.train_size=200",
        "--set",
        "data.batch_size=25",
    )
    lines = (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2]  # rank 0 alone writes
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert summary["test_acc"] > 0.1


def test_evaluate_writes_eval_json(teacher_run, tmp_path):
    code, text = _invoke(
        "distill",
        "--teacher",
        teacher_run,
        "--student",
        "resnet8",
        "--method",
        "kd",
        "--data",
        "digits",
        "--epochs",
        1,
        "--name",
        "s",
        "--out",
        tmp_path,
        *SMALL,
    )
    assert code == 0, text
    code, text = _invoke(
        "evaluate",
        "--teacher",
        teacher_run,
        "--student",
        tmp_path / "s",
        "--base",
        teacher_run,
        "--metrics",
        "agreement,krs,fss",
    )
    assert code == 0, text
    assert "KRS" in text and "top-1 agreement" in text
    result = json.loads((tmp_path / "s" / "eval.json").read_text())
    assert 0.0 <= result["krs"]["student"]["krs"] <= 1.0
    assert result["krs"]["base"]["krs"] == pytest.approx(1.0)  # the base here is the teacher
    assert result["n"] == 359  # the digits test split


def test_evaluate_bad_split_and_missing_run(teacher_run, tmp_path):
    code, text = _invoke(
        "evaluate", "--teacher", teacher_run, "--student", teacher_run, "--split", "train"
    )
    assert code == 2 and "--split" in text
    code, text = _invoke("evaluate", "--teacher", teacher_run, "--student", tmp_path / "nope")
    assert code == 2 and "does not exist" in text


def test_explain_writes_figures_and_relevance(teacher_run, tmp_path):
    code, text = _invoke(
        "explain",
        "--student",
        teacher_run,
        "--base",
        teacher_run,
        "--num-images",
        8,
        "--layers",
        "layer3",
        "--out",
        tmp_path,
    )
    assert code == 0, text
    assert "relevance on ROAD-perturbed inputs" in text and "layer3" in text
    assert (tmp_path / "figures" / "explanations.png").stat().st_size > 10_000
    relevance = json.loads((tmp_path / "relevance.json").read_text())
    layer = relevance["base"]["layers"]["layer3|layer3"]
    # a model against itself: no unique features, so every UniCAM batch is empty
    assert layer["unicam_empty_batches"]
