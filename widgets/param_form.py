"""A form generated from parameter specs (name, kind, default, tooltip, minimum, maximum, choices).

Duck-typed on the engine's ParamSpec so this widget never imports the engine.
"""

from __future__ import annotations

import math
from typing import Any

from PySide6.QtCore import Signal
from PySide6.QtWidgets import QCheckBox, QComboBox, QDoubleSpinBox, QFormLayout, QLabel, QLineEdit, QSpinBox, QWidget

INT_LIMIT = 2_000_000_000


def _decimals(spec: Any) -> int:
    values = [abs(v) for v in (spec.default, spec.minimum, spec.maximum) if isinstance(v, (int, float)) and v]
    smallest = min(values) if values else 1.0
    return max(2, min(6, 1 - math.floor(math.log10(smallest)))) if smallest < 1 else 3


# words of parameter names that read better spelled out or as the papers write them
LABEL_WORDS = {"lamb": "λ", "lr": "learning rate", "ddim": "DDIM", "sld": "SLD", "iec": "IEC", "ipf": "IPF",
               "dpa": "DPA", "aug": "augmentation", "num": "count", "reg": "regulariser"}


def pretty(name: str) -> str:
    """A parameter's label: "step_lamb" → "Step λ", "ddim_steps" → "DDIM steps"."""
    label = " ".join(LABEL_WORDS.get(word, word) for word in name.split("_"))
    return label[:1].upper() + label[1:] if label[:1].isascii() else label  # "λ", not "Λ"


class ParamForm(QWidget):
    """Emits ``param_changed(name, value)`` whenever a field is edited by the user."""

    param_changed = Signal(str, object)

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.layout_ = QFormLayout(self)
        self.layout_.setContentsMargins(0, 0, 0, 0)
        self.editors: dict[str, QWidget] = {}
        self.specs: dict[str, Any] = {}
        self._updating = False

    def build(self, specs: list[Any], values: dict[str, Any]) -> None:
        while self.layout_.rowCount():
            self.layout_.removeRow(0)
        self.editors.clear()
        self.specs = {s.name: s for s in specs}
        for spec in specs:
            editor = self._make_editor(spec)
            editor.setToolTip(spec.tooltip)
            label = QLabel(pretty(spec.name))
            label.setToolTip(spec.tooltip)
            self.layout_.addRow(label, editor)
            self.editors[spec.name] = editor
        self.set_values(values)

    def _make_editor(self, spec: Any) -> QWidget:
        name = spec.name
        if spec.kind == "float":
            w = QDoubleSpinBox()
            w.setDecimals(_decimals(spec))
            w.setRange(spec.minimum if spec.minimum is not None else -1e9,
                       spec.maximum if spec.maximum is not None else 1e9)
            default = float(spec.default or 0.0)
            w.setSingleStep(10 ** math.floor(math.log10(abs(default))) / 10 if default else 0.1)
            w.setSpecialValueText(getattr(spec, "minimum_means", ""))  # shown while the value is the minimum
            w.valueChanged.connect(lambda v, n=name: self._changed(n, float(v)))
        elif spec.kind == "int":
            w = QSpinBox()
            w.setRange(int(spec.minimum) if spec.minimum is not None else -INT_LIMIT,
                       int(spec.maximum) if spec.maximum is not None else INT_LIMIT)
            w.setSpecialValueText(getattr(spec, "minimum_means", ""))
            w.valueChanged.connect(lambda v, n=name: self._changed(n, int(v)))
        elif spec.kind == "bool":
            w = QCheckBox()
            w.toggled.connect(lambda v, n=name: self._changed(n, bool(v)))
        elif spec.kind == "choice":
            w = QComboBox()
            w.addItems([str(c) for c in spec.choices])
            w.currentTextChanged.connect(lambda v, n=name: self._changed(n, v))
        else:
            w = QLineEdit()
            w.editingFinished.connect(lambda n=name, e=w: self._changed(n, e.text()))
        return w

    def set_values(self, values: dict[str, Any]) -> None:
        self._updating = True
        try:
            for name, spec in self.specs.items():
                value = values.get(name, spec.default)
                w = self.editors[name]
                if isinstance(w, QDoubleSpinBox):
                    w.setValue(float(value))
                elif isinstance(w, QSpinBox):
                    w.setValue(int(value))
                elif isinstance(w, QCheckBox):
                    w.setChecked(bool(value))
                elif isinstance(w, QComboBox):
                    w.setCurrentText(str(value))
                elif isinstance(w, QLineEdit):
                    w.setText("" if value is None else str(value))
        finally:
            self._updating = False

    def values(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, w in self.editors.items():
            if isinstance(w, QDoubleSpinBox):
                out[name] = float(w.value())
            elif isinstance(w, QSpinBox):
                out[name] = int(w.value())
            elif isinstance(w, QCheckBox):
                out[name] = w.isChecked()
            elif isinstance(w, QComboBox):
                out[name] = w.currentText()
            elif isinstance(w, QLineEdit):
                out[name] = w.text()
        return out

    def _changed(self, name: str, value: Any) -> None:
        if not self._updating:
            self.param_changed.emit(name, value)
