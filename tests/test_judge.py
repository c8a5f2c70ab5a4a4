"""The judge must be right on freshly rendered ShapesWorld images of every combination."""

import itertools

import numpy as np

from engine.judge import NONE, judge_image
from engine.shapesworld import SHAPES, Scene, load_world, render


def test_judge_is_right_on_fresh_renders_of_every_combination():
    world = load_world()
    rng = np.random.default_rng(12345)
    wrong, total = 0, 0
    per_combo_wrong = {}
    for color, shape, style in itertools.product(world["colors"], SHAPES, ["solid", *world["styles"]]):
        for _ in range(6):
            verdict = judge_image(render(Scene(color, shape, style), rng))
            ok = (verdict.color, verdict.shape, verdict.style) == (color, shape, style)
            wrong += not ok
            total += 1
            per_combo_wrong[(color, shape, style)] = per_combo_wrong.get((color, shape, style), 0) + (not ok)
    assert wrong / total <= 0.01, f"{wrong}/{total} wrong"
    assert max(per_combo_wrong.values()) <= 1  # no combination is systematically misread


def test_blank_image_shows_nothing():
    image = np.full((64, 64, 3), 245, dtype=np.uint8)
    verdict = judge_image(image)
    assert (verdict.color, verdict.shape, verdict.style) == (NONE, NONE, NONE)


def test_texture_phase_does_not_matter():
    rng = np.random.default_rng(3)
    image = render(Scene("blue", "square", "riley"), rng)
    shifted = np.roll(image, shift=(2, 3), axis=(0, 1))  # the texture moves off the absolute grid
    assert judge_image(shifted).style == "riley"


def test_verdict_keeps_the_painted_color_it_was_read_from():
    world = load_world()
    rng = np.random.default_rng(7)
    for color in world["colors"]:
        verdict = judge_image(render(Scene(color, "circle", "solid"), rng))
        # the renderer jitters each channel by at most 15
        assert np.abs(np.array(verdict.rgb) - np.array(world["colors"][color]["rgb"])).max() <= 20, color
    blank = judge_image(np.full((64, 64, 3), 245, dtype=np.uint8))
    assert blank.rgb is None
    # the color it was read from is a measurement, not part of what the image shows
    assert verdict == type(verdict)(verdict.color, verdict.shape, verdict.style)
