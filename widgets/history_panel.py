"""The edit history: the stack of edits with enable toggles, strength, remove and reorder."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QDoubleSpinBox,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QVBoxLayout,
    QWidget,
)


class _Row(QWidget):
    def __init__(self, index: int, label: str, strength: float, enabled: bool, note: str, panel: HistoryPanel) -> None:
        super().__init__()
        self.enabled = QCheckBox()
        self.enabled.setChecked(enabled)
        self.enabled.setToolTip("Apply this edit")
        self.label = QLabel(label)
        self.label.setToolTip(label + (f"\n{note}" if note else ""))
        self.strength = QDoubleSpinBox()
        self.strength.setRange(0.0, 1.5)
        self.strength.setSingleStep(0.05)
        self.strength.setDecimals(2)
        self.strength.setValue(strength)
        self.strength.setToolTip("Strength of this edit")
        self.strength.setKeyboardTracking(False)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(4, 2, 4, 2)
        layout.addWidget(self.enabled)
        layout.addWidget(self.label, 1)
        layout.addWidget(self.strength)
        self.enabled.toggled.connect(lambda v: panel.enabled_changed.emit(index, bool(v)))
        self.strength.valueChanged.connect(lambda v: panel.strength_changed.emit(index, float(v)))


class HistoryPanel(QWidget):
    enabled_changed = Signal(int, bool)
    strength_changed = Signal(int, float)
    remove_requested = Signal(int)
    move_requested = Signal(int, int)
    selection_changed = Signal(int)
    save_requested = Signal(int)

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.list = QListWidget()
        self.list.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.list.setMinimumHeight(90)
        self.empty = QLabel("No edits yet: add a concept and press Erase, or import an edit file (Ctrl+I).")
        self.empty.setObjectName("muted")
        self.empty.setWordWrap(True)
        self.up = QPushButton("Up")
        self.down = QPushButton("Down")
        self.remove = QPushButton("Remove")
        self.save = QPushButton("Save…")
        self.up.setToolTip("Apply this edit earlier")
        self.down.setToolTip("Apply this edit later")
        self.remove.setToolTip("Remove this edit (undo brings it back)")
        self.save.setToolTip("Save this edit as a file that 'main.py generate --edit', another session or a "
                             "colleague can apply (File > Import edit file)")
        buttons = QHBoxLayout()
        for b in (self.up, self.down, self.remove, self.save):
            buttons.addWidget(b)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.empty)
        layout.addWidget(self.list, 1)
        layout.addLayout(buttons)
        self.up.clicked.connect(lambda: self._move(-1))
        self.down.clicked.connect(lambda: self._move(1))
        self.remove.clicked.connect(self._remove)
        self.save.clicked.connect(lambda: self._emit_selected(self.save_requested))
        self.list.currentRowChanged.connect(self._on_row)
        self._updating = False
        self._update_buttons()

    def set_items(self, items: list[tuple[str, float, bool, str]], selected: int) -> None:
        """items: (label, strength, enabled, note)."""
        self._updating = True
        try:
            current = [(self.list.itemWidget(self.list.item(i)).label.text(),
                        self.list.itemWidget(self.list.item(i)).strength.value(),
                        self.list.itemWidget(self.list.item(i)).enabled.isChecked())
                       for i in range(self.list.count())]
            if current != [(a, b, c) for a, b, c, _ in items]:
                self.list.clear()
                for index, (label, strength, enabled, note) in enumerate(items):
                    item = QListWidgetItem()
                    row = _Row(index, label, strength, enabled, note, self)
                    item.setSizeHint(row.sizeHint())
                    self.list.addItem(item)
                    self.list.setItemWidget(item, row)
            if 0 <= selected < self.list.count():
                self.list.setCurrentRow(selected)
        finally:
            self._updating = False
        self.empty.setVisible(not items)
        self._update_buttons()

    def _on_row(self, row: int) -> None:
        self._update_buttons()
        if not self._updating and row >= 0:
            self.selection_changed.emit(row)

    def _move(self, delta: int) -> None:
        row = self.list.currentRow()
        target = row + delta
        if 0 <= row < self.list.count() and 0 <= target < self.list.count():
            self.move_requested.emit(row, target)

    def _remove(self) -> None:
        self._emit_selected(self.remove_requested)

    def _emit_selected(self, signal) -> None:
        row = self.list.currentRow()
        if 0 <= row < self.list.count():
            signal.emit(row)

    def _update_buttons(self) -> None:
        row, n = self.list.currentRow(), self.list.count()
        self.up.setEnabled(row > 0)
        self.down.setEnabled(0 <= row < n - 1)
        self.remove.setEnabled(0 <= row < n)
        self.save.setEnabled(0 <= row < n)

    def keyPressEvent(self, event) -> None:
        if event.key() == Qt.Key.Key_Delete:
            self._remove()
            return
        super().keyPressEvent(event)
