"""Where the studio keeps user data: settings, sessions, logs and caches.

Everything lives under one folder: ``$ERASURE_STUDIO_HOME`` if set, else
``$XDG_DATA_HOME/erasure-studio`` (default ``~/.local/share/erasure-studio``).
"""

from __future__ import annotations

import os
from pathlib import Path


def data_dir() -> Path:
    override = os.environ.get("ERASURE_STUDIO_HOME")
    if override:
        path = Path(override).expanduser()
    else:
        base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
        path = base / "erasure-studio"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _sub(name: str) -> Path:
    path = data_dir() / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def logs_dir() -> Path:
    return _sub("logs")


def cache_dir() -> Path:
    return _sub("cache")


def sessions_dir() -> Path:
    return _sub("sessions")
