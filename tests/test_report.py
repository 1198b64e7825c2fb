import base64
import math
import re

import numpy as np
import pytest
from matplotlib.figure import Figure as MplFigure

from kdscope.analysis import plots
from kdscope.analysis.forest import ForestRow, forest_figure, forest_sentences
from kdscope.analysis.report import (
    LEAD_WIDTH,
    Code,
    Figure,
    Lead,
    Section,
    Table,
    Text,
    key_value_table,
    relative_paths,
    render_report,
    write_report,
)
from kdscope.analysis.stats import Estimate

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _figure() -> MplFigure:
    fig = MplFigure(figsize=(2, 1.5))
    fig.subplots().plot([0, 1, 2], [0.3, 0.2, 0.1])
    return fig


def _run_report_sections() -> list[Section]:
    """What a single training run's report holds: config, curves, evaluation metrics."""
    return [
        Section(
            "Configuration", blocks=[Code("method: kd\nalpha: 0.9\n", "config.yaml", "config")]
        ),
        Section(
            "Training",
            findings=["Training: best validation accuracy 0.912 at epoch 14 of 15."],
            blocks=[Figure(_figure(), "loss per epoch", "fig-curves")],
        ),
        Section(
            "Evaluation",
            findings=["Agreement with the teacher: 0.874 on all test examples (n = 1797)."],
            notes=["Teacher replicas were not trained."],
            blocks=[key_value_table({"accuracy": 0.9123, "krs": None}, "Metrics", "metrics")],
        ),
    ]


def test_run_report_is_self_contained_html(tmp_path):
    path = write_report(
        tmp_path / "run" / "report.html", "resnet20 <- resnet56", _run_report_sections()
    )
    html = path.read_text(encoding="utf-8")
    assert not (tmp_path / "run" / "report.html.tmp").exists()
    assert html.startswith("<!DOCTYPE html>") and html.rstrip().endswith("</html>")
    assert "<script" not in html and "http://" not in html and "https://" not in html
    assert re.findall(r'(?:src|href)="(?!data:image/png;base64,|#)', html) == []
    # the embedded image is a real PNG
    data = re.search(r'src="data:image/png;base64,([^"]+)"', html).group(1)
    assert base64.b64decode(data).startswith(PNG_MAGIC)
    for element_id in ("summary", "config", "fig-curves", "metrics"):
        assert f'id="{element_id}"' in html
    assert "resnet20 &lt;- resnet56" in html


def test_summary_comes_first_with_findings_bolded_and_notes():
    html = render_report("r", _run_report_sections())
    summary = html.index('id="summary"')
    assert summary < html.index('id="config"') < html.index('id="fig-curves"')
    assert "<strong>Training:</strong> best validation accuracy 0.912" in html
    assert '<ul class="notes"><li>Teacher replicas were not trained.</li></ul>' in html


def test_cells_are_formatted_and_escaped():
    table = Table(
        ["name", "value"],
        [["<b>x</b>", 0.123456], ["n", 7], ["ci", Estimate(0.5, 0.4, 0.6, 5)], ["none", None]],
        id="t",
    )
    html = render_report("r", [Section("S", blocks=[table, Text("a < b\n\nsecond")])])
    assert "&lt;b&gt;x&lt;/b&gt;" in html and "<b>x</b>" not in html
    assert '<td class="num">0.1235</td>' in html
    assert '<td class="num">7</td>' in html
    assert '<td class="num">0.5 [0.4, 0.6]</td>' in html
    assert '<td class="na">\u2013</td>' in html
    assert "<p>a &lt; b</p><p>second</p>" in html


def test_grouped_columns_are_shown_once_with_rowspan():
    rows = [["A", "x", 1], ["A", "y", 2], ["B", "y", 3], ["B", "y", 4]]
    html = render_report("r", [Section("S", blocks=[Table(["g", "h", "v"], rows, group=2)])])
    assert html.count('rowspan="2"') == 3  # A, B, and y within B each over two rows
    assert html.count(">A<") == 1 and html.count(">B<") == 1
    assert html.count(">y<") == 2  # y under A, then again as its own run under B


def test_ids_are_unique_even_when_blocks_repeat_them():
    tables = [Table(["a"], [[1]], id="same"), Table(["a"], [[2]], id="same")]
    html = render_report("r", [Section("Part", blocks=tables), Section("Part")])
    ids = re.findall(r'id="([^"]+)"', html)
    assert len(ids) == len(set(ids))
    assert {"same", "same-2", "sec-part", "sec-part-2"} <= set(ids)


def test_figures_from_bytes_and_files(tmp_path):
    raw = Figure(_figure()).png()
    assert raw.startswith(PNG_MAGIC)
    (tmp_path / "cam.png").write_bytes(raw)
    blocks = [Figure(raw, id="from-bytes"), Figure(tmp_path / "cam.png", id="from-file")]
    html = render_report("r", [Section("S", blocks=blocks)])
    assert html.count("data:image/png;base64,") == 2


def test_table_access_and_validation():
    table = Table.from_records([{"m": "acc", "v": 0.9}, {"m": "krs", "v": 0.7}], id="t")
    assert table.columns == ["m", "v"] and table.column("v") == [0.9, 0.7]
    assert table.records()[1] == {"m": "krs", "v": 0.7}
    section = Section("S", blocks=[table])
    assert section.table("t") is table
    with pytest.raises(KeyError, match=r"present: \['t'\]"):
        section.table("u")
    with pytest.raises(KeyError, match="no column 'w'"):
        table.column("w")
    with pytest.raises(ValueError, match="row 0 has 1 cells, expected 2"):
        Table(["a", "b"], [[1]])


def test_paths_are_written_relative_to_the_report_directory(tmp_path):
    run = tmp_path / "runs" / "kd"
    text = f"checkpoint: {tmp_path}/runs/teacher\nlog: {run}/metrics.jsonl\nhere: {run}\n"
    assert relative_paths(text, run) == ("checkpoint: ../teacher\nlog: metrics.jsonl\nhere: .\n")
    assert relative_paths("/usr/share/x", "/") == "/usr/share/x"  # the root relativises nothing


def test_unknown_block_type_is_rejected():
    with pytest.raises(TypeError, match="accepted: Text, Code, Table, Figure"):
        render_report("r", [Section("S", blocks=["just a string"])])


# --- figures -----------------------------------------------------------------------------------


def test_grouped_bars_draw_values_and_interval_lengths():
    est = [Estimate(0.5, 0.4, 0.7, 5), None]
    fig = plots.grouped_bars({"C": {"kd": est}, "I": {"kd": est}}, ["a", "b"], "agreement")
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in axes] == ["C", "I"]
    bars = axes[0].patches
    assert bars[0].get_height() == pytest.approx(0.5) and math.isnan(bars[1].get_height())
    # asymmetric error bar from 0.4 to 0.7
    segments = axes[0].collections[0].get_segments()
    assert segments[0][:, 1].tolist() == pytest.approx([0.4, 0.7])
    assert fig.legends and [t.get_text() for t in fig.legends[0].get_texts()] == ["kd"]


def test_lines_place_categories_in_the_given_order():
    series = {
        "kd": (["resnet32", "resnet8"], [Estimate(0.2, 0.1, 0.3, 5), Estimate(0.1, 0, 0.2, 5)])
    }
    fig = plots.lines({"agree_I": series}, "student", "delta", categories=["resnet8", "resnet32"])
    ax = fig.axes[0]
    x, y = ax.lines[0].get_data()
    assert list(x) == [1, 0] and list(y) == pytest.approx([0.2, 0.1])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["resnet8", "resnet32"]


def test_scatter_fits_one_line_over_all_groups():
    groups = {"base": ([0.0, 1.0], [1.0, 3.0]), "kd": ([2.0], [5.0])}
    fig = plots.scatter({"digits": groups}, "KRS", "accuracy")
    ax = fig.axes[0]
    assert len(ax.collections) == 2
    x, y = ax.lines[0].get_data()
    assert y[0] == pytest.approx(1.0) and y[-1] == pytest.approx(5.0)  # y = 2x + 1


def test_heatmap_annotates_every_finite_cell():
    fig = plots.heatmap(np.array([[0.1, -0.2], [math.nan, 0.3]]), ["a", "b"], ["p", "q"])
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert texts == ["0.1", "-0.2", "0.3"]


# --- the lead: forest plot and plain sentences ---------------------------------------------------


def _forest_rows():
    return [
        ForestRow("accuracy", 0.029, 0.02, 0.038, True),
        ForestRow("agree_C", 0.005, -0.004, 0.014, False),
        ForestRow("agree_I", 0.031, 0.012, 0.05, True),
        ForestRow("payoff", 0.12, 0.05, 0.19, True),
        ForestRow("krs", -0.01, -0.03, 0.01, False),
    ]


def test_forest_draws_each_difference_with_its_interval_and_marks_significance():
    block = forest_figure(_forest_rows(), id="f")
    assert isinstance(block, Figure) and block.id == "f" and block.png().startswith(PNG_MAGIC)
    ax = block.image.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()][:2] == [
        "accuracy",
        "agreement, teacher right (C)",
    ]
    points = [line for line in ax.lines if line.get_marker() == "o"]
    intervals = [line for line in ax.lines if line.get_marker() in ("None", "", None)]
    assert [p.get_xdata()[0] for p in points] == pytest.approx([0.029, 0.005, 0.031, 0.12, -0.01])
    assert list(intervals[0].get_xdata()) == pytest.approx([0.02, 0.038])
    # significant: filled; not significant: hollow (white face)
    faces = [p.get_markerfacecolor() for p in points]
    assert faces[1] == "white" and faces[4] == "white" and faces[0] != "white"
    lo, hi = ax.get_xlim()
    assert lo < -0.03 and hi > 0.19  # every interval and 0 fit
    assert "accuracy +0.029 [0.02, 0.038], significant" in block.alt
    assert (
        "KRS -0.01 [-0.03, 0.01]" in block.alt and "KRS -0.01 [-0.03, 0.01], sig" not in block.alt
    )


def test_forest_with_several_groups_has_a_panel_per_measure():
    rows = [
        ForestRow(m, 0.01 * (k + 1), 0.0, 0.02 * (k + 1), k == 0, group)
        for k, group in enumerate(("kd", "dkd", "fitnet"))
        for m in ("accuracy", "agree_I", "krs")
    ]
    fig = forest_figure(rows).image
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in axes] == ["accuracy", "agree I", "KRS"]
    assert [t.get_text() for t in axes[0].get_yticklabels()] == ["kd", "dkd", "fitnet"]
    with pytest.raises(ValueError, match="at least one ForestRow"):
        forest_figure([])


def test_forest_sentences_say_what_moved_in_plain_words():
    first, second, third = forest_sentences(_forest_rows())
    assert first.startswith("KD made the student more accurate") and "+2.9 points" in first
    assert "did not change significantly where the teacher is right (+0.5 points)" in second
    assert "rose where the teacher is wrong (+3.1 points)" in second
    assert "more of the teacher's mistakes" in third and "negative asymmetric payoff" in third
    calm = [ForestRow(m, 0.001, -0.01, 0.01, False) for m in ("accuracy", "payoff")]
    assert "did not change the student's accuracy significantly" in forest_sentences(calm)[0]
    assert "no significant asymmetry" in forest_sentences(calm)[1]
    nan = float("nan")
    one_run = [
        ForestRow("accuracy", -0.02, nan, nan, False),
        ForestRow("krs", 0.03, nan, nan, False),
    ]
    words = forest_sentences(one_run)
    assert "less accurate" in words[0] and "untested" in words[0]
    assert words[1] == "Its Knowledge Retention Score rose (+0.03)."
    both = [ForestRow(m, 0.05, 0.01, 0.09, True) for m in ("agree_C", "agree_I")]
    assert forest_sentences(both) == [
        "Its agreement with the teacher rose where the teacher is right (+5.0 points) and where "
        "it is wrong (+5.0 points)."
    ]
    grouped = [ForestRow("accuracy", 0.02, 0.01, 0.03, g == "kd", g) for g in ("kd", "at")]
    assert "more accurate in 1, less accurate in 0" in forest_sentences(grouped)[0]


def test_a_lead_figure_is_widened_to_the_lead_width_and_never_narrowed():
    narrow = MplFigure(figsize=(5.2, 4.0))
    wide = MplFigure(figsize=(12.0, 3.0))
    Lead(Figure(narrow))
    Lead(Figure(wide))
    assert tuple(narrow.get_size_inches()) == (LEAD_WIDTH, 4.0)
    assert tuple(wide.get_size_inches()) == (12.0, 3.0)


def test_lead_opens_the_page_and_code_is_folded():
    rows = _forest_rows()
    lead = Lead(forest_figure(rows, id="forest"), forest_sentences(rows))
    sections = [*_run_report_sections(), Section("Answer", lead=lead)]
    html = render_report("r", sections)
    assert html.index('id="forest"') < html.index("<nav>") < html.index('id="summary"')
    assert html.index('id="forest"') < html.index("KD made the student more accurate")
    assert html.index("KD made the student more accurate") < html.index("<nav>")
    assert 'alt="Forest plot of KD' in html
    assert '<details id="config" class="code"><summary>config.yaml</summary><pre>' in html
