"""The export dialog: real Qt widgets, offscreen; it emits plain requests the engine accepts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from PySide6.QtCore import Qt

from widgets.export_dialog import ExportContext, ExportDialog, ExportDialogRequest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def dialog(qtbot, tmp_path: Path) -> ExportDialog:
    context = ExportContext(model_label="ShapesWorld (built-in)", edit_labels=["uce: red (0.8)"],
                            weights_bytes=21_000_000, delta_bytes=250_000, folder=tmp_path)
    widget = ExportDialog(None, context)
    qtbot.addWidget(widget)
    widget.show()
    return widget


def test_the_dialog_module_imports_no_engine_and_no_torch() -> None:
    code = ("import sys; import widgets.export_dialog; "
            "bad = [m for m in sys.modules if m == 'torch' or m == 'engine' or m.startswith('engine.')]; "
            "print(bad); sys.exit(1 if bad else 0)")
    done = subprocess.run([sys.executable, "-c", code], check=False, cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={"QT_QPA_PLATFORM": "offscreen", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stdout + done.stderr


def test_defaults_suggest_a_folder_and_summarize_what_will_be_written(dialog: ExportDialog, tmp_path: Path) -> None:
    assert dialog.format == "diffusers"
    assert dialog.target() == tmp_path / "ShapesWorld--built-in-erased"
    summary = dialog.summary.text()
    assert "ShapesWorld--built-in-erased" in summary and "about 21.0 MB" in summary
    assert "model card" in summary and "uce: red (0.8)" in summary and "reloaded" in summary
    assert dialog.lora_group.isHidden() and dialog.sld_combo.isHidden()
    assert dialog.export_button.isEnabled()

    dialog.dtype_combo.setCurrentIndex(dialog.dtype_combo.findData("fp16"))
    assert "about 10.5 MB" in dialog.summary.text() and "fp16" in dialog.summary.text()


def test_format_switch_updates_path_rank_controls_and_precision(dialog: ExportDialog, tmp_path: Path) -> None:
    dialog.set_format("lora")
    assert dialog.target() == tmp_path / "ShapesWorld--built-in-erase-lora.safetensors"
    assert not dialog.lora_group.isHidden()
    assert dialog.energy_spin.isEnabled() and not dialog.rank_spin.isEnabled()
    assert "99.9 % of the edit" in dialog.summary.text()
    dialog.rank_radio.setChecked(True)
    assert dialog.rank_spin.isEnabled() and "rank 8 per layer" in dialog.summary.text()

    dialog.set_format("edit")
    assert dialog.target().name.endswith("-erase-edit.safetensors")
    assert not dialog.dtype_combo.isEnabled() and dialog.lora_group.isHidden()
    assert "float32 edit file" in dialog.summary.text()

    # A path the user typed is kept across format changes; the suffix is added for file formats.
    dialog.set_target(tmp_path / "mine")
    dialog.set_format("single-file")
    assert dialog.target() == tmp_path / "mine.safetensors"


def test_problems_disable_export_with_one_sentence(dialog: ExportDialog, tmp_path: Path) -> None:
    documents = tmp_path / "documents"
    documents.mkdir()
    (documents / "letter.txt").write_text("keep")
    dialog.set_target(documents)
    assert not dialog.export_button.isEnabled()
    assert "already holds other files" in dialog.problem.text()
    assert dialog.request() is None

    dialog.set_target("")
    assert not dialog.export_button.isEnabled() and "Choose where" in dialog.problem.text()

    earlier = tmp_path / "earlier"
    earlier.mkdir()
    (earlier / "model_index.json").write_text("{}")
    dialog.set_target(earlier)
    assert dialog.export_button.isEnabled() and "will be replaced" in dialog.summary.text()


def test_sld_choice_is_shown_only_when_the_stack_has_inference_edits(qtbot, tmp_path: Path) -> None:
    context = ExportContext(edit_labels=["uce: red (1)"], inference_labels=["sld: nudity"], folder=tmp_path)
    dialog = ExportDialog(None, context)
    qtbot.addWidget(dialog)
    dialog.show()
    assert not dialog.sld_combo.isHidden()
    assert "sld: nudity" in dialog.summary.text() and "left out" in dialog.summary.text()
    dialog.sld_combo.setCurrentIndex(dialog.sld_combo.findData("refuse"))
    assert not dialog.export_button.isEnabled()
    dialog.sld_combo.setCurrentIndex(dialog.sld_combo.findData("skip"))
    assert dialog.request().sld_policy == "skip"


def test_export_emits_a_plain_request_the_engine_accepts(dialog: ExportDialog, qtbot, tmp_path: Path) -> None:
    from engine.export import ExportRequest

    dialog.set_format("lora")
    dialog.dtype_combo.setCurrentIndex(dialog.dtype_combo.findData("fp16"))
    dialog.rank_radio.setChecked(True)
    dialog.rank_spin.setValue(16)
    with qtbot.waitSignal(dialog.export_requested, timeout=1000) as blocker:
        qtbot.mouseClick(dialog.export_button, Qt.MouseButton.LeftButton)
    request = blocker.args[0]
    assert request == ExportDialogRequest("lora", tmp_path / "ShapesWorld--built-in-erase-lora.safetensors", "fp16",
                                          16, 0.999, "skip")
    engine_request = ExportRequest.coerce(request)
    engine_request.validate()
    assert ExportRequest.coerce(request.as_dict()) == engine_request
    assert dialog.pages.currentIndex() == 1

    with qtbot.waitSignal(dialog.cancel_requested, timeout=1000):
        qtbot.mouseClick(dialog.cancel_button, Qt.MouseButton.LeftButton)
    assert "Cancelling" in dialog.progress_label.text() and not dialog.cancel_button.isEnabled()


def test_progress_and_result_views(dialog: ExportDialog, tmp_path: Path) -> None:
    dialog.show_progress(0.25, "Writing unet")
    assert dialog.pages.currentIndex() == 1 and dialog.progress_bar.value() == 250
    assert dialog.progress_label.text() == "Writing unet"

    details = {"error_overall": 0.0012, "error_worst": 0.004, "worst_layer": "lora_unet_x",
               "ranks": {"lora_unet_x": 3}, "warnings": ["The inference-time entry 'sld' was left out."],
               "seconds": 1.25}
    dialog.show_result(tmp_path / "out.safetensors", 204_412, "Reopened the LoRA: diffusers parses it.", details)
    assert dialog.pages.currentIndex() == 2
    assert "out.safetensors" in dialog.result_title.text()
    assert dialog.result_size.text() == "Size: 204.4 KB"
    assert dialog.result_check.text() == "✔ Reopened the LoRA: diffusers parses it."
    text = dialog.result_details.toPlainText()
    assert "1.20e-03 overall" in text and "lora_unet_x: 3" in text and "Warning:" in text and "1.2 s" in text

    dialog.show_failure("The export was cancelled; nothing was written.")
    assert dialog.result_title.text() == "Nothing was exported."
    assert "cancelled" in dialog.result_check.text() and not dialog.show_button.isEnabled()


def test_the_engine_describes_a_model_in_the_dialog_context(qtbot, builtin_model, tmp_path: Path) -> None:
    import torch

    from engine.edits import EditDelta
    from engine.export import describe

    name = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"
    delta = 0.01 * torch.ones_like(builtin_model.pipe.unet.get_parameter(name))
    builtin_model.stack.push(EditDelta.create(builtin_model.pipe, {"unet." + name: delta}, "uce",
                                              {"targets": ["red"]}, {}), 0.5)
    try:
        context = ExportContext(**describe(builtin_model), folder=tmp_path)
    finally:
        builtin_model.stack.clear()
    assert context.edit_labels == ["uce: red (0.5)"] and context.inference_labels == []
    assert 20_000_000 < context.weights_bytes < 23_000_000 and context.delta_bytes == delta.numel() * 4
    dialog = ExportDialog(None, context)
    qtbot.addWidget(dialog)
    assert "uce: red (0.5)" in dialog.summary.text() and "21.4 MB" in dialog.summary.text()
