"""`kdscope demo` end to end (one epoch per model) and the run report it builds on."""

import json

from typer.testing import CliRunner

from kdscope.analysis.run_report import run_sections, write_run_report
from kdscope.cli import app


def test_demo_trains_evaluates_explains_and_reports(tmp_path):
    result = CliRunner().invoke(app, ["demo", "--epochs", "1", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    demo = tmp_path / "demo"
    rows = json.loads((demo / "summary.json").read_text())
    assert [r["model"] for r in rows] == ["teacher", "baseline", "kd"]
    assert all(0.0 <= r["krs"] <= 1.0 for r in rows[1:])
    assert (demo / "kd" / "figures" / "explanations.png").exists()
    html = (demo / "report.html").read_text()
    assert "What moved" in html and "data:image/png;base64" in html and "demo-rs" in html
    # a second run reuses the finished stages instead of training again
    again = CliRunner().invoke(app, ["demo", "--epochs", "1", "--out", str(tmp_path)])
    assert again.exit_code == 0 and again.output.count("already trained") == 3

    titles = [s.title for s in run_sections(demo / "kd")]
    assert titles == ["Training", "Result", "Transfer metrics", "Explanations", "Configuration"]
    assert write_run_report(demo / "kd").read_text().count("<table") >= 3
