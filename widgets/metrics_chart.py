"""Erasure metrics drawn with QPainter: three bars and an efficacy/specificity-vs-strength chart.

Efficacy and generality are shares of images that still show the erased concept (lower is
better); specificity is accuracy on everything else relative to the unedited model (higher
is better); the probe's recovery rate is the share of images in which the adversarial
embedding brings the concept back (lower is more robust). The unedited value, when known, is
drawn as a tick on each bar.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from PySide6.QtCore import QPointF, QRectF, QSize, Qt
from PySide6.QtGui import QColor, QFont, QPainter, QPainterPath, QPen
from PySide6.QtWidgets import QSizePolicy, QWidget

EFFICACY_COLOR = QColor("#d0433b")
GENERALITY_COLOR = QColor("#e69138")
SPECIFICITY_COLOR = QColor("#3b78d0")
PROBE_COLOR = QColor("#8e5bc4")


@dataclass
class MetricsData:
    efficacy: float | None = None
    generality: float | None = None
    specificity: float | None = None
    efficacy_unedited: float | None = None
    generality_unedited: float | None = None
    curve: list[tuple[float, float | None, float | None]] = field(default_factory=list)  # (strength, eff, spec)
    note: str = ""
    probe: float | None = None  # adversarial-embedding recovery rate; its bar is drawn only when measured


class MetricsChart(QWidget):
    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.data: MetricsData | None = None
        self.strength: float | None = None
        self.empty_text = "No measurements yet."
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.setMinimumHeight(260)

    def sizeHint(self) -> QSize:
        return QSize(300, 320)

    def set_data(self, data: MetricsData | None, strength: float | None = None) -> None:
        self.data, self.strength = data, strength
        self.update()

    def set_strength(self, strength: float | None) -> None:
        self.strength = strength
        self.update()

    def paintEvent(self, _event) -> None:
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        text = self.palette().color(self.palette().ColorRole.WindowText)
        muted = QColor(text)
        muted.setAlpha(140)
        r = QRectF(self.rect()).adjusted(6, 6, -6, -6)
        if self.data is None:
            p.setPen(muted)
            p.drawText(r, Qt.AlignmentFlag.AlignCenter | Qt.TextFlag.TextWordWrap, self.empty_text)
            return
        bars_h = len(self._bar_rows()) * 26 + 6
        self._paint_bars(p, QRectF(r.left(), r.top(), r.width(), bars_h), text, muted)
        self._paint_curve(p, QRectF(r.left(), r.top() + bars_h + 10, r.width(), r.height() - bars_h - 10), text, muted)
        p.end()

    def _bar_rows(self) -> list[tuple[str, float | None, float | None, QColor]]:
        """(label, value, unedited reference, color) per bar; the probe's unedited reference is efficacy's."""
        d = self.data
        rows = [("Efficacy ↓", d.efficacy, d.efficacy_unedited, EFFICACY_COLOR),
                ("Generality ↓", d.generality, d.generality_unedited, GENERALITY_COLOR),
                ("Specificity ↑", d.specificity, 1.0 if d.specificity is not None else None, SPECIFICITY_COLOR)]
        if d.probe is not None:
            rows.append(("Probe ↓", d.probe, d.efficacy_unedited, PROBE_COLOR))
        return rows

    def _paint_bars(self, p: QPainter, r: QRectF, text: QColor, muted: QColor) -> None:
        label_w, value_w = 92.0, 44.0
        for i, (name, value, reference, color) in enumerate(self._bar_rows()):
            y = r.top() + i * 26
            p.setPen(text)
            p.drawText(QRectF(r.left(), y, label_w, 20), Qt.AlignmentFlag.AlignVCenter, name)
            track = QRectF(r.left() + label_w, y + 3, r.width() - label_w - value_w, 14)
            p.fillRect(track, QColor(128, 128, 128, 45))
            if value is not None:
                p.fillRect(QRectF(track.left(), track.top(), track.width() * max(0.0, min(1.0, value)), track.height()),
                           color)
            if reference is not None:
                x = track.left() + track.width() * max(0.0, min(1.0, reference))
                p.setPen(QPen(text, 2))
                p.drawLine(QPointF(x, track.top() - 3), QPointF(x, track.bottom() + 3))
            p.setPen(text)
            p.drawText(QRectF(track.right() + 4, y, value_w - 4, 20), Qt.AlignmentFlag.AlignVCenter,
                       "–" if value is None else f"{value:.0%}")

    def _paint_curve(self, p: QPainter, r: QRectF, text: QColor, muted: QColor) -> None:
        small = QFont(self.font())
        small.setPointSizeF(max(7.0, self.font().pointSizeF() - 1))
        p.setFont(small)
        plot = r.adjusted(34, 20, -8, -22)
        p.setPen(text)
        p.drawText(QRectF(r.left(), r.top(), r.width(), 16), Qt.AlignmentFlag.AlignLeft, "vs strength")
        legend_x = r.right() - 170
        for i, (name, color) in enumerate((("efficacy", EFFICACY_COLOR), ("specificity", SPECIFICITY_COLOR))):
            x = legend_x + i * 85
            p.setPen(QPen(color, 2))
            p.drawLine(QPointF(x, r.top() + 8), QPointF(x + 16, r.top() + 8))
            p.setPen(text)
            p.drawText(QRectF(x + 20, r.top(), 64, 16), Qt.AlignmentFlag.AlignLeft, name)
        p.setPen(QPen(muted, 1))
        p.drawRect(plot)
        max_s = 1.5
        for frac in (0.0, 0.5, 1.0):
            y = plot.bottom() - frac * plot.height()
            p.drawText(QRectF(r.left(), y - 8, 30, 16), Qt.AlignmentFlag.AlignRight, f"{frac:.0%}")
            p.drawLine(QPointF(plot.left(), y), QPointF(plot.left() + 3, y))
        for s in (0.0, 0.5, 1.0, 1.5):
            x = plot.left() + s / max_s * plot.width()
            p.drawText(QRectF(x - 15, plot.bottom() + 3, 30, 16), Qt.AlignmentFlag.AlignCenter, f"{s:g}")
        if self.strength is not None:
            x = plot.left() + min(max_s, max(0.0, self.strength)) / max_s * plot.width()
            p.setPen(QPen(muted, 1, Qt.PenStyle.DashLine))
            p.drawLine(QPointF(x, plot.top()), QPointF(x, plot.bottom()))
        curve = sorted(self.data.curve)
        if not curve:
            p.setPen(muted)
            p.drawText(plot, Qt.AlignmentFlag.AlignCenter | Qt.TextFlag.TextWordWrap,
                       self.data.note or "Measure with “sweep” to draw this curve.")
            return
        for index, color in ((1, EFFICACY_COLOR), (2, SPECIFICITY_COLOR)):
            points = [QPointF(plot.left() + s / max_s * plot.width(), plot.bottom() - v * plot.height())
                      for s, *vals in curve if (v := vals[index - 1]) is not None]
            if not points:
                continue
            path = QPainterPath(points[0])
            for pt in points[1:]:
                path.lineTo(pt)
            p.setPen(QPen(color, 2))
            p.drawPath(path)
            p.setBrush(color)
            for pt in points:
                p.drawEllipse(pt, 3, 3)
            p.setBrush(Qt.BrushStyle.NoBrush)
