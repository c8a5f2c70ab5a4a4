"""Write files so that a crash, cancel or full disk never leaves a partial file at the target."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

TEMP_MARK = ".erasure-partial-"


def temp_path_for(target: Path) -> Path:
    return target.with_name(f"{TEMP_MARK}{os.getpid()}-{target.name}")


@contextlib.contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it into place only if the block succeeds.

    Works for files and folders. On any exception (cancel included) the temporary is removed
    and the target is left as it was.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_for(target)
    _remove(tmp)
    try:
        yield tmp
        if target.is_dir() and tmp.is_dir():
            old = target.with_name(f"{TEMP_MARK}old-{os.getpid()}-{target.name}")
            os.replace(target, old)
            os.replace(tmp, target)
            _remove(old)
        else:
            os.replace(tmp, target)
    except BaseException:
        _remove(tmp)
        raise


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink(missing_ok=True)


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete temporaries left by a killed process (called at start-up and before exports)."""
    removed = []
    if not folder.is_dir():
        return removed
    for child in folder.iterdir():
        if child.name.startswith(TEMP_MARK):
            _remove(child)
            removed.append(child)
    return removed
