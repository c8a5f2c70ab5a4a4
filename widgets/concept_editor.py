"""The concept editor: concepts to erase (with type, guide, anchor), a preserve list and presets.

Empty and duplicate concepts are flagged inline (red cell, tooltip, a line below the table)
as the user types, so Erase never has to refuse them after the fact.
"""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QAction, QColor
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QMenu,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

KINDS = ("object", "style", "color", "other")
COLUMNS = ("Concept", "Type", "Guide", "Anchor")
GUIDE_TIP = "What the concept should turn into; empty uses the method's default."
ANCHOR_TIP = "A related, harmless concept the method maps the erased one onto (Concept Ablation)."


def concept_key(text: str) -> str:
    """What two spellings of one concept share: "By  Kusama" and "by kusama" are the same concept."""
    return " ".join(text.lower().split())


def unlisted(listed: list[str], texts: list[str]) -> list[int]:
    """Indices of ``texts`` whose concept is neither in ``listed`` nor earlier in ``texts``."""
    seen = {concept_key(t) for t in listed}
    fresh = []
    for i, text in enumerate(texts):
        key = concept_key(text)
        if key not in seen:
            seen.add(key)
            fresh.append(i)
    return fresh


def concept_problems(texts: list[str]) -> dict[int, str]:
    """Row -> one sentence, for empty and repeated concepts (case- and space-insensitive)."""
    problems: dict[int, str] = {}
    seen: dict[str, int] = {}
    for row, text in enumerate(texts):
        key = concept_key(text)
        if not key:
            problems[row] = f"Concept {row + 1} is empty; type a word or remove the row."
        elif key in seen:
            problems[row] = f"“{text.strip()}” is listed twice (rows {seen[key] + 1} and {row + 1})."
        else:
            seen[key] = row
    return problems


class ConceptEditor(QWidget):
    """Emits ``concepts_edited`` with [{text, kind, guide, anchor}], ``preserve_edited`` with [str] and
    ``import_requested`` when the user asks to add concepts from a text file."""

    concepts_edited = Signal(list)
    preserve_edited = Signal(list)
    import_requested = Signal()  # "From file…": the window asks for the file and calls add_concepts
    preserve_import_requested = Signal()  # the same for the preserve list (add_preserve)

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self._updating = False
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.verticalHeader().setVisible(False)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        header.setSectionResizeMode(1, QHeaderView.ResizeMode.Fixed)
        self.table.setColumnWidth(1, 92)
        header.setSectionResizeMode(2, QHeaderView.ResizeMode.Stretch)
        header.setSectionResizeMode(3, QHeaderView.ResizeMode.Stretch)
        self.table.horizontalHeaderItem(2).setToolTip(GUIDE_TIP)
        self.table.horizontalHeaderItem(3).setToolTip(ANCHOR_TIP)
        self.table.setMinimumHeight(110)
        self.table.setMaximumHeight(190)

        self.add_button = QPushButton("Add")
        self.add_button.setToolTip("Add a concept to erase")
        self.remove_button = QPushButton("Remove")
        self.import_button = QPushButton("From file…")
        self.import_button.setToolTip("Add concepts from a text file, one per line (lines starting with # are "
                                      "skipped); for erasing many concepts in one job")
        self.presets_button = QToolButton()
        self.presets_button.setText("Presets")
        self.presets_button.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
        self.presets_menu = QMenu(self)
        self.presets_button.setMenu(self.presets_menu)
        buttons = QHBoxLayout()
        buttons.addWidget(self.add_button)
        buttons.addWidget(self.remove_button)
        buttons.addWidget(self.import_button)
        buttons.addStretch(1)
        buttons.addWidget(self.presets_button)

        self.problems_label = QLabel()
        self.problems_label.setObjectName("problems")
        self.problems_label.setWordWrap(True)
        self.problems_label.hide()
        self.preserve = QLineEdit()
        self.preserve.setPlaceholderText("concepts to keep intact, comma-separated")
        self.preserve.setToolTip("Concepts the method must leave unchanged (used by closed-form methods).")

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.table)
        layout.addWidget(self.problems_label)
        layout.addLayout(buttons)
        preserve_row = QHBoxLayout()
        preserve_row.addWidget(QLabel("Preserve"))
        preserve_row.addWidget(self.preserve, 1)
        self.preserve_import_button = QToolButton()
        self.preserve_import_button.setText("…")
        self.preserve_import_button.setToolTip("Add concepts to keep intact from a text file, one per line")
        preserve_row.addWidget(self.preserve_import_button)
        layout.addLayout(preserve_row)

        self.add_button.clicked.connect(self.add_empty_row)
        self.remove_button.clicked.connect(self.remove_selected)
        self.import_button.clicked.connect(self.import_requested)
        self.preserve_import_button.clicked.connect(self.preserve_import_requested)
        self.table.itemChanged.connect(self._on_item_changed)
        self.preserve.editingFinished.connect(self._emit_preserve)

    # -- content
    def concepts(self) -> list[dict]:
        out = []
        for row in range(self.table.rowCount()):
            combo = self.table.cellWidget(row, 1)
            out.append({"text": self._text(row, 0), "kind": combo.currentText() if combo else "object",
                        "guide": self._text(row, 2), "anchor": self._text(row, 3)})
        return out

    def set_concepts(self, concepts: list[dict]) -> None:
        if concepts == self.concepts():
            return
        self._updating = True
        try:
            self.table.setRowCount(0)
            for concept in concepts:
                self._append_row(concept)
        finally:
            self._updating = False
        self._show_problems()

    def set_preserve(self, items: list[str]) -> None:
        text = ", ".join(items)
        if self.preserve.text() != text:
            self.preserve.setText(text)

    def set_presets(self, presets: dict[str, list[tuple[str, str]]]) -> None:
        """``{menu title: [(concept, kind), ...]}``; choosing one adds the concept."""
        self.presets_menu.clear()
        for title, items in presets.items():
            sub = self.presets_menu.addMenu(title)
            for text, kind in items:
                action = QAction(text, sub)
                action.triggered.connect(lambda _=False, t=text, k=kind: self.add_concept(t, k))
                sub.addAction(action)

    def set_columns_visible(self, guide: bool, anchor: bool) -> None:
        self.table.setColumnHidden(2, not guide)
        self.table.setColumnHidden(3, not anchor)

    def add_concept(self, text: str, kind: str = "object") -> None:
        """Append one concept; a duplicate is added and flagged, as when typed."""
        self._append_concepts([(text, kind)])

    def add_concepts(self, items: list[tuple[str, str]]) -> int:
        """Append (text, kind) pairs from a list, skipping any already listed (ignoring case and spacing); returns
        how many were added. One ``concepts_edited`` for the whole list."""
        fresh = [items[i] for i in unlisted([c["text"] for c in self.concepts()], [text for text, _ in items])]
        self._append_concepts(fresh)
        return len(fresh)

    def _append_concepts(self, items: list[tuple[str, str]]) -> None:
        concepts = [c for c in self.concepts() if c["text"].strip()]
        concepts += [{"text": text, "kind": kind if kind in KINDS else "other", "guide": "", "anchor": ""}
                     for text, kind in items]
        self.set_concepts(concepts)
        self._emit()

    def add_empty_row(self) -> None:
        self._updating = True
        try:
            self._append_row({"text": "", "kind": "object", "guide": "", "anchor": ""})
        finally:
            self._updating = False
        self._show_problems()
        row = self.table.rowCount() - 1
        self.table.setCurrentCell(row, 0)
        self.table.editItem(self.table.item(row, 0))

    def remove_selected(self) -> None:
        rows = sorted({i.row() for i in self.table.selectedIndexes()} or {self.table.currentRow()}, reverse=True)
        for row in rows:
            if 0 <= row < self.table.rowCount():
                self.table.removeRow(row)
        self._show_problems()
        self._emit()

    # -- internals
    def _text(self, row: int, col: int) -> str:
        item = self.table.item(row, col)
        return item.text() if item else ""

    def _append_row(self, concept: dict) -> None:
        row = self.table.rowCount()
        self.table.insertRow(row)
        self.table.setItem(row, 0, QTableWidgetItem(concept.get("text", "")))
        combo = QComboBox()
        combo.addItems(KINDS)
        combo.setCurrentText(concept.get("kind", "object"))
        combo.setToolTip("What kind of concept this is; it picks the default test prompts and guide.")
        combo.currentTextChanged.connect(lambda _t: self._emit())
        self.table.setCellWidget(row, 1, combo)
        guide = QTableWidgetItem(concept.get("guide", ""))
        guide.setToolTip(GUIDE_TIP)
        self.table.setItem(row, 2, guide)
        anchor = QTableWidgetItem(concept.get("anchor", ""))
        anchor.setToolTip(ANCHOR_TIP)
        self.table.setItem(row, 3, anchor)

    def _on_item_changed(self, _item: QTableWidgetItem) -> None:
        if self._updating:
            return
        self._show_problems()
        self._emit()

    def _show_problems(self) -> dict[int, str]:
        problems = concept_problems([self._text(r, 0) for r in range(self.table.rowCount())])
        self._updating = True
        try:
            for row in range(self.table.rowCount()):
                item = self.table.item(row, 0)
                if item is None:
                    continue
                message = problems.get(row, "")
                item.setBackground(QColor("#f8d4d4") if message else QColor(0, 0, 0, 0))
                item.setToolTip(message)
        finally:
            self._updating = False
        self.problems_label.setText("\n".join(problems.values()))
        self.problems_label.setVisible(bool(problems))
        return problems

    def problems(self) -> dict[int, str]:
        return concept_problems([self._text(r, 0) for r in range(self.table.rowCount())])

    def _emit(self) -> None:
        if not self._updating:
            self.concepts_edited.emit(self.concepts())

    def set_preserve_enabled(self, enabled: bool) -> None:
        self.preserve.setEnabled(enabled)
        self.preserve_import_button.setEnabled(enabled)

    def add_preserve(self, items: list[str]) -> int:
        """Append preserve concepts not already listed (ignoring case and spacing); returns how many were added."""
        current = self._preserve_items()
        fresh = [items[i] for i in unlisted(current, items)]
        self.preserve.setText(", ".join(current + fresh))
        self._emit_preserve()
        return len(fresh)

    def _preserve_items(self) -> list[str]:
        return [p.strip() for p in self.preserve.text().split(",") if p.strip()]

    def _emit_preserve(self) -> None:
        self.preserve_edited.emit(self._preserve_items())

    def keyPressEvent(self, event) -> None:
        if event.key() == Qt.Key.Key_Delete and self.table.hasFocus():
            self.remove_selected()
            return
        super().keyPressEvent(event)
