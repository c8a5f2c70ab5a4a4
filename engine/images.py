"""Small image helpers: deterministic PNG writing and grids."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any


def save_png(image: Any, path: Path) -> None:
    """Write a PNG with no time-stamped metadata, so equal images give equal bytes."""
    image.save(path, format="PNG", optimize=False)


def image_grid(images: list[Any], columns: int | None = None, pad: int = 2, background: int = 255) -> Any:
    from PIL import Image

    if not images:
        raise ValueError("no images for a grid")
    columns = columns or min(len(images), 8)
    rows = math.ceil(len(images) / columns)
    w, h = images[0].size
    grid = Image.new("RGB", (columns * (w + pad) + pad, rows * (h + pad) + pad), (background,) * 3)
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        grid.paste(image.convert("RGB"), (pad + c * (w + pad), pad + r * (h + pad)))
    return grid
