"""The one engine worker thread: runs every engine job in order, reports back through Qt signals.

``EngineWorker`` is a QObject that lives in the GUI thread and owns the signals; the
worker thread only calls ``emit`` (queued across threads), so every connected slot or
lambda runs on the GUI thread. One thread, because a pipeline and its weights are not
safe to share. A job submitted with ``supersede=True`` drops queued jobs of the same kind
and cancels the running one of that kind: the newest preview request wins.
"""

from __future__ import annotations

import itertools
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from PySide6.QtCore import QObject, Signal

from app.logging_setup import log
from engine.jobs import Cancelled, CancelToken, Progress, StudioError, is_out_of_memory, out_of_memory_error

PROGRESS_INTERVAL_S = 0.05  # at most ~20 progress signals a second, plus every preview and the last step


@dataclass
class EngineContext:
    """What jobs share on the worker thread. Only the worker thread touches it."""

    model: Any = None  # engine.model.LoadedModel
    model_token: int = 0  # increases with every load, so caches keyed on it go stale


JobFn = Callable[[EngineContext, Callable[[Progress], None], CancelToken], Any]
_ids = itertools.count(1)


@dataclass
class Job:
    kind: str  # "engine", "load", "preview", "erase", "evaluate", "session", "export"
    fn: JobFn
    label: str = ""
    supersede: bool = False
    id: int = field(default_factory=lambda: next(_ids))
    token: CancelToken = field(default_factory=CancelToken)


@dataclass
class JobFailure:
    """What the banner shows (``message``) and what the detail/log get."""

    kind: str
    message: str
    detail: str
    traceback: str
    out_of_memory: bool = False


def describe_failure(kind: str, exc: BaseException, device: str = "cpu") -> JobFailure:
    """Turn any exception into one plain sentence plus detail."""
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    if isinstance(exc, StudioError):
        return JobFailure(kind, exc.user_message, exc.detail, tb)
    if is_out_of_memory(exc):
        err = out_of_memory_error(exc, device)
        return JobFailure(kind, err.user_message, err.detail, tb, out_of_memory=True)
    return JobFailure(kind, f"The {kind} job failed unexpectedly ({type(exc).__name__}); the log has the details.",
                      f"{type(exc).__name__}: {exc}", tb)


class EngineWorker(QObject):
    """Queue + thread + signals. Create in the GUI thread; call ``start()`` once."""

    job_started = Signal(int, str, str)  # id, kind, label
    job_progress = Signal(int, str, object)  # id, kind, Progress
    job_finished = Signal(int, str, object)  # id, kind, result
    job_failed = Signal(int, str, object)  # id, kind, JobFailure
    job_cancelled = Signal(int, str)  # id, kind
    idle = Signal()

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.context = EngineContext()
        self.device = "cpu"
        self._queue: deque[Job] = deque()
        self._cond = threading.Condition()
        self._running: Job | None = None
        self._stop = False
        self._thread: threading.Thread | None = None

    # -- GUI-thread API
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="engine-worker", daemon=True)
            self._thread.start()

    def submit(self, job: Job) -> int:
        dropped: list[Job] = []
        with self._cond:
            if job.supersede:
                dropped = [j for j in self._queue if j.kind == job.kind]
                for queued in dropped:
                    self._queue.remove(queued)
                    queued.token.cancel()
                if self._running is not None and self._running.kind == job.kind:
                    self._running.token.cancel()
            self._queue.append(job)
            self._cond.notify()
        self._report_dropped(dropped)
        return job.id

    def _report_dropped(self, jobs: list[Job]) -> None:
        """Jobs removed before they ran still end with ``job_cancelled``, so listeners can count on one end."""
        for job in jobs:
            self.job_cancelled.emit(job.id, job.kind)

    def cancel(self, kind: str | None = None, queued: bool = True) -> None:
        """Cancel the running job (of ``kind``, if given) and, with ``queued``, the waiting ones too."""
        dropped: list[Job] = []
        with self._cond:
            if self._running is not None and (kind is None or self._running.kind == kind):
                self._running.token.cancel()
            if queued:
                dropped = [j for j in self._queue if kind is None or j.kind == kind]
                for job in dropped:
                    self._queue.remove(job)
                    job.token.cancel()
        self._report_dropped(dropped)

    def cancel_job(self, job_id: int) -> None:
        with self._cond:
            if self._running is not None and self._running.id == job_id:
                self._running.token.cancel()
            dropped = [j for j in self._queue if j.id == job_id]
            for job in dropped:
                self._queue.remove(job)
                job.token.cancel()
        self._report_dropped(dropped)

    @property
    def running_kind(self) -> str | None:
        job = self._running
        return None if job is None else job.kind

    def pending_kinds(self) -> list[str]:
        with self._cond:
            kinds = [j.kind for j in self._queue]
        running = self._running
        return ([running.kind] if running else []) + kinds

    def shutdown(self, timeout: float = 10.0) -> bool:
        """Cancel everything and stop the thread; True if it ended within ``timeout``."""
        with self._cond:
            self._stop = True
            for job in self._queue:
                job.token.cancel()
            self._queue.clear()
            if self._running is not None:
                self._running.token.cancel()
            self._cond.notify_all()
        thread = self._thread
        if thread is None:
            return True
        thread.join(timeout)
        return not thread.is_alive()

    # -- worker thread
    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stop:
                    self._cond.wait()
                if self._stop:
                    return
                job = self._queue.popleft()
                self._running = job
            try:
                self._run(job)
            finally:
                with self._cond:
                    self._running = None
                    empty = not self._queue
                if empty and not self._stop:
                    self.idle.emit()

    def _run(self, job: Job) -> None:
        if job.token.cancelled:
            self.job_cancelled.emit(job.id, job.kind)
            return
        self.job_started.emit(job.id, job.kind, job.label)
        last = [0.0]

        def progress(p: Progress) -> None:
            now = time.perf_counter()
            if p.preview is None and 0 < p.step < p.total and now - last[0] < PROGRESS_INTERVAL_S:
                return
            last[0] = now
            if not self._stop:
                self.job_progress.emit(job.id, job.kind, p)

        start = time.perf_counter()
        try:
            result = job.fn(self.context, progress, job.token)
        except Cancelled:
            log.info("job %s (%s) cancelled after %.2fs", job.id, job.kind, time.perf_counter() - start)
            if not self._stop:
                self.job_cancelled.emit(job.id, job.kind)
            return
        except Exception as exc:  # noqa: BLE001  (every failure must reach the GUI as a banner)
            if job.token.cancelled and not isinstance(exc, StudioError):
                # an interrupted pipeline may fail in odd ways after a cancel; that is still a cancel
                log.info("job %s (%s) ended with %r after cancel", job.id, job.kind, exc)
                if not self._stop:
                    self.job_cancelled.emit(job.id, job.kind)
                return
            failure = describe_failure(job.kind, exc, self.device)
            log.error("job %s (%s) failed: %s\n%s", job.id, job.kind, failure.message, failure.traceback)
            if not self._stop:
                self.job_failed.emit(job.id, job.kind, failure)
            return
        log.info("job %s (%s) finished in %.2fs", job.id, job.kind, time.perf_counter() - start)
        if not self._stop:
            self.job_finished.emit(job.id, job.kind, result)
