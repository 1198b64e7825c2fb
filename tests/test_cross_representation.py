"""Cross-representation distillation on FSDD: a log-mel teacher, an m5 student on the waveforms of
the same recordings, the teacher read from its cache by example index."""

import csv
import json

import pytest
import torch
import yaml
from typer.testing import CliRunner

from _subsets import real_subset
from kdscope.api import run
from kdscope.cli import app
from kdscope.config import DataConfig, build_config
from kdscope.data import load_data
from kdscope.data.registry import load_teacher_view
from kdscope.metrics import evaluate
from kdscope.models import create_model
from kdscope.train import Trainer, load_model
from kdscope.train.cache import TeacherCache
from kdscope.train.probe import Probe


@pytest.fixture(scope="module")
def setting(tmp_path_factory):
    root = tmp_path_factory.mktemp("cross")
    data = {
        "name": "fsdd",
        "data_dir": str(real_subset("fsdd", root)),
        "train_size": 60,
        "batch_size": 30,
    }
    base = {"out_dir": str(root / "runs"), "train": {"epochs": 1, "device": "cpu"}}
    teacher = run(
        build_config(base | {"name": "teacher", "data": data, "student": {"name": "resnet8"}}),
        progress=False,
    )
    return base, data, teacher


def _views(data: dict):
    cfg = DataConfig.model_validate(data)
    return load_data(cfg), load_data(cfg.model_copy(update={"options": {"input": "waveform"}}))


@pytest.mark.parametrize("method", ["kd", "dkd", "random_control"])
def test_waveform_student_learns_from_the_log_mel_teacher(setting, method):
    base, data, teacher = setting
    cfg = build_config(
        base
        | {
            "name": method,
            "data": data | {"options": {"input": "waveform"}},
            "student": {"name": "m5"},
            "teacher": {"name": "resnet8", "checkpoint": str(teacher.run_dir)},
            "method": {"name": method},
        }
    )
    result = run(cfg, progress=False)
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["cache"] == "memory"
    # The teacher was measured on its own representation: as in its own run.
    assert summary["teacher_test_acc"] == pytest.approx(teacher.test_acc)
    assert summary["teacher_val_acc"] == pytest.approx(teacher.fit.best_val_acc)
    assert torch.isfinite(torch.tensor(result.fit.history[-1]["loss"]))


def test_the_cache_holds_the_teachers_log_mel_outputs_by_index(setting):
    _, data, teacher_run = setting
    logmel, wave = _views(data)
    assert wave.train.files == logmel.train.files and wave.view == "waveform"
    teacher = load_model(teacher_run.run_dir).eval()
    cache = TeacherCache.build(teacher, logmel.train, [])
    idx = torch.tensor([5, 0, 17])
    x, _, _ = logmel.train.__getitems__(idx.tolist())
    with torch.no_grad():
        assert torch.allclose(cache.lookup(idx, torch.device("cpu"))[0], teacher(x), atol=1e-5)


def test_the_probe_reads_the_teachers_view(setting):
    """train.probe on a cross-representation run: the teacher's probe logits are its outputs on
    its own (log-mel) view of the probe examples, the student's inputs their waveforms."""
    base, data, teacher_run = setting
    logmel, wave = _views(data)
    teacher = load_model(teacher_run.run_dir).eval()
    student = create_model("m5", 10, 1)
    probe = Probe(
        teacher, student, wave.val, 4, 0, device=torch.device("cpu"), teacher_set=logmel.val
    )
    (chunk,) = probe.chunks
    x = logmel.val.__getitems__(probe.indices.tolist())[0]
    with torch.no_grad():
        assert torch.allclose(chunk.teacher_logits, teacher(x), atol=1e-5)
    assert chunk.x.shape[1:] == wave.val[0][0].shape
    cfg = base | {
        "name": "kd-probe",
        "data": data | {"options": {"input": "waveform"}},
        "student": {"name": "m5"},
        "teacher": {"name": "resnet8", "checkpoint": str(teacher_run.run_dir)},
        "method": {"name": "kd"},
    }
    cfg["train"] = cfg["train"] | {"probe": 4}
    result = run(build_config(cfg), progress=False)
    assert 0.0 <= result.fit.history[-1]["probe_agree_all"] <= 1.0


def test_a_teacher_of_other_mel_bands_reads_its_own_spectrograms(setting, tmp_path):
    """A 32-band, 20 ms-hop teacher of a default (64 x 101) log-mel student: the same view name,
    another input size; the teacher is given its own spectrograms, never the student's."""
    base, data, _ = setting
    coarse = data | {"options": {"mels": 32, "hop_ms": 20}}
    teacher = run(
        build_config(base | {"name": "coarse-teacher", "data": coarse,
                             "student": {"name": "resnet8"}}),
        progress=False,
    )  # fmt: skip
    cfg = DataConfig.model_validate(data)
    student_bundle = load_data(cfg)
    recorded = {"name": "fsdd", "options": {"mels": 32, "hop_ms": 20}}
    view = load_teacher_view(cfg, recorded, student_bundle)
    assert view.image_size == (32, 51) and student_bundle.image_size == (64, 101)
    assert load_teacher_view(cfg, {"name": "fsdd", "options": {}}, student_bundle) is None
    result = run(
        build_config(
            base
            | {
                "name": "kd-coarse",
                "data": data,
                "student": {"name": "resnet8"},
                "teacher": {"name": "resnet8", "checkpoint": str(teacher.run_dir)},
                "method": {"name": "kd"},
            }
        ),
        progress=False,
    )
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["teacher_test_acc"] == pytest.approx(teacher.test_acc)
    saved = evaluate(
        load_model(teacher.run_dir), load_model(result.run_dir), student_bundle.test,
        teacher_data=view.test,
    )  # fmt: skip
    assert saved.agreement["student"].all.teacher_accuracy == pytest.approx(teacher.test_acc)


def test_unpaired_views_and_feature_methods_are_refused(setting):
    _, data, teacher_run = setting
    logmel, wave = _views(data)
    other = load_data(DataConfig.model_validate(data | {"seed": 1}))
    student = create_model("m5", 10, 1)
    teacher = load_model(teacher_run.run_dir)
    with pytest.raises(ValueError, match="same order"):
        Trainer(
            student,
            wave.train,
            wave.val,
            teacher=teacher,
            method="kd",
            teacher_view=(other.train, other.val),
        )
    with pytest.raises(ValueError, match="teacher features"):
        Trainer(
            student,
            wave.train,
            wave.val,
            teacher=teacher,
            method="fitnet",
            teacher_view=(logmel.train, logmel.val),
        )


def test_evaluation_pairs_the_teachers_view_with_the_students(setting):
    base, data, teacher_run = setting
    logmel, wave = _views(data)
    student = run(
        build_config(
            base
            | {
                "name": "kd-eval",
                "data": data | {"options": {"input": "waveform"}},
                "student": {"name": "m5"},
                "teacher": {"name": "resnet8", "checkpoint": str(teacher_run.run_dir)},
                "method": {"name": "kd"},
            }
        ),
        progress=False,
    )
    teacher = load_model(teacher_run.run_dir)
    result = evaluate(teacher, load_model(student.run_dir), wave.test, teacher_data=logmel.test)
    assert result.agreement["student"].all.teacher_accuracy == pytest.approx(teacher_run.test_acc)
    assert result.agreement["student"].all.student_accuracy == pytest.approx(student.test_acc)
    assert 0.0 <= result.krs["student"].krs <= 1.0
    cli = CliRunner().invoke(
        app, ["evaluate", "--teacher", str(teacher_run.run_dir), "--student", str(student.run_dir)]
    )
    assert cli.exit_code == 0, cli.output
    saved = json.loads((student.run_dir / "eval.json").read_text())["agreement"]["student"]
    assert saved["all"]["teacher_accuracy"] == pytest.approx(teacher_run.test_acc)
    with pytest.raises(ValueError, match="not the same examples"):
        evaluate(
            teacher, load_model(student.run_dir), wave.test, teacher_data=_shuffled(logmel.test)
        )


def _shuffled(split):
    return torch.utils.data.Subset(split, list(range(len(split)))[::-1])


def test_a_cross_representation_study_trains_and_evaluates_every_arm(setting, tmp_path):
    _, data, teacher_run = setting
    study = {
        "name": "cross",
        "out_dir": str(tmp_path),
        "data": data | {"options": {"input": "waveform"}},
        "train": {"epochs": 1, "threads": 1, "device": "cpu"},
        "pairs": [{"teacher": "resnet8", "student": "m5", "teacher_run": str(teacher_run.run_dir)}],
        "seeds": [0],
        "arms": {"kd": True, "control": True, "random_control": True},
        "evaluation": {"test_size": 40},
        "analyses": ["functional"],
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    result = CliRunner().invoke(app, ["study", str(path)])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader((tmp_path / "cross" / "results.csv").open()))
    assert {r["arm"] for r in rows} == {"kd", "control", "random_control"}
    # The teacher read its log-mel view: its accuracy on the 40 test recordings, in every row.
    assert len({r["teacher_accuracy"] for r in rows}) == 1
