"""`main.py erase`: run any registered erasure method headless and write the edit file."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from cli.common import add_edit_arguments, add_model_argument, load_model_from_args, print_progress
from engine.jobs import InputError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("erase", help="erase concepts with a method and write the edit (.safetensors)",
                       description="Erase concepts from a model. The result is an edit file that 'generate --edit', "
                                   "'export' and the studio can apply. Method parameters go through --set; "
                                   "'erase --list-params METHOD' shows them.")
    add_model_argument(p)
    add_edit_arguments(p)
    p.add_argument("--method", help="uce, rece, speed, esd-x, esd-x-strict, esd-u, ca or sld")
    p.add_argument("--concept", action="append", default=[], metavar="C", help="a concept to erase (repeatable)")
    p.add_argument("--concepts-file", type=Path, metavar="FILE", help="concepts to erase, one per line")
    p.add_argument("--guide", action="append", default=[], metavar="G",
                   help="what each concept becomes (one for all, or one per concept; 'a;b' = their centroid)")
    p.add_argument("--anchor", action="append", default=[], metavar="A",
                   help="anchor concept(s) for Concept Ablation (one for all, or one per concept)")
    p.add_argument("--preserve", action="append", default=[], metavar="P", help="a concept to keep (repeatable)")
    p.add_argument("--preserve-file", type=Path, metavar="FILE", help="concepts to keep, one per line")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="settings",
                   help="a method parameter, e.g. --set lamb=0.5 (repeatable)")
    p.add_argument("--seed", type=int, default=0, help="seed for methods that sample (default 0)")
    p.add_argument("--list-params", action="store_true", help="print the method's parameters and exit")
    p.add_argument("--out", type=Path, help="the edit file to write (.safetensors)")
    p.set_defaults(func=run)


def parse_settings(items: list[str]) -> dict[str, str]:
    settings: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise InputError(f"--set takes key=value, not {item!r}.")
        if key in settings:
            raise InputError(f"The parameter {key} is set twice.")
        settings[key] = value.strip()
    return settings


def list_params(method: str) -> int:
    from engine.methods import get_method

    spec = get_method(method)
    print(f"{spec.name}: {spec.title} ({spec.family})\n  {spec.description}")
    for param in spec.params:
        extra = f" one of {', '.join(param.choices)}" if param.choices else ""
        if param.minimum is not None or param.maximum is not None:
            extra = f" range {param.minimum:g}..{param.maximum:g}"
        print(f"  {param.name} ({param.kind}, default {param.default!r}{extra}): {param.tooltip}")
    return 0


def run(args: argparse.Namespace) -> int:
    from engine.concept_lists import read_concepts_file
    from engine.methods import EraseRequest, clean_concepts, get_method

    if not args.method:
        raise InputError("Choose a method with --method (uce, rece, speed, esd-x, esd-x-strict, esd-u, ca or sld).")
    if args.list_params:
        return list_params(args.method)
    spec = get_method(args.method)  # unknown methods fail before the model loads
    if args.out is None:
        raise InputError("Give the edit file to write with --out FILE.safetensors.")
    if args.out.suffix.lower() != ".safetensors":
        raise InputError("The edit file must end in .safetensors.", str(args.out))
    if args.out.parent and not args.out.parent.exists():
        raise InputError(f"The folder {args.out.parent} does not exist.", str(args.out))
    concepts = list(args.concept)
    if args.concepts_file:
        concepts += read_concepts_file(args.concepts_file)
    concepts = clean_concepts(concepts)
    preserve = list(args.preserve)
    if args.preserve_file:
        preserve += read_concepts_file(args.preserve_file)
    settings = parse_settings(args.settings)
    spec.resolve_params(settings)  # bad keys or values fail before the model loads

    started = time.perf_counter()
    model = load_model_from_args(args)
    request = EraseRequest(method=spec.name, targets=concepts, guides=list(args.guide), anchors=list(args.anchor),
                           preserve=preserve, params=settings, seed=args.seed)
    from engine.methods import erase

    edit = erase(model, request, progress=print_progress)
    edit.save(args.out)
    elapsed = time.perf_counter() - started
    print(f"erased {len(concepts)} concept(s) with {spec.name}: {len(edit.deltas)} weight(s) changed, "
          f"wrote {args.out} in {elapsed:.1f}s", file=sys.stdout)
    return 0
