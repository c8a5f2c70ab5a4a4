"""The job protocol every long engine operation follows.

A job is a plain function that takes a ``progress`` callback and a ``CancelToken``.
It reports a ``Progress`` at least once per denoising step or training iteration and
calls ``cancel.raise_if_cancelled()`` as often, so a cancel stops it within one step.
Errors meant for the user are ``StudioError``s: one plain sentence (``user_message``)
plus technical ``detail``.

Importable without torch: the GUI uses it before the engine is loaded.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Progress:
    """One progress report. ``preview`` is an optional PIL image (intermediate result)."""

    stage: str
    step: int
    total: int
    message: str = ""
    eta_s: float | None = None
    preview: Any = None

    @property
    def fraction(self) -> float:
        return 0.0 if self.total <= 0 else min(1.0, self.step / self.total)


ProgressCallback = Callable[[Progress], None]


def no_progress(_: Progress) -> None:
    """The progress callback for callers that do not listen."""


class Cancelled(Exception):
    """Raised inside a job when its cancel token was set."""

    def __init__(self, message: str = "The job was cancelled; nothing was changed.") -> None:
        super().__init__(message)
        self.user_message = message


class CancelToken:
    """Thread-safe cancel flag shared by the caller and the job."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def raise_if_cancelled(self) -> None:
        if self._event.is_set():
            raise Cancelled()


class StudioError(Exception):
    """An error with one plain sentence for the user and technical detail for the log."""

    def __init__(self, user_message: str, detail: str = "") -> None:
        super().__init__(user_message if not detail else f"{user_message} ({detail})")
        self.user_message = user_message
        self.detail = detail


class ModelLoadError(StudioError):
    """The model file or folder could not be loaded."""


class InputError(StudioError):
    """A request had an invalid value (empty concept, bad seed, ...)."""


class EditMismatchError(StudioError):
    """An edit does not fit the loaded model."""


class ResourceError(StudioError):
    """Out of memory or disk space."""


class ExportError(StudioError):
    """Writing or verifying an exported file failed."""


def out_of_memory_error(exc: BaseException, device: str) -> ResourceError:
    """Translate a torch out-of-memory error into the user's next step.

    The error's own text decides GPU or computer when it names an accelerator: the caller's
    ``device`` may be a default that does not know where the failing job ran.
    """
    text = f"{type(exc).__name__}: {exc}".lower()
    on_gpu = any(word in text for word in ("cuda", "gpu", "hip", "mps")) or isinstance(exc, _accelerator_oom())
    where = "GPU" if device.startswith("cuda") or (on_gpu and "cpuallocator" not in text) else "computer"
    return ResourceError(
        f"The {where} ran out of memory; try a smaller preview size or fewer images"
        + (", or switch the device to CPU." if where == "GPU" else ", or close other programs."),
        detail=repr(exc),
    )


# How allocators word running out: CUDA/MPS say "out of memory"; torch's CPU allocator says
# "DefaultCPUAllocator: can't allocate memory: you tried to allocate ..." (or "not enough memory" on Windows).
_OUT_OF_MEMORY_WORDS = ("out of memory", "outofmemory", "can't allocate memory", "cannot allocate memory",
                        "not enough memory", "failed to allocate memory")


def is_out_of_memory(exc: BaseException) -> bool:
    text = f"{type(exc).__name__}: {exc}".lower()
    return any(word in text for word in _OUT_OF_MEMORY_WORDS) or isinstance(exc, MemoryError)


def _accelerator_oom() -> tuple[type, ...]:
    """torch.OutOfMemoryError (raised by CUDA and other accelerators) if torch is loaded; jobs.py must not import it."""
    import sys

    torch = sys.modules.get("torch")
    error = getattr(torch, "OutOfMemoryError", None) if torch is not None else None
    return (error,) if isinstance(error, type) else ()


@dataclass
class ProgressReporter:
    """Sends Progress records with a running ETA; one per ``step()`` call."""

    callback: ProgressCallback
    stage: str
    total: int
    cancel: CancelToken | None = None
    _start: float = field(default_factory=time.perf_counter)
    _done: int = 0

    def step(self, message: str = "", preview: Any = None, advance: int = 1) -> None:
        if self.cancel is not None:
            self.cancel.raise_if_cancelled()
        self._done += advance
        elapsed = time.perf_counter() - self._start
        eta = elapsed / self._done * (self.total - self._done) if self._done else None
        self.callback(Progress(self.stage, self._done, self.total, message, eta, preview))

    def start(self, message: str = "") -> None:
        self.callback(Progress(self.stage, 0, self.total, message))
