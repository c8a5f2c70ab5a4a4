"""Logging: full tracebacks go to a rotating file in the user data folder, never to the user.

Uncaught exceptions in Qt slots and in threads are logged and forwarded to a callback
(the window shows them in its error banner), so nothing fails silently.
"""

from __future__ import annotations

import logging
import logging.handlers
import sys
import threading
import traceback
from collections.abc import Callable
from pathlib import Path

from engine.paths import logs_dir

LOG_NAME = "studio.log"
log = logging.getLogger("erasure_studio")
_handler: logging.Handler | None = None
_on_uncaught: list[Callable[[str, str], None]] = []


def log_path() -> Path:
    return logs_dir() / LOG_NAME


def setup_logging() -> Path:
    """Attach one rotating file handler (1 MB × 3) to the studio logger; safe to call twice."""
    global _handler
    path = log_path()
    if _handler is None or getattr(_handler, "baseFilename", "") != str(path):
        if _handler is not None:
            log.removeHandler(_handler)
            _handler.close()
        _handler = logging.handlers.RotatingFileHandler(path, maxBytes=1_000_000, backupCount=3, encoding="utf-8")
        _handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(threadName)s %(message)s"))
        log.addHandler(_handler)
        log.setLevel(logging.INFO)
    return path


def report_uncaught(exc_type: type[BaseException], exc: BaseException, tb) -> None:
    text = "".join(traceback.format_exception(exc_type, exc, tb))
    log.error("Uncaught exception:\n%s", text)
    for callback in _on_uncaught:
        try:
            callback(f"Unexpected error: {exc_type.__name__}: {exc}", text)
        except Exception:  # the reporter must never raise
            log.exception("error reporter failed")


def install_excepthooks(callback: Callable[[str, str], None] | None = None) -> None:
    """Route sys.excepthook and threading.excepthook to the log and to ``callback``."""
    if callback is not None and callback not in _on_uncaught:
        _on_uncaught.append(callback)
    sys.excepthook = report_uncaught

    def thread_hook(args: threading.ExceptHookArgs) -> None:
        if args.exc_type is SystemExit:
            return
        report_uncaught(args.exc_type, args.exc_value, args.exc_traceback)

    threading.excepthook = thread_hook


def remove_callback(callback: Callable[[str, str], None]) -> None:
    if callback in _on_uncaught:
        _on_uncaught.remove(callback)
