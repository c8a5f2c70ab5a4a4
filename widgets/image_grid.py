"""The before/after grid: rows are test prompts, columns are seeds, each cell a before|after pair.

Painted with QPainter rather than built from labels, so a refresh of many small images
costs one repaint. Images are QImages (the app converts); missing ones show a placeholder,
unfinished (intermediate) ones a dashed frame.
"""

from __future__ import annotations

from PySide6.QtCore import QRect, QSize, Qt, Signal
from PySide6.QtGui import QColor, QFont, QImage, QPainter, QPen
from PySide6.QtWidgets import QSizePolicy, QWidget

Cell = tuple[int, int]  # (row, column)


class BeforeAfterGrid(QWidget):
    """Click a pair to enlarge it (``cell_clicked``)."""

    cell_clicked = Signal(int, int)

    LABEL_W = 180
    HEADER_H = 40
    PAD = 10
    GAP = 4  # between before and after
    PAIR_GAP = 18

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.prompts: list[str] = []
        self.seeds: list[int] = []
        self.before: dict[Cell, QImage] = {}
        self.after: dict[Cell, QImage] = {}
        self.intermediate: set[Cell] = set()
        self.after_title = "after"
        self.placeholder = "Load a model to see previews"
        self.cell_size = 128
        self.auto_fit = True  # size cells to the visible width until the user zooms
        self.fit_width = 0
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.setMouseTracking(True)

    def set_content(self, prompts: list[str], seeds: list[int], before: dict[Cell, QImage],
                    after: dict[Cell, QImage], intermediate: set[Cell], after_title: str = "after") -> None:
        self.prompts, self.seeds = list(prompts), list(seeds)
        self.before, self.after, self.intermediate = before, after, intermediate
        self.after_title = after_title
        self._fit()
        self.updateGeometry()
        self.setMinimumSize(self.sizeHint())
        self.update()

    def set_cell_size(self, size: int) -> None:
        self.auto_fit = False
        self.cell_size = max(48, min(512, int(size)))
        self.setMinimumSize(self.sizeHint())
        self.update()

    def set_fit_width(self, width: int) -> None:
        """The width available (the scroll area's viewport); cells grow or shrink to use it."""
        self.fit_width = int(width)
        if self._fit():
            self.setMinimumSize(self.sizeHint())
            self.update()

    def _fit(self) -> bool:
        if not self.auto_fit or self.fit_width <= 0:
            return False
        cols = max(1, len(self.seeds))
        available = self.fit_width - 2 * self.PAD - self.LABEL_W - (cols - 1) * self.PAIR_GAP - cols * self.GAP
        size = max(64, min(192, available // (2 * cols)))
        changed = size != self.cell_size
        self.cell_size = size
        return changed

    def pair_width(self) -> int:
        return 2 * self.cell_size + self.GAP

    def sizeHint(self) -> QSize:
        cols, rows = max(1, len(self.seeds)), max(1, len(self.prompts))
        w = self.PAD * 2 + self.LABEL_W + cols * self.pair_width() + (cols - 1) * self.PAIR_GAP
        h = self.PAD * 2 + self.HEADER_H + rows * (self.cell_size + self.PAIR_GAP)
        return QSize(w, h)

    def cell_rect(self, row: int, col: int, which: int) -> QRect:
        """which: 0 before, 1 after."""
        x = self.PAD + self.LABEL_W + col * (self.pair_width() + self.PAIR_GAP) + which * (self.cell_size + self.GAP)
        y = self.PAD + self.HEADER_H + row * (self.cell_size + self.PAIR_GAP)
        return QRect(x, y, self.cell_size, self.cell_size)

    def cell_at(self, x: int, y: int) -> Cell | None:
        for r in range(len(self.prompts)):
            for c in range(len(self.seeds)):
                if self.cell_rect(r, c, 0).united(self.cell_rect(r, c, 1)).contains(x, y):
                    return r, c
        return None

    def mousePressEvent(self, event) -> None:
        cell = self.cell_at(int(event.position().x()), int(event.position().y()))
        if cell is not None and event.button() == Qt.MouseButton.LeftButton:
            self.cell_clicked.emit(*cell)
        super().mousePressEvent(event)

    def mouseMoveEvent(self, event) -> None:
        cell = self.cell_at(int(event.position().x()), int(event.position().y()))
        self.setCursor(Qt.CursorShape.PointingHandCursor if cell else Qt.CursorShape.ArrowCursor)
        super().mouseMoveEvent(event)

    def paintEvent(self, _event) -> None:
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, False)
        palette = self.palette()
        text_color = palette.color(palette.ColorRole.WindowText)
        muted = QColor(text_color)
        muted.setAlpha(150)
        if not self.prompts or not self.seeds:
            p.setPen(muted)
            p.drawText(self.rect(), Qt.AlignmentFlag.AlignCenter, self.placeholder)
            return
        small = QFont(self.font())
        small.setPointSizeF(max(7.0, self.font().pointSizeF() - 1))
        bold = QFont(self.font())
        bold.setBold(True)
        for c, seed in enumerate(self.seeds):
            top = self.cell_rect(0, c, 0).top()
            p.setFont(bold)
            p.setPen(text_color)
            pair = self.cell_rect(0, c, 0).united(self.cell_rect(0, c, 1))
            p.drawText(QRect(pair.left(), self.PAD, pair.width(), 18), Qt.AlignmentFlag.AlignCenter, f"seed {seed}")
            p.setFont(small)
            p.setPen(muted)
            for which, title in ((0, "before"), (1, self.after_title)):
                r = self.cell_rect(0, c, which)
                p.drawText(QRect(r.left(), top - 20, r.width(), 18), Qt.AlignmentFlag.AlignCenter, title)
        for r, prompt in enumerate(self.prompts):
            rect = self.cell_rect(r, 0, 0)
            p.setFont(self.font())
            p.setPen(text_color)
            p.drawText(QRect(self.PAD, rect.top(), self.LABEL_W - 12, rect.height()),
                       Qt.AlignmentFlag.AlignVCenter | Qt.AlignmentFlag.AlignLeft | Qt.TextFlag.TextWordWrap, prompt)
            for c in range(len(self.seeds)):
                for which, images in ((0, self.before), (1, self.after)):
                    self._paint_cell(p, self.cell_rect(r, c, which), images.get((r, c)),
                                     which == 1 and (r, c) in self.intermediate, muted)
        p.end()

    def _paint_cell(self, p: QPainter, rect: QRect, image: QImage | None, unfinished: bool, muted: QColor) -> None:
        if image is None or image.isNull():
            p.fillRect(rect, QColor(128, 128, 128, 40))
            p.setPen(muted)
            p.drawText(rect, Qt.AlignmentFlag.AlignCenter, "…")
            return
        p.drawImage(rect, image)
        if unfinished:
            pen = QPen(QColor("#e08a00"), 2, Qt.PenStyle.DashLine)
            p.setPen(pen)
            p.drawRect(rect.adjusted(1, 1, -1, -1))
