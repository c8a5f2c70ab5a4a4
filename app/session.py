"""Sessions: a JSON file with the model reference and the document, plus the edits as files beside it.

``studio.session.json`` is written next to a folder ``studio.session.edits/`` holding one
``<edit id>.safetensors`` per stack entry (EditDelta.save, manifest included), so a
session can be reopened, and each edit applied by the CLI, without the GUI. Reading
and validating the JSON is plain Python (GUI thread); reading and writing edit files
touches torch and runs on the worker thread.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.state import CONCEPT_KINDS, Document
from engine.jobs import InputError

FORMAT = "erasure-studio-session"
VERSION = 1
SUFFIX = ".session.json"


@dataclass
class ModelRef:
    source: str = "builtin"
    device: str = "auto"
    precision: str = "auto"


@dataclass
class SessionData:
    model: ModelRef
    doc: Document
    path: Path | None = None
    edit_files: dict[str, Path] = field(default_factory=dict)  # edit id -> file


def edits_dir(path: Path) -> Path:
    name = path.name.removesuffix(".json")
    return path.with_name(name + ".edits")


def to_json(model: ModelRef, doc: Document) -> dict[str, Any]:
    return {"format": FORMAT, "version": VERSION, "model": model.__dict__.copy(), "document": doc.to_json()}


def read_session(path: Path) -> SessionData:
    """Read and check a session file; raises InputError with one sentence if it is not usable."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"The session file {path.name} does not exist.", str(path)) from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"{path.name} is not a readable session file.", repr(exc)) from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise InputError(f"{path.name} is not an Erasure Studio session.", str(path))
    try:
        version = int(data.get("version", 0))
    except (TypeError, ValueError):
        raise InputError(f"{path.name} has damaged contents.", f"version {data.get('version')!r}") from None
    if version > VERSION:
        raise InputError(f"{path.name} was written by a newer version of the studio.", str(data.get("version")))
    for section in ("model", "document"):
        if not isinstance(data.get(section), dict):
            raise InputError(f"{path.name} has no {section} section; it is not a complete session.", section)
    try:
        model = ModelRef(**{k: str(v) for k, v in data["model"].items() if k in ("source", "device", "precision")})
        if not model.source.strip():
            raise ValueError("the model source is empty")
        check_document_json(data["document"])
        doc = Document.from_json(data["document"])
        check_document(doc)
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        raise InputError(f"{path.name} has damaged contents.", repr(exc)) from exc
    folder = edits_dir(path)
    files = {item.edit_id: folder / f"{item.edit_id}.safetensors" for item in doc.stack}
    missing = [f.name for f in files.values() if not f.is_file()]
    if missing:
        raise InputError(f"The session {path.name} is missing {len(missing)} edit file(s) from {folder.name}.",
                         ", ".join(missing))
    return SessionData(model, doc, path, files)


_EDIT_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # edit ids name files: no separators, no "..", no drive letters


def check_document_json(raw: Any) -> None:
    """The document's fields have the JSON types ``Document.from_json`` expects (a string is not a list)."""
    for key in ("concepts", "preserve", "stack", "prompts", "seeds"):
        if key in raw and not isinstance(raw[key], list):
            raise TypeError(f"document {key} is not a list")
    for key in ("params", "preview"):
        if key in raw and raw[key] is not None and not isinstance(raw[key], dict):
            raise TypeError(f"document {key} is not an object")
    for item in [*raw.get("concepts", []), *raw.get("stack", [])]:
        if not isinstance(item, dict):
            raise TypeError("a concept or stack entry is not an object")


def check_document(doc: Document) -> None:
    """Values a hand-edited or damaged session could hold that would fail later, one job at a time.

    Strengths are checked on the worker thread (``load_edits``), where the engine's own check is importable.
    """
    from engine.generate import MAX_GUIDANCE, MAX_SEED

    def whole(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    if any(not whole(s) or not 0 <= s <= MAX_SEED for s in doc.seeds):
        raise ValueError(f"seeds must be whole numbers from 0 to {MAX_SEED}: {doc.seeds!r}")
    p = doc.preview
    if not whole(p.steps) or not 1 <= p.steps <= 1000:
        raise ValueError(f"preview steps {p.steps!r}")
    if isinstance(p.guidance, bool) or not isinstance(p.guidance, (int, float)) or \
            not 0 <= p.guidance <= MAX_GUIDANCE:  # NaN fails the comparison too
        raise ValueError(f"preview guidance {p.guidance!r}")
    if not whole(p.size) or p.size < 0 or p.size % 8:
        raise ValueError(f"preview size {p.size!r}")
    if not whole(p.preview_every) or p.preview_every < 0:
        raise ValueError(f"preview_every {p.preview_every!r}")
    for item in doc.stack:
        if not isinstance(item.edit_id, str) or not _EDIT_ID.match(item.edit_id):
            raise ValueError(f"edit id {item.edit_id!r}")
        if not isinstance(item.enabled, bool) or not isinstance(item.inference_only, bool):
            raise TypeError(f"enabled/inference_only of {item.edit_id} are not true/false")
        if isinstance(item.strength, bool) or not isinstance(item.strength, (int, float)):
            raise TypeError(f"strength of {item.edit_id} is {item.strength!r}")
    for concept in doc.concepts:
        if concept.kind not in CONCEPT_KINDS:
            raise ValueError(f"concept kind {concept.kind!r}")
    check_params(doc.params)
    doc.selected = min(max(doc.selected, -1), len(doc.stack) - 1)


def check_params(params: dict[str, dict[str, Any]]) -> None:
    """Bring saved parameter overrides to the current specs in place, so the form shows what a job would use
    (a checkbox that became a choice reads "on"/"off"). Methods or parameters this release lacks are kept as
    they are; a value out of its range is a damaged session."""
    from engine.methods import all_methods

    methods = all_methods()
    for method, values in params.items():
        specs = {p.name: p for p in methods[method].params} if method in methods else {}
        for name, value in values.items():
            if name in specs:
                try:
                    values[name] = specs[name].parse(value)
                except InputError as exc:
                    raise ValueError(f"{method} {exc.user_message}") from None


def write_session(path: Path, model: ModelRef, doc: Document, edits: dict[str, Any]) -> Path:
    """Write the edit files (only new ones) and then the JSON, each atomically. Worker thread."""
    from engine.atomic import atomic_path

    path = Path(path)
    folder = edits_dir(path)
    folder.mkdir(parents=True, exist_ok=True)
    wanted = {item.edit_id for item in doc.stack}
    for edit_id in wanted:
        target = folder / f"{edit_id}.safetensors"
        if not target.is_file():  # edit ids are unique per edit, so an existing file is this edit
            edits[edit_id].save(target)
    for stale in folder.glob("*.safetensors"):
        if stale.stem not in wanted:
            stale.unlink(missing_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(to_json(model, doc), indent=1), encoding="utf-8")
    return path


def load_edits(session: SessionData) -> dict[str, Any]:
    """Load every EditDelta a session refers to. Worker thread."""
    from engine.edits import EditDelta, check_strength

    for item in session.doc.stack:
        check_strength(item.strength)  # before any edit is read: a bad value must not half-open the session
    return {edit_id: EditDelta.load(file) for edit_id, file in session.edit_files.items()}


# -- crash detection: a lock file with our pid exists while the window is open
def lock_path(data: Path) -> Path:
    return data / "running.lock"


def autosave_path(data: Path) -> Path:
    return data / "autosave" / ("autosave" + SUFFIX)


def recovered_path(data: Path) -> Path:
    return data / "autosave" / ("recovered" + SUFFIX)


def stash_autosave(data: Path) -> Path:
    """Move the crashed run's autosave aside, so this run's autosaves cannot overwrite it before it is restored."""
    import shutil

    source, target = autosave_path(data), recovered_path(data)
    for old in (target, edits_dir(target)):
        if old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
        elif old.exists():
            old.unlink()
    if edits_dir(source).is_dir():
        edits_dir(source).rename(edits_dir(target))
    source.rename(target)
    return target


def previous_run_crashed(data: Path) -> bool:
    """True if a lock from a process that is no longer running is left, and an autosave exists."""
    lock = lock_path(data)
    if not lock.is_file() or not autosave_path(data).is_file():
        return False
    try:
        pid = int(lock.read_text().strip() or 0)
    except (OSError, ValueError):
        return True
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False  # that process is still alive (another window)


def take_lock(data: Path) -> None:
    lock_path(data).write_text(str(os.getpid()))


def release_lock(data: Path) -> None:
    lock = lock_path(data)
    try:
        if lock.read_text().strip() == str(os.getpid()):
            lock.unlink()
    except OSError:
        pass
