"""`main.py info`: what an edit file holds (method, concepts, parameters, base model), read without torch."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="describe an edit file: method, concepts, parameters, the model it fits",
                       description="Print what an Erasure Studio edit file (from 'erase --out', an export or the "
                                   "studio's Save…) holds. Only the file's header is read, so it is instant.")
    p.add_argument("file", type=Path, help="an edit file (.safetensors)")
    p.add_argument("--json", action="store_true", help="print the manifest and the weights as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from engine.jobs import InputError
    from engine.safetensors_header import MANIFEST_KEY, HeaderError, describe_manifest, read_header

    path: Path = args.file
    if not path.is_file():
        raise InputError(f"The edit file {path.name} does not exist.", str(path))
    try:
        header = read_header(path)
    except (HeaderError, OSError) as exc:
        raise InputError(f"{path.name} is not a readable edit file.", repr(exc)) from exc
    metadata = header.get("__metadata__") or {}
    if MANIFEST_KEY not in metadata:
        raise InputError(f"{path.name} is not an Erasure Studio edit (it has no manifest); 'info' describes edit "
                         "files.", str(path))
    try:
        manifest = json.loads(metadata[MANIFEST_KEY])
    except ValueError as exc:
        raise InputError(f"{path.name} has a damaged manifest.", repr(exc)) from exc
    shapes = {k: v.get("shape", []) for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)}
    if args.json:
        print(json.dumps({"manifest": manifest, "weights": shapes}, indent=1))
        return 0
    for name, value in describe_manifest(manifest, shapes):
        print(f"{name:<11} {value}")
    return 0
