"""Concept lists in text files (one concept per line), read without importing torch so the GUI thread can."""

from __future__ import annotations

from pathlib import Path

from engine.jobs import InputError


def read_concepts_file(path: str | Path) -> list[str]:
    """One concept per line; blank lines and lines starting with # are skipped."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"The concepts file {path.name} does not exist.", str(path))
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"The concepts file {path.name} could not be read as UTF-8 text.", repr(exc)) from exc
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
