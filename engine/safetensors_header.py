"""Reading a .safetensors file's header (its table of contents and metadata) without torch.

The GUI thread uses it to tell an Erasure Studio edit file from a model checkpoint when a file is
dropped on the window, and the model loader uses it to check a file before handing it to safetensors.
``describe_manifest`` turns an edit's manifest into the lines ``main.py info`` and the history's tooltips show.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any

MANIFEST_KEY = "erasure_studio_manifest"  # the metadata entry that makes a .safetensors file an edit
MAX_HEADER = 100 * 1024 * 1024  # safetensors refuses larger headers too


class HeaderError(ValueError):
    """The header is unusable; ``problem`` is "format" (not safetensors), "truncated" or "damaged"."""

    def __init__(self, problem: str, detail: str = "") -> None:
        super().__init__(f"{problem}: {detail}" if detail else problem)
        self.problem = problem
        self.detail = detail


def read_header(path: str | Path) -> dict[str, Any]:
    """The file's JSON header, checked against the file's size (tensor offsets inside the file)."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise HeaderError("format", "shorter than 8 bytes")
        (header_len,) = struct.unpack("<Q", head)
        first = f.read(1)
        if first != b"{" or header_len > MAX_HEADER:
            raise HeaderError("format", "no JSON header")
        if 8 + header_len > size:
            raise HeaderError("truncated", f"header of {header_len} bytes, file of {size}")
        try:
            header = json.loads(first + f.read(header_len - 1))
        except (ValueError, UnicodeDecodeError) as exc:
            raise HeaderError("format", repr(exc)) from exc
    if not isinstance(header, dict):
        raise HeaderError("format", "the header is not a JSON object")
    try:
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise HeaderError("damaged", repr(exc)) from exc
    if 8 + header_len + end > size:
        raise HeaderError("truncated", f"needs {8 + header_len + end} bytes, has {size}")
    return header


def is_edit_file(path: str | Path) -> bool:
    """True when ``path`` is a readable .safetensors file carrying an Erasure Studio edit manifest."""
    try:
        metadata = read_header(path).get("__metadata__")
    except (OSError, HeaderError):
        return False
    return isinstance(metadata, dict) and MANIFEST_KEY in metadata


def describe_manifest(manifest: dict[str, Any], shapes: dict[str, list[int]] | None = None) -> list[tuple[str, str]]:
    """(field, value) lines describing an edit: method, concepts, parameters, base model, metrics; empty ones left
    out. ``shapes`` (tensor name -> shape) adds how many weights the edit changes."""
    concepts = manifest.get("concepts") or {}
    inference = (" (inference-time: changes sampling, not weights, so exports leave it out)"
                 if manifest.get("inference") else "")
    lines = [
        ("method", f"{manifest.get('method', '?')}{inference}"),
        ("erases", ", ".join(concepts.get("targets", [])) or "(none)"),
        ("guides", ", ".join(concepts.get("guides", []))),
        ("anchors", ", ".join(concepts.get("anchors", []))),
        ("preserves", f"{len(concepts['preserve'])} concept(s)" if concepts.get("preserve") else ""),
        ("parameters", ", ".join(f"{k}={v}" for k, v in sorted((manifest.get("params") or {}).items()))),
        ("weights", f"{len(shapes)} tensor(s), {sum(math.prod(s) for s in shapes.values()):,} values"
         if shapes is not None else ""),
        ("base model", f"fingerprint {manifest['fingerprint'][:16]}" if manifest.get("fingerprint") else ""),
        ("created", str(manifest.get("created", ""))),
        ("metrics", ", ".join(f"{k}={v}" for k, v in sorted((manifest.get("metrics") or {}).items()))),
    ]
    return [(name, value) for name, value in lines if value]
