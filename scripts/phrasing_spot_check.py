"""Spot check outside the built-in model's caption templates: is an erased color gone, and are the other
colors kept, when a user phrases a prompt differently ("an orange circle", "the red star", "a box painted green")?

The evaluation suite and the model's captions always write a color after "a", "something" or a style. Users
do not. Each row ``method:concept[+concept...][,key=value...]`` erases the concepts with the method's defaults
(plus the given parameters) and counts, over ``PHRASINGS`` filled with every color (the shapes cycling), the
images that show the color asked for. ``COLOR_PARAPHRASES`` forms (which UCE's ``paraphrases`` option
trains on) are counted separately from the phrasings no method saw. Findings are kept in
docs/erasure-results-notes.md.

Usage: python scripts/phrasing_spot_check.py unedited uce:red uce:red,paraphrases=false uce:red+blue+by Riley \
           ca:red,anchor=blue
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.closed_form import COLOR_PARAPHRASES
from engine.generate import GenerationRequest, generate
from engine.judge import judge_images
from engine.methods import EraseRequest, erase
from engine.model import load_model
from engine.shapesworld import load_world

# none of these is a caption template of world.json
PHRASINGS = ("{an} {color} {shape}", "the {color} {shape}", "a {shape} painted {color}", "a {shape} that is {color}",
             "a small {color} {shape}", "a {color}-colored {shape}")


def prompts_for(color: str, shapes: list[str], forms: tuple[str, ...]) -> list[str]:
    an = "an" if color[0] in "aeiou" else "a"
    return [form.format(an=an, color=color, shape=shapes[i % len(shapes)]) for i, form in enumerate(forms)]


def parse_row(text: str) -> tuple[str, list[str], dict[str, str]]:
    head, *settings = text.split(",")
    method, _, concepts = head.partition(":")
    return method, [c for c in concepts.split("+") if c], dict(s.split("=", 1) for s in settings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rows", nargs="+", help="method:concept[+concept...][,key=value...], or 'unedited'")
    parser.add_argument("--seeds", type=int, default=4)
    args = parser.parse_args()
    model = load_model()
    world = load_world()
    shapes, colors = list(world["shapes"]), list(world["colors"])
    seeds = list(range(args.seeds))
    for row in args.rows:
        method, concepts, settings = parse_row(row)
        started = time.perf_counter()
        model.stack.clear()
        if method != "unedited":
            anchors = [settings.pop("anchor")] if "anchor" in settings else []  # Concept Ablation's "red → blue"
            model.stack.push(erase(model, EraseRequest(method, concepts, anchors=anchors, params=dict(settings))), 1.0)
        cells = []
        totals = {"erased": [0, 0], "kept": [0, 0]}
        for color in colors:
            erased = color in concepts
            counts = []
            for forms in (PHRASINGS, COLOR_PARAPHRASES):
                prompts = prompts_for(color, shapes, forms)
                shown = sum(v.shows("color", color) for p in prompts
                            for v in judge_images(generate(model, GenerationRequest(p, seeds=seeds))))
                counts.append(f"{shown}/{len(prompts) * len(seeds)}")
                if forms is PHRASINGS:
                    bucket = totals["erased" if erased else "kept"]
                    bucket[0] += shown
                    bucket[1] += len(prompts) * len(seeds)
            cells.append(f"{color}{'*' if erased else ''} {counts[0]} (paraphrases {counts[1]})")
        summary = "; ".join(f"{k} colors shown {v[0]}/{v[1]}" for k, v in totals.items() if v[1])
        print(f"{row}: {summary} [{time.perf_counter() - started:.0f} s]\n    " + ", ".join(cells), flush=True)


if __name__ == "__main__":
    main()
