"""The ShapesWorld judge: says which color, shape and style an image shows.

Pure numpy and hand-written rules, so it needs no learned weights and cannot share
blind spots with the model it grades. ``judge_image`` returns "none" fields when no
object is visible.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from engine.shapesworld import SHAPES, load_world, texture_holes

NONE = "none"
_FOREGROUND_DISTANCE = 60.0  # max-channel distance from the background that counts as paint
_MIN_OBJECT_PIXELS = 40
_TEXTURE_STYLE = {"solid": "solid", "stripes": "riley", "checker": "vasarely", "dots": "kusama"}


@dataclass(frozen=True)
class Verdict:
    color: str
    shape: str
    style: str  # a style key from world.json ("riley", ...) or "solid"
    # the painted pixels' median sRGB, which ``color`` is the nearest canonical color to; kept so that another color
    # rule can be compared with this one (scripts/caption_spot_check.py --hue-judge). None when nothing is painted.
    rgb: tuple[float, float, float] | None = field(default=None, compare=False)

    def shows(self, kind: str, value: str) -> bool:
        return getattr(self, kind) == value


def _shift_max(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation by a disc, with numpy shifts."""
    out = mask.copy()
    padded = np.pad(mask, radius)
    h, w = mask.shape
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            if dx * dx + dy * dy <= radius * radius:
                out |= padded[radius + dy : radius + dy + h, radius + dx : radius + dx + w]
    return out


def _close(mask: np.ndarray, radius: int) -> np.ndarray:
    dilated = _shift_max(mask, radius)
    return ~_shift_max(~dilated, radius)


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """Keep the largest 8-connected component (a stray speck must not move the centroid)."""
    labels = np.zeros(mask.shape, dtype=np.int32)
    best, best_size, current = 0, 0, 0
    h, w = mask.shape
    for y0, x0 in zip(*np.nonzero(mask)):
        if labels[y0, x0]:
            continue
        current += 1
        stack, size = [(y0, x0)], 0
        labels[y0, x0] = current
        while stack:
            y, x = stack.pop()
            size += 1
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    ny, nx = y + dy, x + dx
                    if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not labels[ny, nx]:
                        labels[ny, nx] = current
                        stack.append((ny, nx))
        if size > best_size:
            best, best_size = current, size
    return labels == best


def _classify_shape(region: np.ndarray) -> str:
    """Read the shape from the harmonics of the boundary's radius-by-angle profile."""
    ys, xs = np.nonzero(region)
    cy, cx = ys.mean() + 0.5, xs.mean() + 0.5
    interior = region[1:-1, 1:-1] & region[:-2, 1:-1] & region[2:, 1:-1] & region[1:-1, :-2] & region[1:-1, 2:]
    boundary = region.copy()
    boundary[1:-1, 1:-1] &= ~interior
    by, bx = np.nonzero(boundary)
    angles = np.arctan2(by + 0.5 - cy, bx + 0.5 - cx)
    radii = np.hypot(by + 0.5 - cy, bx + 0.5 - cx)
    bins = 90
    index = ((angles + np.pi) / (2 * np.pi) * bins).astype(int) % bins
    profile = np.full(bins, np.nan)
    for b in range(bins):
        hit = radii[index == b]
        if hit.size:
            profile[b] = hit.max()
    valid = ~np.isnan(profile)
    if valid.sum() < bins // 3:
        return NONE
    positions = np.arange(bins)
    profile = np.interp(positions, positions[valid], profile[valid], period=bins)
    profile = profile / profile.mean()
    spectrum = np.abs(np.fft.rfft(profile - 1.0)) / bins * 2
    harmonics = {3: "triangle", 4: "square", 5: "star"}
    strongest = max(harmonics, key=lambda k: spectrum[k])
    if spectrum[strongest] < 0.075:
        return "circle"
    return harmonics[strongest]


def _classify_style(paint: np.ndarray, region: np.ndarray) -> str:
    """Compare the unpainted pixels inside the shape with each texture's hole pattern.

    Every texture repeats every 8 px, so each is tried at all 64 phases: a person reads
    stripes as stripes even when a generated image draws them a pixel off the grid.
    """
    size = paint.shape[0]
    core = region & ~_shift_max(~region, 1)  # skip the edge, where closing is least exact
    if core.sum() < 20:
        core = region
    holes = ~paint[core]
    scores = {"solid": float(np.mean(~holes))}
    for texture in ("stripes", "checker", "dots"):
        tiled = texture_holes(texture, size + 8)
        scores[texture] = max(
            float(np.mean(holes == tiled[dy : dy + size, dx : dx + size][core]))
            for dy in range(8) for dx in range(8)
        )
    return _TEXTURE_STYLE[max(scores, key=scores.get)]


def judge_image(image: np.ndarray) -> Verdict:
    """Judge one (H, W, 3) uint8 image."""
    pixels = np.asarray(image, dtype=np.float64)[..., :3]
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    background = np.median(border, axis=0)
    paint = np.abs(pixels - background).max(axis=-1) > _FOREGROUND_DISTANCE
    if paint.sum() < _MIN_OBJECT_PIXELS:
        return Verdict(NONE, NONE, NONE)
    region = _largest_component(_close(paint, 3))
    paint &= region
    if paint.sum() < _MIN_OBJECT_PIXELS:
        return Verdict(NONE, NONE, NONE)
    style = _classify_style(paint, region)
    if style != "solid":
        # Texture holes that open onto the outline nibble at corners; a wider closing restores them.
        region = _largest_component(_close(paint, 5))

    mean_rgb = np.median(pixels[paint], axis=0)
    colors = load_world()["colors"]
    color = min(colors, key=lambda c: float(np.sum((np.array(colors[c]["rgb"]) - mean_rgb) ** 2)))
    return Verdict(color, _classify_shape(region), style, tuple(float(c) for c in mean_rgb))


def judge_images(images: list) -> list[Verdict]:
    return [judge_image(np.asarray(im)) for im in images]


__all__ = ["NONE", "SHAPES", "Verdict", "judge_image", "judge_images"]
