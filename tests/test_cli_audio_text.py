"""Every CLI command end to end on small real subsets of FSDD (log-mel spectrograms) and SST-2.

The subsets are the workspace's own files (tests/_subsets.py), so each command reads real data
in a fraction of a second.
"""

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from _subsets import SST2_LINES, real_subset
from kdscope.cli import app
from kdscope.data.registry import dataset_dir

runner = CliRunner()
# Tiny models: the CIFAR ResNet8 on 1 x 64 x 101 spectrograms, a narrow TextCNN on token ids.
MODELS = {
    "fsdd": ("resnet8", []),
    "sst2": (
        "textcnn",
        ["--set", "student.kwargs.embed_dim=16", "--set", "student.kwargs.filters=8"],
    ),
}


def _invoke(*args):
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, result.output


@pytest.fixture(scope="module", params=["fsdd", "sst2"])
def runs(request, tmp_path_factory):
    """A teacher, a base (the student's architecture on labels alone) and a KD student, each one
    epoch on the subset of the dataset."""
    name = request.param
    root = tmp_path_factory.mktemp(name)
    common = [
        "--data",
        name,
        "--epochs",
        1,
        "--out",
        root / "runs",
        "--set",
        f"data.data_dir={real_subset(name, root)}",
        "--set",
        "data.batch_size=30",
        "--set",
        "data.train_size=60",
        "--set",
        "train.device=cpu",
    ]
    model, kwargs = MODELS[name]
    out = root / "runs"
    for run, seed in (("teacher", 1), ("base", 2)):
        code, text = _invoke(
            "train",
            "--model",
            model,
            "--name",
            run,
            "--set",
            f"train.seed={seed}",
            *common,
            *kwargs,
        )
        assert code == 0, text
    code, text = _invoke(
        "distill",
        "--teacher",
        out / "teacher",
        "--student",
        model,
        "--method",
        "kd",
        "--name",
        "kd",
        *common,
        *kwargs,
    )
    assert code == 0, text
    return name, out, common


def test_train_and_distill_use_the_teacher_cache(runs):
    name, out, _ = runs
    summary = json.loads((out / "kd" / "summary.json").read_text())
    assert summary["cache"] == "memory" and summary["epochs"] == 1
    assert 0.0 <= summary["test_acc"] <= 1.0 and summary["teacher_test_acc"] is not None
    config = yaml.safe_load((out / "kd" / "config.yaml").read_text())
    assert config["data"]["name"] == name


def test_evaluate_measures_agreement_and_krs_per_example(runs):
    name, out, _ = runs
    code, text = _invoke(
        "evaluate", "--teacher", out / "teacher", "--student", out / "kd", "--base", out / "base"
    )
    assert code == 0, text
    result = json.loads((out / "kd" / "eval.json").read_text())
    assert result["inputs"]["krs"]["data"] == name
    n = {"fsdd": 150, "sst2": SST2_LINES["dev.tsv"]}[name]
    assert result["n"] == n
    krs = result["krs"]["student"]
    assert 0.0 <= krs["krs"] <= 1.0
    assert len(krs["per_layer"]) == 2 if name == "sst2" else 3  # CKA at every stage pair
    assert 0.0 <= result["agreement"]["student"]["all"]["top1_agreement"] <= 1.0


def test_explain_draws_spectrogram_or_token_maps(runs):
    name, out, _ = runs
    code, text = _invoke(
        "explain",
        "--student",
        out / "kd",
        "--base",
        out / "base",
        "--teacher",
        out / "teacher",
        "--num-images",
        4,
        "--batches",
        1,
        "--batch-size",
        16,
    )
    assert code == 0, text
    report = json.loads((out / "kd" / "relevance.json").read_text())
    figures = {Path(f).name for f in report["figures"]}
    if name == "fsdd":
        assert {"explanations.png", "explanations_teacher.png"} <= figures
        assert report["base"]["layers"]
    else:
        assert figures == {"tokens.png", "tokens_teacher.png"}
        maps = report["base"]["token_relevance"]
        assert len(maps) == 2 * 4  # (Grad-CAM x 2, UniCAM x 2) x the 2 stages
        for per_sentence in maps.values():
            assert [len(m) for m in per_sentence] == [len(s) for s in report["sentences"]]
            assert all(0.0 <= v <= 1.0 for m in per_sentence for v in m)
    for figure in report["figures"]:
        assert Path(figure).stat().st_size > 0


def test_study_and_report(runs, tmp_path):
    name, out, common = runs
    data_dir = common[common.index("--set") + 1].split("=", 1)[1]
    model = MODELS[name][0]
    study = {
        "name": f"{name}-tiny",
        "out_dir": str(tmp_path),
        "data": {"name": name, "data_dir": data_dir, "batch_size": 30, "train_size": 60},
        "train": {"epochs": 1, "threads": 1, "device": "cpu"},
        "pairs": [{"teacher": model, "student": model, "teacher_run": str(out / "teacher")}],
        "seeds": [0],
        "arms": {"kd": True, "control": True},
        "evaluation": {"test_size": 40},
        "analyses": ["functional"],
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    code, text = _invoke("study", path)
    assert code == 0, text
    study_dir = tmp_path / f"{name}-tiny"
    assert (study_dir / "report.html").is_file()
    (study_dir / "report.html").unlink()
    code, text = _invoke("report", study_dir)
    assert code == 0, text
    assert (study_dir / "report.html").is_file()


@pytest.mark.parametrize(
    ("data", "fits", "misfits"),
    [("fsdd", ["resnet8", "vgg8"], ["m5", "bilstm"])],
)
def test_models_lists_what_fits_the_data(data, fits, misfits):
    if not dataset_dir(data, None).exists():
        pytest.skip(f"{data} not found (set KDSCOPE_DATA)")
    code, text = _invoke("models", "--data", data)
    assert code == 0, text
    # The table's first column (body rows start with a light vertical bar).
    names = {line.split("\u2502")[1].strip() for line in text.splitlines() if line[:1] == "\u2502"}
    assert set(fits) <= names and not set(misfits) & names


def test_models_table_shows_the_fits():
    code, text = _invoke("models", "--in-channels", 1, "--input-size", 8)
    assert code == 0, text
    assert "waveform" in text and "m5" in text and "tokens" in text and "bilstm" in text
