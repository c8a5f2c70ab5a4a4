"""A banner for errors and notices: one plain sentence, an expandable detail, an optional action."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QFrame, QHBoxLayout, QLabel, QPlainTextEdit, QPushButton, QToolButton, QVBoxLayout

LEVEL_STYLE = {
    "error": ("#fde8e8", "#b42318", "✖"),
    "warning": ("#fff4e0", "#9a5b00", "⚠"),
    "info": ("#e8f1fd", "#1f4f99", "ℹ"),
}


class ErrorBanner(QFrame):
    """Hidden until ``show_message``; the user dismisses it or presses its action button."""

    action_clicked = Signal(str)
    dismissed = Signal()

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.setObjectName("banner")
        self._action = ""
        self.icon = QLabel()
        self.message = QLabel()
        self.message.setObjectName("bannerMessage")
        self.message.setWordWrap(True)
        self.message.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.details_button = QToolButton()
        self.details_button.setText("Details")
        self.details_button.setCheckable(True)
        self.action_button = QPushButton()
        self.close_button = QToolButton()
        self.close_button.setText("✕")
        self.close_button.setToolTip("Dismiss")
        self.detail = QPlainTextEdit()
        self.detail.setReadOnly(True)
        self.detail.setMaximumHeight(140)
        self.detail.hide()

        row = QHBoxLayout()
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.icon)
        row.addWidget(self.message, 1)
        row.addWidget(self.details_button)
        row.addWidget(self.action_button)
        row.addWidget(self.close_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(10, 6, 6, 6)
        layout.addLayout(row)
        layout.addWidget(self.detail)

        self.details_button.toggled.connect(self.detail.setVisible)
        self.close_button.clicked.connect(self._dismiss)
        self.action_button.clicked.connect(lambda: self.action_clicked.emit(self._action))
        self.hide()

    def show_message(self, message: str, detail: str = "", level: str = "error", action: str = "") -> None:
        background, foreground, icon = LEVEL_STYLE.get(level, LEVEL_STYLE["error"])
        self.setStyleSheet(f"#banner {{ background: {background}; border: 1px solid {foreground};"
                           f" border-radius: 4px; }} #banner QLabel {{ color: {foreground}; }}")
        self.icon.setText(icon)
        self.message.setText(message)
        self.detail.setPlainText(detail)
        self.details_button.setVisible(bool(detail))
        self.details_button.setChecked(False)
        self._action = action
        self.action_button.setText(action)
        self.action_button.setVisible(bool(action))
        self.show()

    def clear(self) -> None:
        self.hide()

    def _dismiss(self) -> None:
        self.hide()
        self.dismissed.emit()
