"""Write files so that a crash, cancel or full disk never leaves a partial file at the target."""

from __future__ import annotations

import contextlib
import os
import re
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
            # A folder cannot be renamed over a non-empty folder: move the old one aside first,
            # and put it back if the second rename fails (remove_stale_temporaries does the same
            # after a kill between the two).
            old = target.with_name(f"{TEMP_MARK}old-{os.getpid()}-{target.name}")
            _remove(old)
            os.replace(target, old)
            try:
                os.replace(tmp, target)
            except BaseException:
                os.replace(old, target)
                raise
            _remove(old)
        else:
            os.replace(tmp, target)
    except BaseException:
        _remove(tmp)
        raise


def remove_path(path: Path) -> None:
    """Delete a file or folder if it exists (for temporaries that are not made by ``atomic_path``)."""
    _remove(Path(path))


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink(missing_ok=True)


_TEMP_NAME = re.compile(rf"^{re.escape(TEMP_MARK)}(?P<old>old-)?(?P<pid>\d+)-(?P<name>.+)$")


def _process_alive(pid: int) -> bool:
    """True if ``pid`` is a running process (ours included): its temporaries may still be in use."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists but belongs to someone else
        return True
    except OSError:
        return False
    return True


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete temporaries left by a killed process (called at start-up and before exports).

    A temporary whose writer is still running (another export, another instance of the app)
    is left alone. A previous version moved aside while a folder was being replaced
    (``old-``) is put back if the replacement never arrived, so a kill between the two
    renames of ``atomic_path`` loses nothing; otherwise it is deleted. A reused process
    id can keep a stale temporary alive until a later call; that is harmless.
    """
    removed: list[Path] = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for child in sorted(folder.iterdir()):
        if not child.name.startswith(TEMP_MARK):
            continue
        match = _TEMP_NAME.match(child.name)
        if match and _process_alive(int(match["pid"])):
            continue
        if match and match["old"]:
            target = child.with_name(match["name"])
            if not target.exists() and not target.is_symlink():
                os.replace(child, target)
                continue
        _remove(child)
        removed.append(child)
    return removed
