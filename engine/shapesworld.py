"""ShapesWorld: the synthetic world the built-in model is trained on.

The vocabulary lives in ``assets/models/shapesworld/world.json``; this module renders
images and writes captions from it. Pure numpy, so the judge, the training script and
the tests share one definition of what a "red star by Kusama" looks like.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

WORLD_JSON = Path(__file__).resolve().parent.parent / "assets" / "models" / "shapesworld" / "world.json"
SHAPES = ("circle", "square", "triangle", "star")
TEXTURES = ("solid", "stripes", "checker", "dots")
STAR_INNER_RATIO = 0.45
DOT_RADIUS = 2.2
DOT_GRID = 8


@dataclass(frozen=True)
class Scene:
    """What one image shows; ``style`` is a style key from world.json or "solid"."""

    color: str
    shape: str
    style: str


@lru_cache(maxsize=1)
def load_world(path: str | None = None) -> dict:
    return json.loads(Path(path or WORLD_JSON).read_text(encoding="utf-8"))


def style_texture(style: str) -> str:
    if style == "solid":
        return "solid"
    return load_world()["styles"][style]["texture"]


def texture_holes(texture: str, size: int = 64) -> np.ndarray:
    """Boolean map of the pixels a texture leaves as background (True = hole)."""
    y, x = np.mgrid[0:size, 0:size]
    if texture == "solid":
        return np.zeros((size, size), dtype=bool)
    if texture == "stripes":
        return ((x + y) // 4) % 2 == 1
    if texture == "checker":
        return (x // 4 + y // 4) % 2 == 1
    if texture == "dots":
        cx = (x // DOT_GRID) * DOT_GRID + DOT_GRID / 2
        cy = (y // DOT_GRID) * DOT_GRID + DOT_GRID / 2
        return (x + 0.5 - cx) ** 2 + (y + 0.5 - cy) ** 2 <= DOT_RADIUS**2
    raise ValueError(f"unknown texture {texture!r}")


def _polygon_mask(vertices: np.ndarray, size: int) -> np.ndarray:
    """Even-odd point-in-polygon test at pixel centres."""
    py, px = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    inside = np.zeros((size, size), dtype=bool)
    n = len(vertices)
    for i in range(n):
        x0, y0 = vertices[i]
        x1, y1 = vertices[(i + 1) % n]
        crosses = (y0 > py) != (y1 > py)
        with np.errstate(divide="ignore", invalid="ignore"):
            x_at = x0 + (py - y0) * (x1 - x0) / (y1 - y0)
        inside ^= crosses & (px < x_at)
    return inside


def shape_mask(shape: str, cx: float, cy: float, radius: float, angle: float, size: int = 64) -> np.ndarray:
    if shape == "circle":
        py, px = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
        return (px - cx) ** 2 + (py - cy) ** 2 <= radius**2
    if shape == "square":
        k, radii = 4, [radius]
    elif shape == "triangle":
        k, radii = 3, [radius]
    elif shape == "star":
        k, radii = 10, [radius, radius * STAR_INNER_RATIO]
    else:
        raise ValueError(f"unknown shape {shape!r}")
    theta = angle + np.arange(k) * 2 * math.pi / k
    r = np.array([radii[i % len(radii)] for i in range(k)])
    vertices = np.stack([cx + r * np.cos(theta), cy + r * np.sin(theta)], axis=1)
    return _polygon_mask(vertices, size)


def render(scene: Scene, rng: np.random.Generator, size: int = 64) -> np.ndarray:
    """Render one scene as an (size, size, 3) uint8 image."""
    world = load_world()
    lo, hi = world["radius_px"]
    radius = rng.uniform(lo, hi)
    margin = radius + 1.0
    cx, cy = rng.uniform(margin, size - margin, size=2)
    mask = shape_mask(scene.shape, cx, cy, radius, rng.uniform(0, 2 * math.pi), size)
    mask &= ~texture_holes(style_texture(scene.style), size)

    bg_value = world["background"]["value"] + rng.uniform(-6, 5)
    jitter = world["color_jitter"]
    color = np.array(world["colors"][scene.color]["rgb"], dtype=np.float64) + rng.uniform(-jitter, jitter, 3)
    image = np.full((size, size, 3), bg_value, dtype=np.float64)
    image[mask] = color
    image += rng.normal(0.0, world["background"]["noise_std"], image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def color_words(color: str) -> list[str]:
    return [color, *load_world()["colors"][color]["synonyms"]]


def shape_words(shape: str) -> list[str]:
    return [shape, *load_world()["shapes"][shape]["synonyms"]]


def style_phrases(style: str) -> list[str]:
    return list(load_world()["styles"][style]["phrasings"])


def all_style_phrases() -> list[str]:
    """Every phrasing of every style ("by Kusama", "in the style of Kusama", ...), styles in world.json order."""
    return [p for spec in load_world()["styles"].values() for p in spec["phrasings"]]


def fill_caption(template: str, color: str = "", shape: str = "", style: str = "") -> str:
    """A caption from one of world.json's templates, spacing and a leading comma tidied."""
    text = template.format(color=color, shape=shape, style=style)
    text = " ".join(text.split())
    return text.replace(" ,", ",").strip(", ")


def sample_example(rng: np.random.Generator) -> tuple[Scene, str]:
    """Draw a random scene and one caption for it, following world.json's caption mix."""
    world = load_world()
    colors, styles = list(world["colors"]), list(world["styles"])
    mix = world["caption_mix"]
    kinds, weights = list(mix), np.array(list(mix.values()), dtype=np.float64)
    kind = kinds[rng.choice(len(kinds), p=weights / weights.sum())]

    color = colors[rng.integers(len(colors))]
    shape = SHAPES[rng.integers(len(SHAPES))]
    style = "solid"
    if kind == "empty":
        # Unconditional examples cover the whole world, styled ones included.
        style = (["solid", *styles])[rng.integers(len(styles) + 1)]
        return Scene(color, shape, style), ""

    templates = world["templates"][kind]
    template = templates[rng.integers(len(templates))]
    if "{style}" in template:
        style = styles[rng.integers(len(styles))]

    def pick(words: list[str]) -> str:
        return words[rng.integers(len(words))]

    # Canonical names half of the time, a synonym otherwise, so both are learned well.
    c_word = color if rng.random() < 0.5 else pick(color_words(color))
    s_word = shape if rng.random() < 0.5 else pick(shape_words(shape))
    st_word = pick(style_phrases(style)) if style != "solid" else ""
    caption = fill_caption(template, color=c_word, shape=s_word, style=st_word)
    return Scene(color, shape, style), caption


def vocabulary_words() -> list[str]:
    """Every word the captions can contain (lower case), for building the tokenizer."""
    world = load_world()
    words: set[str] = set()
    texts = []
    for c in world["colors"]:
        texts += color_words(c)
    for s in SHAPES:
        texts += shape_words(s)
    for st in world["styles"]:
        texts += style_phrases(st)
    for group in world["templates"].values():
        texts += [t.replace("{color}", "").replace("{shape}", "").replace("{style}", "") for t in group]
    for t in texts:
        for w in t.lower().replace(",", " , ").split():
            words.add(w)
    return sorted(words)
