"""The studio's state: plain dataclasses plus one QObject that announces changes.

``Document`` is everything the user edits and undo/redo covers (concepts, method and
parameters, the edit stack, test prompts, seeds, preview settings); it is copied whole
into the undo history, which is cheap because edits are referenced by id, not copied.
``StudioState`` also holds what the engine reports back (model info, images, progress,
metrics, errors). Views subscribe to its signals and never talk to the engine.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from typing import Any

from PySide6.QtCore import QObject, Signal

CONCEPT_KINDS = ("object", "style", "color", "other")


@dataclass
class Concept:
    text: str
    kind: str = "object"
    guide: str = ""  # what the concept becomes (UCE/RECE/SPEED); "" means the method's default
    anchor: str = ""  # Concept Ablation's anchor


@dataclass
class StackItem:
    """The GUI's view of one stack entry; ``edit_id`` refers to an EditDelta held by the controller."""

    edit_id: str
    label: str
    method: str
    strength: float = 1.0
    enabled: bool = True
    inference_only: bool = False


@dataclass
class PreviewSettings:
    steps: int = 20
    guidance: float = 5.0
    size: int = 0  # 0: the model's native size
    preview_every: int = 2  # intermediate images every N steps


@dataclass
class Document:
    concepts: list[Concept] = field(default_factory=list)
    preserve: list[str] = field(default_factory=list)
    method: str = ""
    params: dict[str, dict[str, Any]] = field(default_factory=dict)  # method -> overrides
    stack: list[StackItem] = field(default_factory=list)
    selected: int = -1  # the stack entry the strength slider controls
    prompts: list[str] = field(default_factory=list)
    prompts_custom: bool = False  # False: prompts follow the concepts
    seeds: list[int] = field(default_factory=lambda: [0, 1])
    preview: PreviewSettings = field(default_factory=PreviewSettings)

    def copy(self) -> Document:
        return copy.deepcopy(self)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Document:
        doc = cls()
        doc.concepts = [Concept(**{k: str(v) for k, v in c.items() if k in ("text", "kind", "guide", "anchor")})
                        for c in data.get("concepts", [])]
        doc.preserve = [str(p) for p in data.get("preserve", [])]
        doc.method = str(data.get("method", ""))
        doc.params = {str(k): dict(v) for k, v in (data.get("params") or {}).items()}
        doc.stack = [StackItem(**item) for item in data.get("stack", [])]
        doc.selected = int(data.get("selected", len(doc.stack) - 1))
        doc.prompts = [str(p) for p in data.get("prompts", [])]
        doc.prompts_custom = bool(data.get("prompts_custom", False))
        doc.seeds = [int(s) for s in data.get("seeds", [0, 1])]
        doc.preview = PreviewSettings(**(data.get("preview") or {}))
        return doc


@dataclass
class ModelInfo:
    source: str
    architecture: str
    device: str
    dtype: str
    token: int  # the worker's model_token; images cached with another token are stale

    @property
    def is_builtin(self) -> bool:
        return self.architecture == "shapesworld"


@dataclass
class ErrorInfo:
    message: str
    detail: str = ""
    level: str = "error"  # "error", "warning", "info"
    action: str = ""  # optional button text, e.g. "Restore session"


@dataclass
class JobStatus:
    kind: str = ""
    label: str = ""
    step: int = 0
    total: int = 0
    eta_s: float | None = None
    message: str = ""


class StudioState(QObject):
    """Observable state. ``doc_changed`` carries the set of Document fields that changed."""

    doc_changed = Signal(object)  # set[str]
    engine_changed = Signal()  # engine_ready / methods / cuda
    model_changed = Signal()  # model info or loading state
    images_changed = Signal()
    job_changed = Signal()  # busy / progress
    error_changed = Signal()
    metrics_changed = Signal()
    history_changed = Signal()  # undo/redo availability

    def __init__(self) -> None:
        super().__init__()
        self.doc = Document()
        self.engine_ready = False
        self.engine_message = "Starting the engine…"
        self.methods: dict[str, Any] = {}  # name -> engine.methods.MethodSpec
        self.cuda_available = False
        self.model: ModelInfo | None = None
        self.model_loading = False
        self.before: dict[tuple[str, int], Any] = {}  # (prompt, seed) -> PIL image
        self.after: dict[tuple[str, int], Any] = {}
        self.intermediate: set[tuple[str, int]] = set()  # after cells showing an unfinished image
        self.job: JobStatus | None = None
        self.error: ErrorInfo | None = None
        self.metrics: dict[str, Any] | None = None  # {"bars": {...}, "curve": [(strength, eff, spec), ...]}
        self.can_undo = False
        self.can_redo = False

    def set_doc(self, doc: Document, changed: set[str]) -> None:
        self.doc = doc
        self.doc_changed.emit(set(changed))

    def set_error(self, error: ErrorInfo | None) -> None:
        self.error = error
        self.error_changed.emit()
