"""Spot check outside the evaluation suite: is the erased concept gone in every caption form of the built-in model?

The suite's color and shape prompts are plain captions ("a red circle"); a quarter of the model's training
captions also name a style ("by Vasarely, a crimson circle"). For each row
``method:concept[:anchor][,key=value...]`` this erases the concept with the method's defaults (and any given
parameters) and counts, over every caption template of world.json (each filled with the concept's words,
shapes and style phrasings in turn), the images that still show it, and the same for its nearest sibling
(which should keep showing itself). Results are counts of images, the styled captions separately. Findings
are kept in docs/erasure-results-notes.md.

``--hue-judge`` also counts colors with a second rule, the canonical color of nearest hue (saturation and
brightness ignored), instead of the suite judge's nearest sRGB: a check that a figure does not hang on where one
judge puts the border between two colors.

``--steps``, ``--guidance`` and ``--scheduler`` sample with other settings than the suite's (25 DDIM steps,
guidance 5), as a user or another evaluation might.

Usage: python scripts/caption_spot_check.py unedited:red uce:red esd-x:red ca:red:blue esd-x:red,lr=1e-4 [--seeds 4]
"""

from __future__ import annotations

import argparse
import colorsys
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.generate import SCHEDULERS, GenerationRequest, generate
from engine.judge import Verdict, judge_images
from engine.methods import EraseRequest, erase
from engine.model import load_model
from engine.shapesworld import load_world


def caption_sets(world: dict) -> dict[str, tuple[str, dict[str, list[str]]]]:
    """Per checkable concept: the judged attribute and, per judged value, its prompts (concept, then a sibling)."""
    shapes, colors = list(world["shapes"]), list(world["colors"])
    phrasings = [p for s in world["styles"].values() for p in s["phrasings"]]
    t = world["templates"]

    pools = {"color": colors, "shape": shapes, "style": phrasings}

    def fill(forms: list[str], slot: str, words: list[str]) -> list[str]:
        """Each word in each form; the other slots cycle through their pools (styles faster, per word)."""
        out = []
        for a, word in enumerate(words):
            for b, form in enumerate(forms):
                values = {k: pool[((a * 5 if k == "style" else a) + b) % len(pool)] for k, pool in pools.items()}
                out.append(form.format(**(values | {slot: word})))
        return out

    color_forms = t["color_shape"] + t["color_shape_style"] + t["color_only"]
    shape_forms = t["color_shape"] + t["color_shape_style"] + t["shape_only"]
    style_forms = t["color_shape_style"] + [t["shape_only"][2], t["color_only"][2]] + t["style_only"]
    styles = world["styles"]
    return {
        "red": ("color", {"red": fill(color_forms, "color", ["red", *world["colors"]["red"]["synonyms"]]),
                          "orange": fill(color_forms, "color", ["orange", *world["colors"]["orange"]["synonyms"]])}),
        "star": ("shape", {"star": fill(shape_forms, "shape", ["star", *world["shapes"]["star"]["synonyms"]]),
                           "square": fill(shape_forms, "shape", ["square", *world["shapes"]["square"]["synonyms"]])}),
        "by Kusama": ("style", {"kusama": fill(style_forms, "style", styles["kusama"]["phrasings"]),
                                "riley": fill(style_forms, "style", styles["riley"]["phrasings"])}),
    }


def hue_color(verdict: Verdict, world: dict) -> str | None:
    """The canonical color whose hue is nearest the verdict's painted color (None when nothing is painted)."""
    if verdict.rgb is None:
        return None

    def hue(rgb) -> float:
        return colorsys.rgb_to_hsv(*(c / 255 for c in rgb))[0]

    def distance(color: str) -> float:  # around the hue circle
        d = abs(hue(verdict.rgb) - hue(world["colors"][color]["rgb"]))
        return min(d, 1 - d)

    return min(world["colors"], key=distance)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rows", nargs="+",
                        help="method:concept[:anchor][,key=value...], method 'unedited' for the base model")
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--hue-judge", action="store_true", help="also count colors by nearest hue")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--guidance", type=float, default=5.0)
    parser.add_argument("--scheduler", choices=SCHEDULERS, default="ddim")
    args = parser.parse_args()
    model = load_model()
    world = load_world()
    sets = caption_sets(world)
    seeds = list(range(args.seeds))
    for row in args.rows:
        head, *settings = row.split(",")
        method, concept, *anchors = head.split(":")
        params = dict(setting.split("=", 1) for setting in settings)
        if concept not in sets:
            parser.error(f"{concept!r} is not checkable; use one of {', '.join(sets)}")
        started = time.perf_counter()
        model.stack.clear()
        if method != "unedited":
            model.stack.push(erase(model, EraseRequest(method, [concept], anchors=anchors, params=params)), 1.0)
        kind, prompts_by_value = sets[concept]
        by_hue_too = args.hue_judge and kind == "color"
        counts = []
        for value, prompts in prompts_by_value.items():
            shown = styled = styled_total = by_hue = 0
            for prompt in prompts:
                request = GenerationRequest(prompt, seeds=seeds, steps=args.steps, guidance=args.guidance,
                                            scheduler=args.scheduler)
                verdicts = judge_images(generate(model, request))
                hits = sum(v.shows(kind, value) for v in verdicts)
                shown += hits
                if by_hue_too:
                    by_hue += sum(hue_color(v, world) == value for v in verdicts)
                if "by " in prompt or "style" in prompt:
                    styled, styled_total = styled + hits, styled_total + len(verdicts)
            hue_note = f"; by hue {by_hue}" if by_hue_too else ""
            counts.append(f"{value} {shown}/{len(prompts) * len(seeds)} (styled {styled}/{styled_total}{hue_note})")
        print(f"{row}: {'; '.join(counts)}  [{time.perf_counter() - started:.0f} s]", flush=True)


if __name__ == "__main__":
    main()
