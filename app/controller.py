"""The controller: turns user actions into state changes and engine jobs, and job results into state.

Everything here runs on the GUI thread. Engine work is wrapped in the job functions of
``app.engine_jobs``, which run on the worker thread.

The worker's model carries an ``EditStack``; the controller owns the *wanted* stack (the
Document) and every job that samples restores that snapshot first, so undo/redo, sessions
and the strength slider are all just new snapshots.
"""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, QTimer, Signal

from app import session as sessions
from app.engine_jobs import (
    EngineInfo,
    GridUpdate,
    MetricsResult,
    engine_job,
    erase_job,
    export_job,
    import_edits_job,
    load_job,
    measure_job,
    open_session_job,
    preview_job,
    save_edit_job,
    write_session_job,
)
from app.logging_setup import log
from app.prompts import default_prompts
from app.settings import Settings
from app.state import Concept, Document, ErrorInfo, JobStatus, ModelInfo, StackItem, StudioState
from app.worker import EngineWorker, Job, JobFailure
from engine.jobs import InputError, Progress
from engine.paths import data_dir

PREVIEW_DEBOUNCE_MS = 120
AUTOSAVE_DELAY_MS = 2500
AFTER_CACHE_SIZE = 512
SWEEP_STRENGTHS = (0.0, 0.5, 1.0, 1.5)
PREVIEW_FIELDS = {"stack", "prompts", "seeds", "preview"}


@dataclass
class PreviewPlan:
    token: int
    settings: tuple
    stack_sig: tuple
    active: bool


def stack_signature(stack: list[StackItem]) -> tuple:
    return tuple((i.edit_id, round(i.strength, 6), i.enabled) for i in stack)


def stack_active(stack: list[StackItem]) -> bool:
    return any(i.enabled and i.strength > 0 for i in stack)


def changed_fields(old: Document, new: Document) -> set[str]:
    return {name for name in ("concepts", "preserve", "method", "params", "stack", "selected", "prompts",
                              "prompts_custom", "seeds", "preview") if getattr(old, name) != getattr(new, name)}


class Controller(QObject):
    export_finished = Signal(object)  # engine.export.ExportResult
    export_failed = Signal(str)  # one sentence (failure or cancel)

    def __init__(self, state: StudioState, settings: Settings, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.state = state
        self.settings = settings
        self.data = data_dir()
        self.worker = EngineWorker(self)
        self.edits: dict[str, Any] = {}  # edit id -> EditDelta (read-only once made)
        self._history: list[Document] = [state.doc.copy()]
        self._index = 0
        self._merge: Any = None
        self._before_cache: dict[tuple, Any] = {}
        self._after_cache: OrderedDict[tuple, Any] = OrderedDict()
        self._preview_job: int | None = None
        self._plans: dict[int, PreviewPlan] = {}
        self._jobs: dict[int, str] = {}  # live job id -> kind
        self._pending_session: sessions.SessionData | None = None
        self._model_request: sessions.ModelRef = sessions.ModelRef()
        self._closing = False
        self.session_path: Path | None = None
        self.last_preview_s: float | None = None
        self._preview_started = 0.0

        self._preview_timer = QTimer(self)
        self._preview_timer.setSingleShot(True)
        self._preview_timer.setInterval(PREVIEW_DEBOUNCE_MS)
        self._preview_timer.timeout.connect(self._submit_preview)
        self._autosave_timer = QTimer(self)
        self._autosave_timer.setSingleShot(True)
        self._autosave_timer.setInterval(AUTOSAVE_DELAY_MS)
        self._autosave_timer.timeout.connect(self.autosave)

        self.worker.job_started.connect(self._on_started)
        self.worker.job_progress.connect(self._on_progress)
        self.worker.job_finished.connect(self._on_finished)
        self.worker.job_failed.connect(self._on_failed)
        self.worker.job_cancelled.connect(self._on_cancelled)

    # ------------------------------------------------------------------ engine and model
    def start_engine(self, model: str | None = "builtin", device: str = "auto", precision: str = "auto") -> None:
        """Start the worker thread; it imports torch and the engine, then loads ``model``."""
        self.worker.start()
        self._submit("engine", engine_job, "Loading the engine")
        if model:
            self.load_model(model, device, precision)

    def load_model(self, source: str, device: str = "auto", precision: str = "auto") -> None:
        self._model_request = sessions.ModelRef(source, device, precision)
        self.state.model_loading = True
        self.state.model_changed.emit()
        self._submit("load", load_job(source, device, precision), f"Loading {Path(source).name or source}")

    # ------------------------------------------------------------------ document edits (all undoable)
    def _commit(self, doc: Document, label: str, merge: Any = None) -> None:
        old = self.state.doc
        changed = changed_fields(old, doc)
        if not changed:
            return
        if "concepts" in changed and not doc.prompts_custom:
            doc.prompts = default_prompts(doc.concepts, self._builtin())
            changed |= {"prompts"} if doc.prompts != old.prompts else set()
        # like QUndoStack's mergeWith: consecutive changes of the same knob (a slider drag) are one step
        if merge is not None and self._merge == merge and self._index == len(self._history) - 1 and self._index > 0:
            self._history[self._index] = doc.copy()
        else:
            del self._history[self._index + 1:]
            self._history.append(doc.copy())
            self._index += 1
        self._merge = merge
        self._prune_edits()
        log.info("change: %s (%s)", label, ", ".join(sorted(changed)))
        self._apply_doc(doc, changed)

    def _apply_doc(self, doc: Document, changed: set[str]) -> None:
        self.state.set_doc(doc, changed)
        self.state.can_undo = self._index > 0
        self.state.can_redo = self._index < len(self._history) - 1
        self.state.history_changed.emit()
        if changed & PREVIEW_FIELDS:
            self.request_preview()
        if "stack" in changed or "selected" in changed:
            self.state.metrics_changed.emit()
        self._autosave_timer.start()

    def _prune_edits(self) -> None:
        """Forget edits no undo step can bring back (a real model's edit can be tens of MB)."""
        referenced = {item.edit_id for doc in (*self._history, self.state.doc) for item in doc.stack}
        for edit_id in [e for e in self.edits if e not in referenced]:
            del self.edits[edit_id]

    def _reset_history(self) -> None:
        self._history = [self.state.doc.copy()]
        self._index = 0
        self._merge = None
        self._prune_edits()
        self.state.can_undo = self.state.can_redo = False
        self.state.history_changed.emit()

    def undo(self) -> None:
        if self._index > 0:
            self._index -= 1
            self._merge = None
            doc = self._history[self._index].copy()
            self._apply_doc(doc, changed_fields(self.state.doc, doc))

    def redo(self) -> None:
        if self._index < len(self._history) - 1:
            self._index += 1
            self._merge = None
            doc = self._history[self._index].copy()
            self._apply_doc(doc, changed_fields(self.state.doc, doc))

    def _edit(self) -> Document:
        return self.state.doc.copy()

    def set_concepts(self, concepts: list[dict] | list[Concept]) -> None:
        doc = self._edit()
        doc.concepts = [c if isinstance(c, Concept) else Concept(**c) for c in concepts]
        self._commit(doc, "concepts")

    def add_concept(self, text: str, kind: str = "object") -> None:
        self.set_concepts([*[c for c in self.state.doc.concepts if c.text.strip()], Concept(text, kind)])

    def set_preserve(self, items: list[str]) -> None:
        doc = self._edit()
        doc.preserve = list(items)
        self._commit(doc, "preserve")

    def set_method(self, name: str) -> None:
        doc = self._edit()
        doc.method = name
        self._commit(doc, "method")

    def set_param(self, name: str, value: Any) -> None:
        doc = self._edit()
        doc.params.setdefault(doc.method, {})[name] = value
        self._commit(doc, f"{doc.method}.{name}", merge=("param", doc.method, name))

    def set_prompts(self, prompts: list[str]) -> None:
        doc = self._edit()
        doc.prompts = list(dict.fromkeys(p for p in prompts if p.strip()))
        doc.prompts_custom = True
        self._commit(doc, "prompts")

    def reset_prompts(self) -> None:
        doc = self._edit()
        doc.prompts_custom = False
        doc.prompts = default_prompts(doc.concepts, self._builtin())
        self._commit(doc, "default prompts")

    def set_seeds(self, seeds: list[int]) -> None:
        doc = self._edit()
        doc.seeds = list(seeds)
        self._commit(doc, "seeds")

    def set_preview_settings(self, **changes: Any) -> None:
        doc = self._edit()
        doc.preview = replace(doc.preview, **changes)
        if "size" in changes:
            self.settings.preview_size = int(changes["size"])
        if "steps" in changes:
            self.settings.preview_steps = int(changes["steps"])
        self._commit(doc, "preview settings")

    def select_edit(self, index: int) -> None:
        doc = self._edit()
        if 0 <= index < len(doc.stack):
            doc.selected = index
            self._commit(doc, "select edit", merge=("select",))

    def set_strength(self, value: float, index: int | None = None) -> None:
        doc = self._edit()
        index = doc.selected if index is None else index
        if not 0 <= index < len(doc.stack):
            return
        doc.stack[index].strength = round(float(value), 4)
        self._commit(doc, "strength", merge=("strength", doc.stack[index].edit_id))

    def set_enabled(self, index: int, enabled: bool) -> None:
        doc = self._edit()
        if 0 <= index < len(doc.stack):
            doc.stack[index].enabled = bool(enabled)
            self._commit(doc, "enable edit")

    def remove_edit(self, index: int) -> None:
        doc = self._edit()
        if 0 <= index < len(doc.stack):
            del doc.stack[index]
            doc.selected = min(doc.selected, len(doc.stack) - 1)
            self._commit(doc, "remove edit")

    def move_edit(self, index: int, new_index: int) -> None:
        doc = self._edit()
        if 0 <= index < len(doc.stack) and 0 <= new_index < len(doc.stack):
            item = doc.stack.pop(index)
            doc.stack.insert(new_index, item)
            doc.selected = new_index
            self._commit(doc, "move edit")

    # ------------------------------------------------------------------ erase
    def erase_problems(self) -> list[str]:
        from widgets.concept_editor import concept_problems

        doc = self.state.doc
        problems = list(concept_problems([c.text for c in doc.concepts]).values())
        if not [c for c in doc.concepts if c.text.strip()]:
            problems.insert(0, "Add at least one concept to erase.")
        if doc.method not in self.state.methods:
            problems.append("Choose an erasure method.")
        if self.state.model is None:
            problems.append("Load a model first.")
        return problems

    def erase(self) -> int | None:
        problems = self.erase_problems()
        if problems:
            self.state.set_error(ErrorInfo(problems[0], "\n".join(problems[1:]), level="warning"))
            return None
        if "erase" in self.worker.pending_kinds():
            return None
        from engine.methods import EraseRequest

        doc = self.state.doc
        spec = self.state.methods[doc.method]
        concepts = [c for c in doc.concepts if c.text.strip()]
        guides = [c.guide.strip() for c in concepts] if spec.uses_guide and any(c.guide.strip() for c in concepts) \
            else []
        anchors = [c.anchor.strip() for c in concepts] if spec.uses_anchor and any(c.anchor.strip() for c in concepts) \
            else []
        request = EraseRequest(method=doc.method, targets=[c.text.strip() for c in concepts], guides=guides,
                               anchors=anchors, preserve=list(doc.preserve) if spec.uses_preserve else [],
                               params=dict(doc.params.get(doc.method, {})))
        snapshot = self._snapshot(doc.stack)
        self.state.set_error(None)
        kinds = {c.text.strip(): c.kind for c in concepts}
        return self._submit("erase", erase_job(request, snapshot, kinds), f"Erasing with {spec.title}")

    def cancel(self) -> None:
        """Esc: stop the running job and drop queued ones (previews come back on the next change)."""
        self._preview_timer.stop()
        self.worker.cancel()

    def import_edits(self, paths: list[str | Path]) -> int | None:
        """Add edit files (from ``erase --out``, an export or a colleague) to the stack, checked against the model."""
        if self.state.model is None:
            self.state.set_error(ErrorInfo("Load a model first; an edit is applied to the model it was made for.",
                                           level="info"))
            return None
        self.state.set_error(None)
        files = [str(p) for p in paths]
        return self._submit("import-edits", import_edits_job(files), f"Importing {len(files)} edit file(s)")

    def save_edit(self, index: int, path: str | Path) -> int | None:
        """Write one stack entry's edit (at its full strength, manifest included) to ``path``."""
        stack = self.state.doc.stack
        if not 0 <= index < len(stack):
            return None
        target = Path(path)
        return self._submit("save-edit", save_edit_job(self.edits[stack[index].edit_id], target),
                            f"Saving {target.name}")

    def _finished_save_edit(self, _job_id: int, message: str) -> None:
        self.state.set_error(ErrorInfo(message, level="info"))

    # ------------------------------------------------------------------ previews
    def request_preview(self) -> None:
        self._preview_timer.start()

    def _settings_key(self) -> tuple:
        p = self.state.doc.preview
        return (p.steps, float(p.guidance), int(p.size))

    def _submit_preview(self) -> None:
        model = self.state.model
        doc = self.state.doc
        if model is None or not doc.prompts or not doc.seeds:
            return
        settings = self._settings_key()
        sig = stack_signature(doc.stack)
        active = stack_active(doc.stack)
        before_needed: list[str] = []
        after_needed: list[str] = []
        before: dict = {}
        after: dict = {}
        intermediate: set = set()
        for prompt in doc.prompts:
            for seed in doc.seeds:
                cell = (prompt, seed)
                b = self._before_cache.get((model.token, prompt, seed, settings))
                if b is not None:
                    before[cell] = b
                elif prompt not in before_needed:
                    before_needed.append(prompt)
                if not active:
                    if b is not None:
                        after[cell] = b
                    continue
                a = self._after_cache.get((model.token, sig, prompt, seed, settings))
                if a is not None:
                    after[cell] = a
                    continue
                if prompt not in after_needed:
                    after_needed.append(prompt)
                old = self.state.after.get(cell)
                if old is not None:  # keep the last image visible, marked unfinished, until the new one comes
                    after[cell] = old
                    intermediate.add(cell)
        self.state.before, self.state.after, self.state.intermediate = before, after, intermediate
        self.state.images_changed.emit()
        if not before_needed and not after_needed:
            self.worker.cancel("preview")
            self._preview_job = None
            self.last_preview_s = 0.0
            return
        plan = PreviewPlan(model.token, settings, sig, active)
        steps, guidance, size = settings
        job = preview_job(model.token, before_needed, after_needed, list(doc.seeds), steps, guidance, size,
                          doc.preview.preview_every, self._snapshot(doc.stack), active)
        self._preview_started = time.perf_counter()
        self._preview_job = self._submit("preview", job, "Rendering previews", supersede=True)
        self._plans[self._preview_job] = plan

    def _apply_grid_update(self, job_id: int, update: GridUpdate) -> None:
        plan = self._plans.get(job_id)
        if plan is None:
            return
        current = job_id == self._preview_job
        for seed, image in zip(update.seeds, update.images):
            cell = (update.prompt, seed)
            if update.final:
                if update.kind == "before":
                    self._before_cache[(plan.token, update.prompt, seed, plan.settings)] = image
                else:
                    key = (plan.token, plan.stack_sig, update.prompt, seed, plan.settings)
                    self._after_cache[key] = image
                    self._after_cache.move_to_end(key)
                    while len(self._after_cache) > AFTER_CACHE_SIZE:
                        self._after_cache.popitem(last=False)
            if not current or update.prompt not in self.state.doc.prompts:
                continue
            if update.kind == "before":
                if update.final or cell not in self.state.before:
                    self.state.before[cell] = image
                if update.mirror:
                    self.state.after[cell] = image
                    if update.final:
                        self.state.intermediate.discard(cell)
                    else:
                        self.state.intermediate.add(cell)
            else:
                self.state.after[cell] = image
                if update.final:
                    self.state.intermediate.discard(cell)
                else:
                    self.state.intermediate.add(cell)
        if current:
            self.state.images_changed.emit()

    # ------------------------------------------------------------------ metrics
    def measure(self, sweep: bool = False) -> int | None:
        """Efficacy / generality / specificity of the current stack (built-in model only)."""
        if self.state.model is None or not self.state.model.is_builtin:
            self.state.set_error(ErrorInfo("Metrics need the built-in ShapesWorld model, which has a judge.",
                                           level="info"))
            return None
        doc = self.state.doc
        # an imported edit may come with an empty concept list: then measure the concepts the stack erased
        concepts = [c.text.strip() for c in doc.concepts if c.text.strip()] or self._stack_targets(doc.stack)
        if not concepts or not doc.stack:
            self.state.set_error(ErrorInfo("Erase a concept first; metrics compare the edited model with the "
                                           "original.", level="info"))
            return None
        selected = doc.selected if 0 <= doc.selected < len(doc.stack) else len(doc.stack) - 1
        strengths = SWEEP_STRENGTHS if sweep else ()
        job = measure_job(self._snapshot(doc.stack), concepts, list(doc.seeds), doc.preview.steps,
                          doc.preview.guidance, selected, strengths, stack_signature(doc.stack),
                          doc.stack[selected].strength)
        return self._submit("evaluate", job, "Measuring erasure", supersede=True)

    def _stack_targets(self, stack: list[StackItem]) -> list[str]:
        targets = [t for item in stack if item.edit_id in self.edits for t in self.edits[item.edit_id].targets]
        return list(dict.fromkeys(targets))

    # ------------------------------------------------------------------ sessions
    def model_ref(self) -> sessions.ModelRef:
        info = self.state.model
        if info is None:
            return self._model_request
        return sessions.ModelRef(info.source, self._model_request.device, self._model_request.precision)

    def save_session(self, path: str | Path) -> int:
        path = Path(path)
        if not path.name.endswith(".json"):
            path = path.with_name(path.name + sessions.SUFFIX)
        self.session_path = path
        doc = self.state.doc.copy()
        edits = {i.edit_id: self.edits[i.edit_id] for i in doc.stack}
        model = self.model_ref()
        return self._submit("session", write_session_job(path, model, doc, edits), f"Saving {path.name}")

    def autosave(self) -> None:
        if self.state.model is None or self._closing:
            return
        path = sessions.autosave_path(self.data)
        doc = self.state.doc.copy()
        edits = {i.edit_id: self.edits[i.edit_id] for i in doc.stack}
        model = self.model_ref()
        self._submit("autosave", write_session_job(path, model, doc, edits), "Autosaving", supersede=True)

    def open_session(self, path: str | Path) -> int | None:
        try:
            data = sessions.read_session(Path(path))
        except InputError as exc:
            self.state.set_error(ErrorInfo(exc.user_message, exc.detail))
            return None
        self._pending_session = data
        current = self.state.model
        if current is None or current.source != data.model.source:
            self.load_model(data.model.source, data.model.device, data.model.precision)
        return self._submit("open-session", open_session_job(data), f"Opening {Path(path).name}")

    # ------------------------------------------------------------------ export
    def export(self, request: Any) -> int | None:
        """Run engine.export.export with the current stack applied."""
        snapshot = self._snapshot(self.state.doc.stack)
        fields = request.as_dict() if hasattr(request, "as_dict") else dict(request.__dict__)
        return self._submit("export", export_job(snapshot, fields), "Exporting")

    # ------------------------------------------------------------------ job plumbing
    def _snapshot(self, stack: list[StackItem]) -> list[tuple[Any, float, bool]]:
        return [(self.edits[i.edit_id], float(i.strength), bool(i.enabled)) for i in stack]

    def _builtin(self) -> bool:
        return self.state.model is None or self.state.model.is_builtin

    def _submit(self, kind: str, fn: Any, label: str, supersede: bool = False) -> int:
        job = Job(kind, fn, label, supersede)
        self._jobs[job.id] = kind
        self.worker.submit(job)
        if kind not in ("preview", "autosave"):
            self.state.job = JobStatus(kind, label)
            self.state.job_changed.emit()
        return job.id

    @property
    def busy(self) -> bool:
        """True while any job is queued or running, or a preview is about to be requested."""
        return bool(self._jobs) or self._preview_timer.isActive()

    def _end(self, job_id: int) -> None:
        self._jobs.pop(job_id, None)
        if job_id in self._plans and job_id != self._preview_job:
            self._plans.pop(job_id, None)
        visible = [k for k in self._jobs.values() if k != "autosave"]
        if not visible:
            self.state.job = None
            self.state.job_changed.emit()

    def _on_started(self, job_id: int, kind: str, label: str) -> None:
        if kind == "autosave":
            return
        self.state.job = JobStatus(kind, label)
        self.state.job_changed.emit()

    def _on_progress(self, job_id: int, kind: str, p: Progress) -> None:
        if kind == "preview" and isinstance(p.preview, GridUpdate):
            self._apply_grid_update(job_id, p.preview)
        if kind == "autosave":
            return
        if kind == "engine":
            self.state.engine_message = p.message
            self.state.engine_changed.emit()
        job = self.state.job or JobStatus(kind)
        self.state.job = replace(job, kind=kind, step=p.step, total=p.total, eta_s=p.eta_s, message=p.message)
        self.state.job_changed.emit()

    def _on_finished(self, job_id: int, kind: str, result: Any) -> None:
        try:
            handler = getattr(self, f"_finished_{kind.replace('-', '_')}", None)
            if handler is not None:
                handler(job_id, result)
        finally:
            self._end(job_id)

    def _on_failed(self, job_id: int, kind: str, failure: JobFailure) -> None:
        self._end(job_id)
        if kind == "load":
            self.state.model_loading = False
            self.state.model_changed.emit()
            self._pending_session = None
        if kind == "open-session":
            self._pending_session = None
        if kind == "engine":
            self.state.engine_message = "The engine could not start."
            self.state.engine_changed.emit()
        if kind == "export":
            self.export_failed.emit(failure.message)
        detail = "\n\n".join(x for x in (failure.detail, failure.traceback) if x)
        action = "Switch to CPU" if failure.out_of_memory and self.state.model and \
            self.state.model.device.startswith("cuda") else ""
        self.state.set_error(ErrorInfo(failure.message, detail, "error", action))

    def _on_cancelled(self, job_id: int, kind: str) -> None:
        self._end(job_id)
        if kind == "load":
            self.state.model_loading = False
            self.state.model_changed.emit()
        if kind == "export":
            self.export_failed.emit("The export was cancelled; nothing was written.")
        if kind in ("erase", "evaluate", "export", "load", "import-edits"):
            self.state.set_error(ErrorInfo("The job was cancelled; nothing was changed.", level="info"))

    # -- per-kind results
    def _finished_engine(self, _job_id: int, info: EngineInfo) -> None:
        self.state.methods = info.methods
        self.state.cuda_available = info.cuda
        self.state.engine_ready = True
        self.state.engine_message = "Engine ready"
        self.state.engine_changed.emit()
        if self.state.doc.method not in info.methods and info.methods:
            doc = self.state.doc.copy()
            doc.method = "uce" if "uce" in info.methods else next(iter(info.methods))
            self.state.set_doc(doc, {"method"})
            self._history[self._index] = doc.copy()

    def _finished_load(self, _job_id: int, info: ModelInfo) -> None:
        previous = self.state.model
        self.state.model = info
        self.state.model_loading = False
        self._before_cache.clear()
        self._after_cache.clear()
        self.settings.last_model = info.source
        doc = self.state.doc.copy()
        if previous is not None or doc.stack:
            doc.stack, doc.selected = [], -1  # edits belong to the model they were made for
        if not doc.prompts_custom:
            doc.prompts = default_prompts(doc.concepts, info.is_builtin)
        self.state.set_doc(doc, {"stack", "selected", "prompts"})
        self._reset_history()
        self.state.model_changed.emit()
        self.state.metrics = None
        self.state.metrics_changed.emit()
        self.request_preview()

    def _push_edits(self, edits: list[Any], label: str) -> None:
        """Append edits to the stack at strength 1 in one undo step; the last one is selected."""
        doc = self._edit()
        for edit in edits:
            edit_id = uuid.uuid4().hex[:16]
            self.edits[edit_id] = edit
            doc.stack.append(StackItem(edit_id, edit.label, edit.method, 1.0, True, bool(edit.is_inference_only)))
        doc.selected = len(doc.stack) - 1
        self._commit(doc, label)

    def _finished_erase(self, _job_id: int, edit: Any) -> None:
        self._push_edits([edit], "erase")
        warnings = list(edit.manifest.get("warnings") or [])  # e.g. a concept cut to the text encoder's length
        if warnings:
            self.state.set_error(ErrorInfo(warnings[0], "\n".join(warnings[1:]), level="warning"))

    def _finished_import_edits(self, _job_id: int, imported: list[tuple[str, Any]]) -> None:
        self._push_edits([edit for _name, edit in imported], "import edit")
        names = ", ".join(f"{name} ({edit.label})" for name, edit in imported[:3])
        more = f" and {len(imported) - 3} more" if len(imported) > 3 else ""
        self.state.set_error(ErrorInfo(f"Imported {names}{more}.", level="info"))

    def _finished_preview(self, job_id: int, _result: Any) -> None:
        self._plans.pop(job_id, None)
        if job_id == self._preview_job:
            self.last_preview_s = time.perf_counter() - self._preview_started
            log.info("preview refreshed in %.2fs", self.last_preview_s)

    def _finished_evaluate(self, _job_id: int, result: MetricsResult) -> None:
        self.state.metrics = result
        self.state.metrics_changed.emit()

    def _finished_session(self, _job_id: int, path: Path) -> None:
        self.state.set_error(ErrorInfo(f"Saved the session to {path}.", level="info"))

    def _finished_open_session(self, _job_id: int, edits: dict[str, Any]) -> None:
        data = self._pending_session
        self._pending_session = None
        if data is None:
            return
        self.edits.update(edits)
        self.session_path = data.path
        doc = data.doc.copy()
        if doc.method not in self.state.methods and self.state.methods:
            doc.method = next(iter(self.state.methods))
        self.state.set_doc(doc, changed_fields(Document(), doc) | {"stack", "prompts", "seeds", "preview"})
        self._reset_history()
        self.state.metrics = None
        self.state.metrics_changed.emit()
        self.request_preview()

    def _finished_export(self, _job_id: int, result: Any) -> None:
        where = getattr(result, "path", result)
        check = getattr(result, "check", "")
        warnings = list(getattr(result, "warnings", []) or [])
        self.state.set_error(ErrorInfo(f"Exported to {where}." + (f" {check}" if check else ""), "\n".join(warnings),
                                       level="warning" if warnings else "info"))
        self.export_finished.emit(result)

    # ------------------------------------------------------------------ shutdown
    def shutdown(self, timeout: float = 10.0) -> bool:
        """Cancel every job and stop the worker (window closing)."""
        self._closing = True
        self._preview_timer.stop()
        self._autosave_timer.stop()
        ended = self.worker.shutdown(timeout)
        if not ended:
            log.warning("the engine thread did not stop within %.0fs", timeout)
        return ended
