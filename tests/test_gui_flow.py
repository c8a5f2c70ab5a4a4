"""The studio window driven like a user, on the real built-in model (offscreen Qt, pytest-qt).

Previews are kept small (2 prompts × 2 seeds, 8 steps) so each test takes seconds.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PySide6.QtCore import Qt, QTimer

ROOT = Path(__file__).resolve().parent.parent
WAIT_MS = 180_000
PROMPTS = ["a red circle", "a blue square"]


def idle(qtbot, window, timeout: int = WAIT_MS) -> None:
    qtbot.waitUntil(lambda: not window.controller.busy, timeout=timeout)


def pixels(image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def grid_images(window) -> tuple[dict, dict]:
    return dict(window.state.before), dict(window.state.after)


@pytest.fixture
def studio_home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("ERASURE_STUDIO_HOME", str(home))
    return home


def open_window(qtbot):
    from app.main_window import MainWindow

    window = MainWindow()
    qtbot.addWidget(window)
    window.show()
    window.start("builtin")
    qtbot.waitUntil(lambda: window.state.model is not None and window.state.engine_ready, timeout=WAIT_MS)
    window.controller.set_preview_settings(steps=8)
    window.controller.set_prompts(PROMPTS)
    idle(qtbot, window)
    return window


@pytest.fixture
def window(qtbot, studio_home):
    w = open_window(qtbot)
    yield w
    w.close()


def choose_method(window, name: str) -> None:
    panel = window.method_panel
    index = panel.combo.findData(name)
    assert index >= 0, f"method {name} is not registered"
    panel.combo.setCurrentIndex(index)
    assert window.state.doc.method == name


def test_full_flow(qtbot, window, tmp_path):
    c, s = window.controller, window.state
    assert s.model.architecture == "shapesworld"
    assert len(s.before) == 4 and all(s.after[k] is s.before[k] for k in s.before)  # no edit: after = before

    # add the concept through the editor's preset path and erase with UCE
    window.concept_editor.add_concept("red", "color")
    assert [x.text for x in s.doc.concepts] == ["red"]
    assert s.doc.prompts == PROMPTS  # custom prompts are kept when concepts change
    choose_method(window, "uce")
    qtbot.mouseClick(window.method_panel.erase_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: len(s.doc.stack) == 1, timeout=WAIT_MS)
    idle(qtbot, window)
    assert s.doc.stack[0].method == "uce" and s.doc.stack[0].strength == 1.0
    before, after = grid_images(window)
    assert not s.intermediate
    for seed in s.doc.seeds:
        assert np.abs(pixels(after[("a red circle", seed)]) - pixels(before[("a red circle", seed)])).max() > 30
    edited_red = {k: pixels(v) for k, v in after.items()}

    # strength 0 through the slider: after images equal before images exactly
    window.method_panel.strength.setValue(0.0)
    assert s.doc.stack[0].strength == 0.0
    idle(qtbot, window)
    before, after = grid_images(window)
    for key in before:
        assert np.array_equal(pixels(before[key]), pixels(after[key])), key

    window.method_panel.strength.setValue(0.5)
    idle(qtbot, window)
    half = {k: pixels(v) for k, v in window.state.after.items()}
    assert any(not np.array_equal(half[k], edited_red[k]) for k in half)

    # undo: the slider moves merge into one step, back to strength 1; again: no edit; redo twice
    c.undo()
    assert s.doc.stack[0].strength == 1.0
    assert window.method_panel.strength.value() == pytest.approx(1.0)
    idle(qtbot, window)
    assert all(np.array_equal(pixels(s.after[k]), edited_red[k]) for k in edited_red)  # from the after cache
    c.undo()
    assert s.doc.stack == [] and window.history.list.count() == 0
    idle(qtbot, window)
    assert all(s.after[k] is s.before[k] for k in s.before)
    c.redo()
    c.redo()
    assert len(s.doc.stack) == 1 and s.doc.stack[0].strength == 0.5
    assert not s.can_redo
    idle(qtbot, window)
    assert all(np.array_equal(pixels(s.after[k]), half[k]) for k in half)

    # save, close, reopen in a fresh window
    path = tmp_path / "my.session.json"
    c.save_session(path)
    idle(qtbot, window)
    data = json.loads(path.read_text())
    assert data["model"]["source"] == "builtin"
    assert data["document"]["stack"][0]["strength"] == 0.5
    edit_files = list((tmp_path / "my.session.edits").glob("*.safetensors"))
    assert len(edit_files) == 1
    window.close()

    other = open_window(qtbot)
    try:
        other.controller.open_session(path)
        qtbot.waitUntil(lambda: len(other.state.doc.stack) == 1, timeout=WAIT_MS)
        idle(qtbot, other)
        doc = other.state.doc
        assert [x.text for x in doc.concepts] == ["red"] and doc.method == "uce"
        assert doc.prompts == PROMPTS and doc.seeds == [0, 1] and doc.preview.steps == 8
        assert other.method_panel.strength.value() == pytest.approx(0.5)
        assert all(np.array_equal(pixels(other.state.after[k]), half[k]) for k in half)
    finally:
        other.close()


def test_measure_shows_efficacy_specificity_and_the_probe(qtbot, window):
    s = window.state
    window.concept_editor.add_concept("red", "color")
    choose_method(window, "uce")
    qtbot.mouseClick(window.method_panel.erase_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: len(s.doc.stack) == 1, timeout=WAIT_MS)
    window.controller.set_seeds([0])  # one seed and 4 steps: the suite and the probe in under a minute
    window.controller.set_preview_settings(steps=4)
    idle(qtbot, window)
    qtbot.mouseClick(window.measure_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: s.metrics is not None, timeout=WAIT_MS)
    m = s.metrics
    assert m.efficacy is not None and m.efficacy < m.efficacy_unedited
    assert m.specificity is not None and m.specificity > 0.5
    assert m.probe_recovery is not None and 0.0 <= m.probe_recovery <= 1.0
    assert window.metrics.data.probe == m.probe_recovery  # the panel draws the probe's bar
    assert "Probe" in window.metrics_note.text()


def test_concepts_from_a_text_file(qtbot, window, tmp_path):
    s = window.state
    window.concept_editor.add_concept("red", "color")
    listing = tmp_path / "concepts.txt"
    listing.write_text("# colors and a style\nRed\n\n  blue  \nby Kusama\nsomething new\n", encoding="utf-8")
    window.import_concepts(listing)
    assert [(c.text, c.kind) for c in s.doc.concepts] == [
        ("red", "color"), ("blue", "color"), ("by Kusama", "style"), ("something new", "object")]
    assert s.error.level == "info" and "Added 3 concept(s)" in s.error.message and "; 1 already listed." in s.error.message
    window.import_concepts(tmp_path / "missing.txt")
    assert s.error.message == "The concepts file missing.txt does not exist."
    assert len(s.doc.concepts) == 4  # nothing changed
    keep = tmp_path / "keep.txt"
    keep.write_text("green\nyellow\nGreen\n", encoding="utf-8")
    window.import_preserve(keep)
    assert s.doc.preserve == ["green", "yellow"]
    assert window.concept_editor.preserve.text() == "green, yellow"
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n\n", encoding="utf-8")
    window.import_preserve(empty)
    assert s.error.message == "empty.txt lists no concepts; write one per line." and s.doc.preserve == ["green", "yellow"]


def test_import_edit_files_from_the_cli_and_drop_them(qtbot, window, tmp_path, builtin_model):
    """An edit made by `erase --out` joins the stack (menu or drop); a misfit or a model file is refused plainly."""
    import torch

    from engine.edits import EditDelta
    from engine.methods import EraseRequest, erase

    s = window.state
    red = tmp_path / "red.safetensors"
    erase(builtin_model, EraseRequest("uce", ["red"])).save(red)
    before = {k: pixels(v) for k, v in s.before.items()}

    window.open_paths([str(red)])  # what dropping the file on the window does
    qtbot.waitUntil(lambda: len(s.doc.stack) == 1, timeout=WAIT_MS)
    idle(qtbot, window)
    assert s.doc.stack[0].label == "uce: red" and s.doc.stack[0].strength == 1.0
    assert s.error.level == "info" and s.error.message == "Imported red.safetensors (uce: red)."
    assert s.model.source == "builtin"  # imported onto the model, not loaded as one
    tooltip = window.history.list.itemWidget(window.history.list.item(0)).label.toolTip()
    assert "method: uce" in tooltip and "erases: red" in tooltip and "lamb=0.5" in tooltip  # what the edit is
    for seed in s.doc.seeds:
        key = ("a red circle", seed)
        assert np.abs(pixels(s.after[key]) - before[key]).max() > 30  # the edit is applied in the preview
    copy = tmp_path / "shared" / "red copy.safetensors"
    copy.parent.mkdir()
    window.history.list.setCurrentRow(0)
    assert window.history.save.isEnabled()
    window.controller.save_edit(0, copy)  # what the history panel's Save… does once a path is chosen
    idle(qtbot, window)
    assert s.error.message == f"Saved uce: red to {copy}."
    saved, original = EditDelta.load(copy), EditDelta.load(red)
    assert saved.manifest == original.manifest
    assert all(torch.equal(saved.deltas[k], original.deltas[k]) for k in original.deltas)
    window.controller.save_edit(0, red / "x.safetensors")  # a "folder" that is a file: refused in one sentence
    idle(qtbot, window)
    assert s.error.level == "error" and "\n" not in s.error.message, s.error.message
    assert EditDelta.load(red).manifest == original.manifest  # untouched

    assert s.doc.concepts == [] and window.controller.measure() is not None  # measures the edit's own concepts
    window.controller.cancel()
    idle(qtbot, window)
    window.controller.undo()  # one undo step removes the import
    assert s.doc.stack == []

    misfit = EditDelta.load(red)
    misfit.manifest["fingerprint"] = "0" * 64  # as if made for another model of the same shape
    other = tmp_path / "other model.safetensors"
    misfit.save(other)
    window.controller.import_edits([str(other)])
    idle(qtbot, window)
    assert s.error.level == "error" and s.doc.stack == []
    assert s.error.message == ("other model.safetensors was made for a different model; load that model, then "
                               "import the edit again.")

    checkpoint = tmp_path / "weights.safetensors"
    from safetensors.torch import save_file

    save_file({"x": builtin_model.pipe.unet.conv_in.bias.detach().clone()}, str(checkpoint))
    window.open_paths([str(checkpoint)])  # not an edit: loaded as a model, refused, the built-in model kept
    idle(qtbot, window)
    assert s.error.level == "error" and s.model.source == "builtin" and s.doc.stack == []


def test_cancel_running_esd(qtbot, window):
    s = window.state
    window.concept_editor.add_concept("red", "color")
    choose_method(window, "esd-x")
    window.controller.set_param("iterations", 400)
    before = {k: pixels(v) for k, v in s.before.items()}
    window.erase()
    qtbot.waitUntil(lambda: s.job is not None and s.job.kind == "erase" and s.job.step >= 2, timeout=WAIT_MS)
    assert window.method_panel.cancel_button.isEnabled()
    started = time.perf_counter()
    qtbot.mouseClick(window.method_panel.cancel_button, Qt.MouseButton.LeftButton)
    idle(qtbot, window)
    print(f"ESD cancel took {time.perf_counter() - started:.2f}s")
    assert s.doc.stack == []
    assert s.error is not None and "cancelled" in s.error.message
    assert window.banner.isVisible()
    # the model is unchanged: a fresh preview equals the cached "before" images
    window.controller.set_seeds([0, 1, 2])
    idle(qtbot, window)
    for key, image in before.items():
        assert np.array_equal(pixels(s.before[key]), image)


def test_corrupt_files_show_banner(qtbot, window, tmp_path):
    s = window.state
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x00\x01 definitely not a checkpoint" * 100)
    window.model_panel.request_load(str(broken))
    idle(qtbot, window)
    assert window.banner.isVisible() and s.error.level == "error"
    assert s.error.message.endswith(".") and "\n" not in s.error.message
    assert s.model is not None and s.model.source == "builtin"  # the loaded model is kept
    assert not window.model_panel.progress.isVisible()
    window.banner.close_button.click()
    assert not window.banner.isVisible() and s.error is None

    folder = tmp_path / "not-a-model"
    folder.mkdir()
    window.model_panel.request_load(str(folder))
    idle(qtbot, window)
    assert "not a diffusers model" in s.error.message

    session = tmp_path / "bad.session.json"
    session.write_text("{ not json")
    window.controller.open_session(session)
    assert window.banner.isVisible() and "session" in s.error.message


def test_gui_stays_responsive_during_preview(qtbot, window):
    gaps: list[float] = []
    last = [time.perf_counter()]

    def tick() -> None:
        now = time.perf_counter()
        gaps.append(now - last[0])
        last[0] = now

    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(tick)
    window.controller.set_preview_settings(steps=20)
    window.controller.set_seeds([3, 4])  # uncached: renders both rows with intermediate images
    qtbot.waitUntil(lambda: window.state.job is not None and window.state.job.kind == "preview", timeout=WAIT_MS)
    last[0] = time.perf_counter()
    timer.start()
    idle(qtbot, window)
    timer.stop()
    assert len(gaps) > 20
    worst = max(gaps[1:])
    print(f"timer ticks: {len(gaps)}, worst gap {worst * 1000:.0f} ms")
    assert worst <= 0.100


def test_window_appears_before_torch(studio_home):
    code = (
        "import os, sys, time; os.environ['QT_QPA_PLATFORM'] = 'offscreen'; t = time.perf_counter()\n"
        "from PySide6.QtWidgets import QApplication; app = QApplication([])\n"
        "from app.main_window import MainWindow; w = MainWindow(); w.show(); app.processEvents()\n"
        "print(w.isVisible(), 'torch' in sys.modules, round(time.perf_counter() - t, 2)); w.close()\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         check=False)
    visible, torch_loaded, seconds = out.stdout.split()[-3:]
    print(f"window visible after {seconds}s")
    assert visible == "True" and torch_loaded == "False", out.stderr


def test_autosave_offers_restore_after_a_killed_run(qtbot, studio_home):
    from app.main_window import RESTORE_ACTION
    from app.session import autosave_path, lock_path

    first = open_window(qtbot)
    first.concept_editor.add_concept("red", "color")
    choose_method(first, "uce")
    first.erase()
    qtbot.waitUntil(lambda: len(first.state.doc.stack) == 1, timeout=WAIT_MS)
    first.controller.autosave()
    idle(qtbot, first)
    assert autosave_path(studio_home).is_file()
    first.close()
    assert not lock_path(studio_home).exists()  # a clean exit leaves no lock

    # a killed process leaves its lock behind, holding a pid that no longer runs
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True).stdout.strip()
    lock_path(studio_home).write_text(gone)
    second = open_window(qtbot)
    try:
        assert second.banner.isVisible() and second.state.error.action == RESTORE_ACTION
        assert second.state.doc.stack == []
        second.banner.action_button.click()
        qtbot.waitUntil(lambda: len(second.state.doc.stack) == 1, timeout=WAIT_MS)
        idle(qtbot, second)
        assert [c.text for c in second.state.doc.concepts] == ["red"]
        assert second.state.doc.stack[0].method == "uce"
    finally:
        second.close()


def test_export_from_the_file_menu(qtbot, window, tmp_path):
    s = window.state
    window.concept_editor.add_concept("red", "color")
    choose_method(window, "uce")
    window.erase()
    qtbot.waitUntil(lambda: len(s.doc.stack) == 1, timeout=WAIT_MS)
    idle(qtbot, window)
    window.export_action.trigger()
    dialog = window.export_dialog_widget
    assert dialog.isVisible()
    target = tmp_path / "red-erased-edit.safetensors"
    dialog.set_format("edit")
    dialog.set_target(target)
    assert dialog.export_button.isEnabled()
    dialog.export_button.click()
    qtbot.waitUntil(lambda: target.is_file() and not window.controller.busy, timeout=WAIT_MS)
    assert dialog.pages.currentIndex() == 2 and str(target) in dialog.result_title.text()
    assert s.error is not None and s.error.message.startswith("Exported to")
    dialog.close()


def test_closing_during_a_job_cancels_it(qtbot, studio_home):
    window = open_window(qtbot)
    s = window.state
    window.concept_editor.add_concept("red", "color")
    choose_method(window, "esd-x")
    window.erase()
    qtbot.waitUntil(lambda: s.job is not None and s.job.kind == "erase" and s.job.step >= 1, timeout=WAIT_MS)
    thread = window.controller.worker._thread
    started = time.perf_counter()
    window.close()
    print(f"closed during ESD in {time.perf_counter() - started:.2f}s")
    assert not thread.is_alive()
    from app.session import lock_path

    assert not lock_path(studio_home).exists()
