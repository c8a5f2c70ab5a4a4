"""The method panel: method selector, generated parameter form, strength slider, Erase/Cancel, progress.

The method's own guidance control (η for ESD, the SLD preset, ...) is pulled out of the
generic form and shown first, because it is the knob users reach for after strength.
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QComboBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QVBoxLayout,
    QWidget,
)
from superqt import QCollapsible, QLabeledDoubleSlider

from widgets.param_form import ParamForm

STRENGTH_MAX = 1.5


def is_guidance_param(name: str) -> bool:
    """The method's guidance knob: ESD's eta / negative guidance, SLD's preset or guidance scale."""
    lowered = name.lower()
    return lowered in ("eta", "negative_guidance", "preset", "sld_preset", "guidance", "guidance_scale",
                       "safety_guidance", "sld_guidance") or lowered.endswith("_preset")


def format_eta(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = max(0, round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d} left" if seconds >= 60 else f"{seconds} s left"


class MethodPanel(QWidget):
    method_selected = Signal(str)
    param_changed = Signal(str, object)
    strength_changed = Signal(float)
    erase_requested = Signal()
    cancel_requested = Signal()

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self._updating = False
        self.combo = QComboBox()
        self.combo.setToolTip("The erasure method")
        self.family = QLabel()
        self.family.setObjectName("muted")
        self.description = QLabel("The engine is starting…")
        self.description.setWordWrap(True)
        self.description.setObjectName("muted")

        self.guidance_box = QGroupBox("Method guidance")
        self.guidance_form = ParamForm()
        QVBoxLayout(self.guidance_box).addWidget(self.guidance_form)
        self.guidance_box.hide()
        self.form = ParamForm()
        self.params_section = QCollapsible("Parameters")
        self.params_section.addWidget(self.form)
        self.params_section.hide()

        self.strength = QLabeledDoubleSlider(Qt.Orientation.Horizontal)
        self.strength.setRange(0.0, STRENGTH_MAX)
        self.strength.setSingleStep(0.05)
        self.strength.setDecimals(2)
        self.strength.setValue(1.0)
        self.strength.setEnabled(False)
        self.strength.setToolTip("How strongly the selected edit is applied (0 = off, 1 = as computed). "
                                 "Only the “after” images are re-rendered.")
        self.strength_label = QLabel("Strength")
        self.strength_label.setToolTip(self.strength.toolTip())

        self.erase_button = QPushButton("Erase")
        self.erase_button.setObjectName("primary")
        self.erase_button.setToolTip("Compute the edit for the concepts (Ctrl+Enter)")
        self.erase_button.setEnabled(False)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Stop the running job; nothing is changed (Esc)")
        self.cancel_button.setEnabled(False)
        self.progress = QProgressBar()
        self.progress.setTextVisible(False)
        self.progress.setMaximumHeight(10)
        self.progress_label = QLabel("Idle")
        self.progress_label.setObjectName("muted")

        # the settings scroll; strength, Erase/Cancel and progress stay in view below them
        settings = QWidget()
        top = QFormLayout()
        top.addRow("Method", self.combo)
        upper = QVBoxLayout(settings)
        upper.setContentsMargins(0, 0, 6, 0)
        upper.addLayout(top)
        upper.addWidget(self.family)
        upper.addWidget(self.description)
        upper.addWidget(self.guidance_box)
        upper.addWidget(self.params_section)
        upper.addStretch(1)
        scroll = QScrollArea()
        scroll.setWidget(settings)
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QScrollArea.Shape.NoFrame)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(scroll, 1)
        strength_row = QHBoxLayout()
        strength_row.addWidget(self.strength_label)
        strength_row.addWidget(self.strength, 1)
        layout.addLayout(strength_row)
        buttons = QHBoxLayout()
        buttons.addWidget(self.erase_button, 2)
        buttons.addWidget(self.cancel_button, 1)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.progress_label)

        self.combo.currentIndexChanged.connect(self._on_combo)
        self.form.param_changed.connect(self.param_changed)
        self.guidance_form.param_changed.connect(self.param_changed)
        self.strength.valueChanged.connect(self._on_strength)
        self.erase_button.clicked.connect(self.erase_requested)
        self.cancel_button.clicked.connect(self.cancel_requested)
        self._specs: dict[str, Any] = {}
        self._shown_once = False

    def set_methods(self, specs: dict[str, Any], current: str) -> None:
        self._updating = True
        try:
            self._specs = dict(specs)
            self.combo.clear()
            for name, spec in specs.items():
                self.combo.addItem(spec.title, name)
                self.combo.setItemData(self.combo.count() - 1, spec.description, Qt.ItemDataRole.ToolTipRole)
            if not specs:
                self.description.setText("No erasure methods are installed yet.")
            index = self.combo.findData(current)
            self.combo.setCurrentIndex(max(0, index))
        finally:
            self._updating = False

    def show_method(self, name: str, values: dict[str, Any]) -> None:
        spec = self._specs.get(name)
        self._updating = True
        try:
            index = self.combo.findData(name)
            if index >= 0:
                self.combo.setCurrentIndex(index)
        finally:
            self._updating = False
        if spec is None:
            self.form.build([], {})
            self.guidance_form.build([], {})
            self.guidance_box.hide()
            return
        self.family.setText(f"{spec.family} · {'exportable' if spec.exportable else 'inference-time only'}")
        self.description.setText(spec.description)
        guidance = [p for p in spec.params if is_guidance_param(p.name)]
        others = [p for p in spec.params if not is_guidance_param(p.name)]
        self.guidance_form.build(guidance, values)
        self.guidance_box.setVisible(bool(guidance))
        self.form.build(others, values)
        self.params_section.setText(f"Parameters ({len(others)})")
        self.params_section.setVisible(bool(others))
        # QCollapsible sizes its content when it expands, so re-expand after a rebuild; open the first time
        if self.params_section.isExpanded() or not self._shown_once:
            self.params_section.collapse(animate=False)
            self.params_section.expand(animate=False)
        self._shown_once = True

    def set_values(self, values: dict[str, Any]) -> None:
        self.form.set_values(values)
        self.guidance_form.set_values(values)

    def set_strength(self, value: float | None, label: str = "") -> None:
        self._updating = True
        try:
            self.strength.setEnabled(value is not None)
            if value is not None and abs(self.strength.value() - value) > 1e-9:
                self.strength.setValue(value)
        finally:
            self._updating = False
        self.strength_label.setToolTip(f"Strength of “{label}”" if label else self.strength.toolTip())

    def set_busy(self, busy: bool, can_erase: bool) -> None:
        self.erase_button.setEnabled(can_erase)
        self.cancel_button.setEnabled(busy)

    def show_progress(self, text: str, step: int, total: int, eta_s: float | None) -> None:
        if total > 0:
            self.progress.setRange(0, total)
            self.progress.setValue(step)
            extra = format_eta(eta_s) if step < total else ""
            self.progress_label.setText(f"{text} · {step}/{total}" + (f" · {extra}" if extra else ""))
        else:
            self.progress.setRange(0, 0)  # busy indicator
            self.progress_label.setText(text)

    def clear_progress(self, text: str = "Idle") -> None:
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress_label.setText(text)

    def _on_combo(self, index: int) -> None:
        if not self._updating and index >= 0:
            self.method_selected.emit(self.combo.itemData(index))

    def _on_strength(self, value: float) -> None:
        if not self._updating:
            self.strength_changed.emit(float(value))
