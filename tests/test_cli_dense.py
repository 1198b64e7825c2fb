"""Every CLI command end to end on a small fmnist-scenes subset, for segmentation (FCN) and for
detection (FCOS): train, distill, evaluate, explain, study, report. Tiny models, one epoch, 32 x 32
canvases; the scores are only checked to be scores."""

import json

import pytest
import yaml
from typer.testing import CliRunner

from kdscope.cli import app

runner = CliRunner()
MODELS = {
    "segmentation": ("fcn_resnet14", "fcn_resnet8", "kd"),
    "detection": ("fcos_resnet14", "fcos_resnet8", "fitnet"),
}
# One layer keeps explain short; the defaults (every stage) are what evaluate's CKA covers.
EXPLAINED = {"segmentation": "backbone.layer3", "detection": "detector.backbone.body.layer3"}


def _data(task: str, cache) -> dict:
    return {
        "name": "fmnist-scenes",
        "batch_size": 20,
        "eval_batch_size": 20,
        "options": {
            "task": task,
            "canvas": 32,
            "scale": [0.5, 1.0],
            "num_train": 40,
            "num_test": 16,
            "cache_dir": str(cache),
        },
    }


def _sets(task: str, cache) -> list[str]:
    flat = {f"data.{k}": v for k, v in _data(task, cache).items() if k != "options"}
    flat |= {f"data.options.{k}": v for k, v in _data(task, cache)["options"].items()}
    flat |= {"train.device": "cpu", "train.threads": 1}
    return [a for k, v in flat.items() for a in ("--set", f"{k}={json.dumps(v)}")]


def _invoke(*args):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module", params=list(MODELS))
def runs(request, tmp_path_factory):
    """Teacher, base and distilled student runs of one task."""
    task = request.param
    teacher, student, method = MODELS[task]
    out = tmp_path_factory.mktemp(task)
    cache = tmp_path_factory.getbasetemp() / "scenes-cache"
    common = ["--data", "fmnist-scenes", "--epochs", 1, "--out", out, *_sets(task, cache)]
    text = _invoke("train", "--model", teacher, "--name", "teacher", *common)
    score = "mean iou" if task == "segmentation" else "map"
    assert f"test {score}" in text
    # The base trains under the dense augmentation (masks and boxes move with the image).
    _invoke("train", "--model", student, "--name", "base", *common, "--set", "data.augment=dense")
    _invoke(
        "distill", "--teacher", out / "teacher", "--student", student, "--method", method,
        "--name", "kd", *common,
    )  # fmt: skip
    return task, out, cache


def test_train_and_distill_record_the_task_score(runs):
    task, out, _ = runs
    for name in ("teacher", "base", "kd"):
        summary = json.loads((out / name / "summary.json").read_text())
        assert summary["score"] == ("mean_iou" if task == "segmentation" else "map")
        assert 0.0 <= summary["test_acc"] <= 1.0
    assert json.loads((out / "kd" / "summary.json").read_text())["teacher_test_acc"] is not None


def test_evaluate_writes_the_task_figures_and_krs(runs):
    task, out, _ = runs
    text = _invoke(
        "evaluate", "--teacher", out / "teacher", "--student", out / "kd", "--base", out / "base"
    )
    assert f"task = {task}" in text
    result = json.loads((out / "kd" / "eval.json").read_text())
    assert result["task"] == task
    krs = result["krs"]["student"]
    assert (krs["alpha"], krs["beta"]) == (0.7, 0.3)
    assert 0.0 <= krs["krs"] <= 1.0
    agreement = result["agreement"]["student"]
    if task == "segmentation":
        assert krs["aoa"] == pytest.approx(agreement["mask_agreement"])
        assert len(agreement["student"]["per_class_iou"]) == 11
    else:
        assert {"map", "map_50"} <= set(agreement["student"])
        assert {"teacher_correct", "teacher_incorrect"} <= set(agreement["boxes"])
        # CKA on the FPN levels as well as the backbone stages.
        assert any("fpn" in pair for pair in krs["per_layer"])


def test_explain_writes_figures(runs):
    task, out, _ = runs
    _invoke(
        "explain", "--student", out / "kd", "--base", out / "base", "--num-images", 4,
        "--layers", EXPLAINED[task], "--out", out / "explain",
    )  # fmt: skip
    assert (out / "explain" / "relevance.json").is_file()
    assert (out / "explain" / "figures" / "explanations.png").is_file()


def test_study_and_report(runs, tmp_path):
    task, out, cache = runs
    teacher, student, method = MODELS[task]
    config = {
        "name": f"tiny-{task}",
        "out_dir": str(tmp_path),
        "data": _data(task, cache),
        "train": {"epochs": 1, "threads": 1, "device": "cpu"},
        "pairs": [{"teacher": teacher, "student": student, "teacher_run": str(out / "teacher")}],
        "methods": [{"name": method}],
        "seeds": [0],
        "arms": {"kd": True, "control": True},
        "analyses": ["krs"],
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(config))
    text = _invoke("study", path)
    score = "mean iou" if task == "segmentation" else "map"
    assert f"test {score} " in text and "test accuracy" not in text, text
    study_dir = tmp_path / f"tiny-{task}"
    assert (study_dir / "report.html").is_file()
    (study_dir / "report.html").unlink()
    _invoke("report", study_dir)
    assert (study_dir / "report.html").is_file()
