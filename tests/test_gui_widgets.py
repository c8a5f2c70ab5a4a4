"""Studio widgets on their own (offscreen): no model needed, real Qt widgets and real method specs."""

from __future__ import annotations

import json

import pytest
from PySide6.QtCore import Qt
from PySide6.QtGui import QColor, QImage

from widgets.concept_editor import ConceptEditor, concept_problems
from widgets.error_banner import ErrorBanner
from widgets.history_panel import HistoryPanel
from widgets.image_grid import BeforeAfterGrid
from widgets.method_panel import MethodPanel, format_eta
from widgets.metrics_chart import MetricsChart, MetricsData
from widgets.param_form import ParamForm, pretty
from widgets.prompt_panel import parse_seeds


def test_concept_problems_flag_empty_and_duplicates():
    assert concept_problems(["red", "blue"]) == {}
    problems = concept_problems(["red", " ", "Red ", "blue"])
    assert set(problems) == {1, 2}
    assert "empty" in problems[1] and "twice" in problems[2]


def test_concept_editor_flags_inline_and_emits(qtbot):
    editor = ConceptEditor()
    qtbot.addWidget(editor)
    editor.show()
    with qtbot.waitSignal(editor.concepts_edited) as blocker:
        editor.add_concept("red", "color")
    assert blocker.args[0] == [{"text": "red", "kind": "color", "guide": "", "anchor": ""}]
    editor.add_concept("RED", "color")
    assert editor.problems_label.isVisible() and "twice" in editor.problems_label.text()
    assert editor.table.item(1, 0).toolTip()
    editor.set_concepts([{"text": "red", "kind": "color", "guide": "", "anchor": ""}])
    assert not editor.problems_label.isVisible()
    editor.set_presets({"Colors": [("blue", "color")]})
    action = editor.presets_menu.actions()[0].menu().actions()[0]
    action.trigger()
    assert [c["text"] for c in editor.concepts()] == ["red", "blue"]


def test_param_forms_for_every_registered_method(qtbot):
    from engine.methods import all_methods

    methods = all_methods()
    panel = MethodPanel()
    qtbot.addWidget(panel)
    panel.set_methods(methods, next(iter(methods), ""))
    for name, spec in methods.items():
        panel.show_method(name, {})
        editors = {**panel.form.editors, **panel.guidance_form.editors}
        assert set(editors) == {p.name for p in spec.params}
        for p in {p.name: p for p in spec.params}.values():  # last one wins, as in MethodSpec.resolve_params
            assert editors[p.name].toolTip() == p.tooltip
        values = {**panel.form.values(), **panel.guidance_form.values()}
        assert spec.resolve_params(values) == spec.resolve_params({})  # the form shows the defaults


def test_param_form_emits_typed_values(qtbot):
    from engine.methods import ParamSpec

    form = ParamForm()
    qtbot.addWidget(form)
    specs = [ParamSpec("lamb", "float", 0.5, "λ", 0.0001, 100.0), ParamSpec("iterations", "int", 200, "n", 1, 1000),
             ParamSpec("expand", "bool", True, "b"), ParamSpec("edit", "choice", "a", "c", choices=("a", "b"))]
    form.build(specs, {"iterations": 50})
    assert form.values() == {"lamb": 0.5, "iterations": 50, "expand": True, "edit": "a"}
    with qtbot.waitSignal(form.param_changed) as blocker:
        form.editors["edit"].setCurrentText("b")
    assert blocker.args == ["edit", "b"]
    with qtbot.waitSignal(form.param_changed) as blocker:
        form.editors["iterations"].setValue(7)
    assert blocker.args == ["iterations", 7]


def test_param_form_names_what_a_minimum_stands_for(qtbot):
    from engine.methods import ParamSpec

    form = ParamForm()
    qtbot.addWidget(form)
    form.build([ParamSpec("scale", "float", -1.0, "s", -1.0, 10.0, minimum_means="preset"),
                ParamSpec("epochs", "int", 0, "e", 0, 20, minimum_means="by concept type")], {})
    assert form.editors["scale"].text() == "preset" and form.editors["epochs"].text() == "by concept type"
    form.editors["scale"].setValue(2.0)
    assert form.values()["scale"] == 2.0 and form.editors["scale"].text() != "preset"


def test_param_labels_spell_out_abbreviations():
    assert [pretty(n) for n in ("lamb", "step_lamb", "lr", "ddim_steps", "use_ipf", "preserve_scale")] == [
        "λ", "Step λ", "Learning rate", "DDIM steps", "Use IPF", "Preserve scale"]


def test_parse_seeds_and_eta():
    assert parse_seeds("0, 1, 5-7") == [0, 1, 5, 6, 7]
    assert parse_seeds("3,3") == [3]
    assert parse_seeds("x") is None and parse_seeds("") is None and parse_seeds("0-40") is None
    assert format_eta(75) == "1:15 left" and format_eta(4.4) == "4 s left" and format_eta(None) == ""


def test_history_panel_signals(qtbot):
    panel = HistoryPanel()
    qtbot.addWidget(panel)
    panel.set_items([("uce: red", 1.0, True, ""), ("esd-x: star", 0.5, False, "")], 1)
    assert panel.list.count() == 2 and not panel.empty.isVisible()
    with qtbot.waitSignal(panel.move_requested) as blocker:
        panel.up.click()
    assert blocker.args == [1, 0]
    row = panel.list.itemWidget(panel.list.item(0))
    with qtbot.waitSignal(panel.enabled_changed) as blocker:
        row.enabled.setChecked(False)
    assert blocker.args == [0, False]
    with qtbot.waitSignal(panel.strength_changed) as blocker:
        row.strength.setValue(0.25)
    assert blocker.args == [0, 0.25]


def test_error_banner_detail_toggle(qtbot):
    banner = ErrorBanner()
    qtbot.addWidget(banner)
    banner.show_message("The model could not be loaded.", "Traceback ...", "error", "Switch to CPU")
    assert banner.isVisible() and not banner.detail.isVisible()
    banner.details_button.setChecked(True)
    assert banner.detail.isVisible() and "Traceback" in banner.detail.toPlainText()
    with qtbot.waitSignal(banner.action_clicked) as blocker:
        banner.action_button.click()
    assert blocker.args == ["Switch to CPU"]
    banner.close_button.click()
    assert not banner.isVisible()


def _solid(color: str) -> QImage:
    image = QImage(64, 64, QImage.Format.Format_RGB888)
    image.fill(QColor(color))
    return image


def test_grid_paints_pairs_and_reports_clicks(qtbot):
    grid = BeforeAfterGrid()
    qtbot.addWidget(grid)
    grid.set_content(["a red circle"], [0, 1], {(0, 0): _solid("red")}, {(0, 0): _solid("blue")}, {(0, 1)})
    grid.resize(grid.sizeHint())
    grid.show()
    shot = grid.grab().toImage()
    before, after = grid.cell_rect(0, 0, 0).center(), grid.cell_rect(0, 0, 1).center()
    assert QColor(shot.pixel(before)).red() > 200 and QColor(shot.pixel(after)).blue() > 200
    with qtbot.waitSignal(grid.cell_clicked) as blocker:
        qtbot.mouseClick(grid, Qt.MouseButton.LeftButton, pos=grid.cell_rect(0, 1, 1).center())
    assert blocker.args == [0, 1]


def test_metrics_chart_draws_bars_and_curve(qtbot):
    chart = MetricsChart()
    qtbot.addWidget(chart)
    chart.resize(320, 320)
    chart.show()
    empty = chart.grab().toImage()
    chart.set_data(MetricsData(0.1, 0.2, 0.95, 1.0, 1.0, [(0.0, 1.0, 1.0), (0.5, 0.4, 0.98), (1.0, 0.1, 0.95)]), 1.0)
    drawn = chart.grab().toImage()
    assert drawn != empty
    red = sum(1 for x in range(0, 320, 2) for y in range(0, 320, 2)
              if QColor(drawn.pixel(x, y)).red() > 180 and QColor(drawn.pixel(x, y)).green() < 110)
    assert red > 20  # the efficacy bar and curve are painted

    def purple(image) -> int:
        return sum(1 for x in range(0, 320, 2) for y in range(0, 320, 2)
                   if (c := QColor(image.pixel(x, y))).red() > 110 and c.blue() > 160 and c.green() < 120)

    assert purple(drawn) == 0  # no probe measured, no probe bar
    chart.set_data(MetricsData(0.1, 0.2, 0.95, 1.0, 1.0, [], probe=0.5), 1.0)
    assert purple(chart.grab().toImage()) > 20


def test_session_file_errors(tmp_path):
    from app.session import FORMAT, read_session
    from engine.jobs import InputError

    bad = tmp_path / "x.session.json"
    bad.write_text(json.dumps({"format": "something else"}))
    with pytest.raises(InputError, match="not an Erasure Studio session"):
        read_session(bad)
    bad.write_text(json.dumps({"format": FORMAT, "version": 1, "model": {"source": "builtin"},
                               "document": {"stack": [{"edit_id": "abc", "label": "uce: red", "method": "uce"}]}}))
    with pytest.raises(InputError, match="missing 1 edit file"):
        read_session(bad)
    with pytest.raises(InputError, match="does not exist"):
        read_session(tmp_path / "nope.json")
