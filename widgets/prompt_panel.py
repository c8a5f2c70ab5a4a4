"""Preview settings above the grid: test prompts (one per line), seeds, steps, size, difference view."""

from __future__ import annotations

from PySide6.QtCore import QTimer, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)


def parse_seeds(text: str) -> list[int] | None:
    """"0, 1, 5-7" -> [0, 1, 5, 6, 7]; None if the text is not a seed list."""
    seeds: list[int] = []
    try:
        for part in text.replace(" ", "").split(","):
            if not part:
                continue
            if "-" in part[1:]:
                lo, hi = part.split("-", 1)
                seeds.extend(range(int(lo), int(hi) + 1))
            else:
                seeds.append(int(part))
    except ValueError:
        return None
    if not seeds or len(seeds) > 16 or any(s < 0 or s > 2**32 - 1 for s in seeds):
        return None
    return list(dict.fromkeys(seeds))


class PromptPanel(QWidget):
    prompts_edited = Signal(list)
    prompts_reset = Signal()
    seeds_edited = Signal(list)
    steps_changed = Signal(int)
    size_changed = Signal(int)
    diff_toggled = Signal(bool)

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.prompts = QPlainTextEdit()
        self.prompts.setPlaceholderText("One test prompt per line")
        self.prompts.setToolTip("Test prompts, one per line: rows of the grid. By default they follow the concepts.")
        self.prompts.setMaximumHeight(88)
        self.reset = QPushButton("Defaults")
        self.reset.setToolTip("Derive the test prompts from the concepts again")
        self.auto_label = QLabel()
        self.auto_label.setObjectName("muted")
        self.seeds = QLineEdit()
        self.seeds.setToolTip("Seeds, the grid's columns: e.g. 0, 1 or 0-3 (at most 16)")
        self.seeds.setMaximumWidth(110)
        self.steps = QSpinBox()
        self.steps.setRange(2, 100)
        self.steps.setToolTip("Sampling steps for previews (fewer is faster)")
        self.size = QComboBox()
        self.size.setToolTip("Preview image size; smaller is faster and uses less memory")
        for title, value in (("native", 0), ("256", 256), ("384", 384), ("512", 512), ("768", 768)):
            self.size.addItem(title, value)
        self.diff = QCheckBox("Difference")
        self.diff.setToolTip("Show |after − before| (amplified) instead of the after image")

        settings = QHBoxLayout()
        settings.addWidget(QLabel("Seeds"))
        settings.addWidget(self.seeds)
        settings.addWidget(QLabel("Steps"))
        settings.addWidget(self.steps)
        settings.addWidget(QLabel("Size"))
        settings.addWidget(self.size)
        settings.addStretch(1)
        settings.addWidget(self.diff)
        side = QVBoxLayout()
        side.addWidget(self.reset)
        side.addWidget(self.auto_label)
        side.addStretch(1)
        top = QHBoxLayout()
        top.addWidget(self.prompts, 1)
        top.addLayout(side)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(top)
        layout.addLayout(settings)

        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(700)
        self._timer.timeout.connect(self._emit_prompts)
        self._updating = False
        self.prompts.textChanged.connect(self._on_text)
        self.reset.clicked.connect(self.prompts_reset)
        self.seeds.editingFinished.connect(self._emit_seeds)
        self.steps.editingFinished.connect(lambda: self.steps_changed.emit(self.steps.value()))
        self.size.currentIndexChanged.connect(lambda _i: None if self._updating else
                                              self.size_changed.emit(int(self.size.currentData())))
        self.diff.toggled.connect(self.diff_toggled)

    def set_values(self, prompts: list[str], custom: bool, seeds: list[int], steps: int, size: int) -> None:
        self._updating = True
        try:
            text = "\n".join(prompts)
            if self.prompts.toPlainText().strip() != text.strip() and not self._timer.isActive():
                self.prompts.setPlainText(text)
            self.auto_label.setText("edited" if custom else "from concepts")
            seeds_text = ", ".join(str(s) for s in seeds)
            if parse_seeds(self.seeds.text()) != seeds:
                self.seeds.setText(seeds_text)
            self.steps.setValue(steps)
            self.size.setCurrentIndex(max(0, self.size.findData(size)))
        finally:
            self._updating = False

    def flush(self) -> None:
        """Send a pending prompt edit now (before Erase or a save)."""
        if self._timer.isActive():
            self._timer.stop()
            self._emit_prompts()

    def _on_text(self) -> None:
        if not self._updating:
            self._timer.start()

    def _emit_prompts(self) -> None:
        prompts = [line.strip() for line in self.prompts.toPlainText().splitlines() if line.strip()]
        self.prompts_edited.emit(prompts)

    def _emit_seeds(self) -> None:
        seeds = parse_seeds(self.seeds.text())
        if seeds is None:
            self.seeds.setStyleSheet("background: #f8d4d4;")
            self.seeds.setToolTip("Not a seed list: use numbers like 0, 1 or 0-3 (at most 16 seeds).")
            return
        self.seeds.setStyleSheet("")
        self.seeds_edited.emit(seeds)
