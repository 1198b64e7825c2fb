"""`kdscope demo` end to end (one epoch per model, on digits) and the run report it builds on."""

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from kdscope import demo as demo_module
from kdscope.analysis.run_report import run_sections, write_run_report
from kdscope.cli import app
from kdscope.data import DatasetNotFoundError

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"


def test_demo_trains_evaluates_explains_and_reports(tmp_path):
    args = ["demo", "--data", "digits", "--epochs", "1", "--out", str(tmp_path)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    demo = tmp_path / "demo"
    rows = json.loads((demo / "summary.json").read_text())
    assert [r["model"] for r in rows] == ["teacher", "baseline", "kd"]
    assert [r["arch"] for r in rows] == ["resnet20", "resnet8", "resnet8"]
    assert all(0.0 <= r["krs"] <= 1.0 for r in rows[1:])
    assert (demo / "kd" / "figures" / "explanations.png").exists()
    html = (demo / "report.html").read_text()
    assert "What moved" in html and "data:image/png;base64" in html and "demo-rs" in html
    # the answer opens the page: the forest plot, then the sentences the terminal printed last
    assert html.index('id="demo-forest"') < html.index('id="summary"')
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines[-1].startswith("report: ") and lines[-1].split()[1].endswith("report.html")
    assert lines[-4].startswith("KD made the student") or lines[-4].startswith("KD did not")
    assert lines[-3].startswith("Its agreement with the teacher")
    for sentence in lines[-4:-1]:
        assert sentence in html.replace("&#x27;", "'")
    # a second run reuses the finished stages instead of training again
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0 and again.output.count("already trained") == 3

    titles = [s.title for s in run_sections(demo / "kd")]
    assert titles == ["Training", "Result", "Transfer metrics", "Explanations", "Configuration"]
    run_html = write_run_report(demo / "kd").read_text()
    assert run_html.count("<table") >= 3
    assert str(tmp_path) not in run_html and "checkpoint: ../teacher" in run_html
    assert str(tmp_path) not in html


def test_demo_uses_fashion_mnist_when_installed_and_digits_otherwise(monkeypatch):
    def missing(*args, **kwargs):
        raise DatasetNotFoundError("Fashion-MNIST not found")

    try:
        demo_module.find_files(None, download=False)
        assert demo_module.demo_setup().data == "fashion-mnist"
    except DatasetNotFoundError:
        pass
    monkeypatch.setattr(demo_module, "find_files", missing)
    assert demo_module.demo_setup().data == "digits"
    assert demo_module.demo_setup("fashion-mnist").train_size == 3000
    with pytest.raises(ValueError, match="accepted: \\['digits', 'fashion-mnist'\\]"):
        demo_module.demo_setup("cifar10")


def test_demo_config_is_the_fashion_mnist_kd_student():
    cfg = yaml.safe_load(CONFIG.read_text())
    setup = demo_module.SETUPS["fashion-mnist"]
    assert cfg["data"]["name"] == setup.data and cfg["data"]["train_size"] == setup.train_size
    assert cfg["data"]["val_fraction"] == setup.val_fraction
    assert cfg["teacher"]["name"] == setup.teacher and cfg["student"]["name"] == setup.student
    assert cfg["train"]["epochs"] == setup.epochs and cfg["optim"]["lr"] == setup.lr
    assert cfg["train"]["threads"] == setup.threads
