"""`main.py info`: what an edit file holds (method, concepts, parameters, base model), read without torch."""

from __future__ import annotations

import argparse
import json
import math
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
    from engine.safetensors_header import MANIFEST_KEY, HeaderError, read_header

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
    concepts = manifest.get("concepts", {})
    lines = [
        ("method", manifest.get("method", "?") + (" (inference-time: changes sampling, not weights)"
                                                  if manifest.get("inference") else "")),
        ("erases", ", ".join(concepts.get("targets", [])) or "(none)"),
        ("guides", ", ".join(concepts.get("guides", []))),
        ("anchors", ", ".join(concepts.get("anchors", []))),
        ("preserves", f"{len(concepts.get('preserve', []))} concept(s)" if concepts.get("preserve") else ""),
        ("parameters", ", ".join(f"{k}={v}" for k, v in sorted(manifest.get("params", {}).items()))),
        ("weights", f"{len(shapes)} tensor(s), {sum(math.prod(s) for s in shapes.values()):,} values"),
        ("base model", f"fingerprint {manifest.get('fingerprint', '')[:16]}" if manifest.get("fingerprint") else ""),
        ("created", manifest.get("created", "")),
        ("metrics", ", ".join(f"{k}={v}" for k, v in sorted((manifest.get("metrics") or {}).items()))),
    ]
    for name, value in lines:
        if value:
            print(f"{name:<11} {value}")
    return 0
