"""`main.py generate`: seeded images from a model, with optional edits."""

from __future__ import annotations

import argparse
from pathlib import Path

from cli.common import add_edit_arguments, add_model_argument, load_model_from_args, print_progress, seed_list


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="generate images for a prompt and seeds; writes DIR/<seed>.png and grid.png, "
                       "or one FILE.png")
    add_model_argument(p)
    add_edit_arguments(p)
    p.add_argument("--prompt", required=True)
    p.add_argument("--negative", default="", help="negative prompt")
    p.add_argument("--seeds", type=seed_list, default=[0], help="e.g. 0-7 or 1,5,9 (default 0)")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--guidance", type=float, default=5.0)
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--height", type=int, default=None)
    p.add_argument("--scheduler", default="ddim", choices=["ddim", "dpm++"])
    p.add_argument("--out", type=Path, required=True,
                   help="output folder (<seed>.png and grid.png), or a .png file: the image for one seed, the grid for "
                        "several (each seed's image beside it as NAME-<seed>.png)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from engine.generate import GenerationRequest, generate
    from engine.images import image_grid, save_png

    model = load_model_from_args(args)
    request = GenerationRequest(prompt=args.prompt, negative_prompt=args.negative, seeds=args.seeds,
                                steps=args.steps, guidance=args.guidance, width=args.width, height=args.height,
                                scheduler=args.scheduler)
    images = generate(model, request, progress=print_progress)
    out = args.out
    if out.suffix.lower() == ".png":
        # a file name means the user wants that file, not a folder named like an image
        out.parent.mkdir(parents=True, exist_ok=True)
        if len(images) == 1:
            save_png(images[0], out)
            print(f"wrote {out}")
            return 0
        grid_path, seed_paths = out, [out.with_name(f"{out.stem}-{seed}.png") for seed in args.seeds]
        done = f"wrote the grid of {len(images)} images to {out}, each beside it as {out.stem}-<seed>.png"
    else:
        out.mkdir(parents=True, exist_ok=True)
        grid_path, seed_paths = out / "grid.png", [out / f"{seed}.png" for seed in args.seeds]
        done = f"wrote {len(images)} image(s) and grid.png to {out}"
    for path, image in zip(seed_paths, images):
        save_png(image, path)
    save_png(image_grid(images), grid_path)
    print(done)
    return 0
