"""What every subcommand shares: argument types, progress printing, one-line errors."""

from __future__ import annotations

import argparse
import sys
import time

from engine.jobs import Cancelled, Progress, StudioError, is_out_of_memory, out_of_memory_error

EXIT_USER_ERROR = 2


MAX_SEEDS = 10_000  # more images than any run needs; "0-4294967295" must not try to build 4 billion seeds


def seed_list(text: str) -> list[int]:
    """Parse "0-7", "3", "1,5,9" or "0-3,8" into a list of seeds."""
    from engine.generate import MAX_SEED

    seeds: list[int] = []
    try:
        for part in text.split(","):
            part = part.strip()
            lo, _, hi = part.partition("-") if "-" in part else (part, "", part)
            lo_seed, hi_seed = int(lo), int(hi)
            if not (0 <= lo_seed <= MAX_SEED and 0 <= hi_seed <= MAX_SEED):
                raise argparse.ArgumentTypeError(f"seeds must be from 0 to {MAX_SEED}")
            if hi_seed < lo_seed:
                raise argparse.ArgumentTypeError(f"the seed range {part!r} runs backwards; write it low-high")
            if len(seeds) + hi_seed - lo_seed + 1 > MAX_SEEDS:
                raise argparse.ArgumentTypeError(f"give at most {MAX_SEEDS} seeds")
            seeds.extend(range(lo_seed, hi_seed + 1))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a seed list like 0-7 or 1,5,9") from None
    if not seeds:
        raise argparse.ArgumentTypeError(f"{text!r} is not a seed list like 0-7 or 1,5,9")
    return seeds


def add_model_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="builtin",
                        help="'builtin', a diffusers folder, or a .safetensors/.ckpt file (default: builtin)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    parser.add_argument("--dtype", default=None, choices=["fp32", "fp16", "bf16"], help="weight precision")
    parser.add_argument("--arch", default=None, choices=["sd1", "sd2", "sd2-v"],
                        help="override the architecture detected from a single-file checkpoint")
    parser.add_argument("--config", default=None, metavar="DIR",
                        help="a diffusers folder whose configs describe a single-file checkpoint "
                             "(default: the bundled SD 1.x/2.x skeletons)")


def add_edit_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--edit", action="append", default=[], metavar="FILE",
                        help="an edit file to apply (repeatable, applied in order)")
    parser.add_argument("--strength", action="append", type=float, default=[], metavar="S",
                        help="strength of the matching --edit (default 1)")


def load_model_from_args(args: argparse.Namespace, progress=None):
    """Load --model and apply every --edit at its --strength."""
    import torch

    from engine.edits import EditDelta, check_strength
    from engine.model import load_model

    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}.get(args.dtype or "")
    paths = getattr(args, "edit", []) or []
    strengths = getattr(args, "strength", []) or []
    if len(strengths) > len(paths):
        raise StudioError("Give at most one --strength per --edit.")
    strengths = [check_strength(s) for s in strengths] + [1.0] * (len(paths) - len(strengths))
    edits = [EditDelta.load(path) for path in paths]  # a broken edit file should not cost a model load first
    model = load_model(args.model, device=args.device, dtype=dtype, architecture=getattr(args, "arch", None),
                       progress=progress or print_progress, config=getattr(args, "config", None))
    for note in model.notes:  # how a single file's architecture was decided
        print(f"note: {note}", file=sys.stderr)
    for edit, strength in zip(edits, strengths):
        model.stack.push(edit, strength)
    return model


_last_print = [0.0]


def print_progress(p: Progress) -> None:
    """Print at most a few lines per second, always the last step; warnings always, as one line each."""
    if p.stage == "warning":
        print(f"warning: {p.message}", file=sys.stderr, flush=True)
        return
    now = time.perf_counter()
    if p.step < p.total and now - _last_print[0] < 0.5:
        return
    _last_print[0] = now
    eta = f", ETA {p.eta_s:.0f}s" if p.eta_s is not None and p.step < p.total else ""
    print(f"[{p.stage}] {p.step}/{p.total} {p.message}{eta}", file=sys.stderr, flush=True)


def run_command(args: argparse.Namespace) -> int:
    try:
        return int(args.func(args) or 0)
    except Cancelled as exc:
        print(f"error: {exc.user_message}", file=sys.stderr)
        return EXIT_USER_ERROR
    except StudioError as exc:
        print(f"error: {exc.user_message}", file=sys.stderr)
        return EXIT_USER_ERROR
    except Exception as exc:
        if is_out_of_memory(exc):
            print(f"error: {out_of_memory_error(exc, getattr(args, 'device', None) or 'cpu').user_message}",
                  file=sys.stderr)
            return EXIT_USER_ERROR
        raise
