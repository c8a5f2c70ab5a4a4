"""PIL ↔ Qt image conversion, the only place it happens (GUI thread; no torch)."""

from __future__ import annotations

from typing import Any

from PySide6.QtGui import QImage


def pil_to_qimage(image: Any) -> QImage:
    rgb = image.convert("RGB")
    data = rgb.tobytes("raw", "RGB")
    qimage = QImage(data, rgb.width, rgb.height, rgb.width * 3, QImage.Format.Format_RGB888)
    return qimage.copy()  # own the pixels; ``data`` is freed when this returns


def difference(before: Any, after: Any, gain: float = 4.0) -> Any:
    """|after − before| amplified, so small changes are visible."""
    from PIL import ImageChops

    a, b = before.convert("RGB"), after.convert("RGB")
    if a.size != b.size:
        b = b.resize(a.size)
    return ImageChops.difference(a, b).point(lambda v: min(255, int(v * gain)))
