"""Render the built-in model's output for every color × shape × style into docs/shapesworld-grid.png.

One row per color and style, one column per shape with two seeds each; a labelled grid a
person can check at a glance. Usage: python scripts/make_shapesworld_grid.py [--out docs/shapesworld-grid.png]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from PIL import Image, ImageDraw

from engine.generate import GenerationRequest, generate
from engine.model import load_model
from engine.shapesworld import SHAPES, load_world

CELL = 128
LABEL_W = 190


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("docs/shapesworld-grid.png"))
    parser.add_argument("--seeds", type=int, default=2)
    args = parser.parse_args()
    world = load_world()
    model = load_model("builtin", device="cpu")
    styles = [("", "solid")] + [(" " + spec["phrasings"][0], key) for key, spec in world["styles"].items()]
    rows = [(color, phrase, style) for color in world["colors"] for phrase, style in styles]
    width = LABEL_W + len(SHAPES) * args.seeds * CELL
    sheet = Image.new("RGB", (width, 24 + len(rows) * CELL), "white")
    draw = ImageDraw.Draw(sheet)
    for i, shape in enumerate(SHAPES):
        draw.text((LABEL_W + i * args.seeds * CELL + 8, 6), shape, fill="black")
    for r, (color, phrase, _) in enumerate(rows):
        y = 24 + r * CELL
        draw.text((6, y + CELL // 2 - 6), f"{color}{phrase or ' (solid)'}", fill="black")
        for i, shape in enumerate(SHAPES):
            images = generate(model, GenerationRequest(f"a {color} {shape}{phrase}", seeds=list(range(args.seeds))))
            for k, image in enumerate(images):
                sheet.paste(image.resize((CELL, CELL), Image.NEAREST), (LABEL_W + (i * args.seeds + k) * CELL, y))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
