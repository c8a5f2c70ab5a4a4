"""The registry of erasure methods: what each is called, its parameters, and how to run it.

Each method lives in its own module (engine/uce.py, engine/esd.py, ...) and defines a
module-level ``METHOD = MethodSpec(...)``. The GUI builds its parameter form from
``MethodSpec.params``; the CLI's ``--set key=value`` is checked against them.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from engine.jobs import CancelToken, InputError, Progress, ProgressCallback, no_progress

log = logging.getLogger(__name__)

# Modules that define METHOD; the order is the order users see.
METHOD_MODULES = ("uce", "rece", "speed", "esd", "concept_ablation", "sld")


@dataclass(frozen=True)
class ParamSpec:
    """One tunable parameter of a method; ``tooltip`` is one sentence for the GUI."""

    name: str
    kind: str  # "float", "int", "bool", "choice", "str"
    default: Any
    tooltip: str
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()
    minimum_means: str = ""  # what the minimum stands for, shown instead of the number ("preset")

    def parse(self, value: Any) -> Any:
        """Convert and range-check a value (strings from the CLI included)."""
        try:
            if self.kind == "float":
                value = float(value)
            elif self.kind == "int":
                value = int(value)
            elif self.kind == "bool":
                value = value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes", "on")
            elif self.kind == "choice" and isinstance(value, bool) and {"on", "off"} <= set(self.choices):
                value = "on" if value else "off"  # the option was a checkbox in sessions saved before
            else:
                value = str(value)
        except (TypeError, ValueError):
            raise InputError(f"{self.name} must be a {self.kind} value.", repr(value)) from None
        too_low = self.minimum is not None and value < self.minimum
        too_high = self.maximum is not None and value > self.maximum
        if self.kind in ("float", "int") and (too_low or too_high):
            raise InputError(f"{self.name} must be between {self.minimum:g} and {self.maximum:g}.", repr(value))
        if self.kind == "choice" and value not in self.choices:
            raise InputError(f"{self.name} must be one of {', '.join(self.choices)}.", repr(value))
        return value


@dataclass
class EraseRequest:
    """What to erase and how. ``guides`` (UCE/RECE/SPEED: what the concept becomes) and ``anchors``
    (Concept Ablation) are broadcast when they hold one entry; ``params`` override the method defaults."""

    method: str
    targets: list[str]
    guides: list[str] = field(default_factory=list)
    anchors: list[str] = field(default_factory=list)
    preserve: list[str] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    seed: int = 0


@dataclass(frozen=True)
class MethodSpec:
    name: str  # CLI name, e.g. "uce", "esd-x"
    title: str  # shown in the GUI
    family: str  # "closed-form", "fine-tune" or "inference"
    description: str  # one or two sentences for the GUI
    params: tuple[ParamSpec, ...]
    run: Callable[..., Any]  # (model, request, progress, cancel) -> EditDelta
    exportable: bool = True  # False for inference-time methods (SLD)
    uses_guide: bool = True
    uses_anchor: bool = False
    uses_preserve: bool = True

    def resolve_params(self, overrides: dict[str, Any]) -> dict[str, Any]:
        known = {p.name: p for p in self.params}
        unknown = sorted(set(overrides) - set(known))
        if unknown:
            raise InputError(f"{self.title} has no parameter {unknown[0]!r}; it has {', '.join(known)}.")
        return {name: spec.parse(overrides.get(name, spec.default)) for name, spec in known.items()}


def all_methods() -> dict[str, MethodSpec]:
    """Every registered method by CLI name. A module may register several variants (esd-x, esd-u, ...)."""
    methods: dict[str, MethodSpec] = {}
    for module_name in METHOD_MODULES:
        try:
            module = importlib.import_module(f"engine.{module_name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"engine.{module_name}":
                continue  # not written yet
            raise
        specs = getattr(module, "METHODS", None) or [module.METHOD]
        for spec in specs:
            methods[spec.name] = spec
    return methods


def get_method(name: str) -> MethodSpec:
    methods = all_methods()
    if name not in methods:
        raise InputError(f"Unknown method {name!r}; choose one of {', '.join(methods)}.")
    return methods[name]


def clean_concepts(concepts: list[str], what: str = "concept") -> list[str]:
    """Strip whitespace; refuse empty lists, empty entries and duplicates with a clear message."""
    cleaned = [" ".join(str(c).split()) for c in concepts]
    if not cleaned:
        raise InputError(f"Add at least one {what} to erase.")
    if any(not c for c in cleaned):
        raise InputError(f"A {what} is empty; type a word or phrase, or remove the empty line.")
    seen: set[str] = set()
    for c in cleaned:
        if c.lower() in seen:
            raise InputError(f"The {what} {c!r} is listed twice.")
        seen.add(c.lower())
    return cleaned


def fit_to_tokenizer(tokenizer: Any, text: str) -> tuple[str, int]:
    """``text`` cut after the last whole word that fits the text encoder, and its token count before cutting.

    CLIP sees at most ``model_max_length`` tokens including the start and end tokens; everything
    after that is silently dropped by the tokenizer. Cutting at a word boundary here makes the
    drop visible (the manifest records what was really erased) and keeps a half word out.
    CLIP's tokenizer never joins tokens across whitespace, so token counts add up word by word.
    """
    limit = int(tokenizer.model_max_length) - 2
    words = text.split()
    counts = [len(tokenizer(word, add_special_tokens=False).input_ids) for word in words]
    total = sum(counts)
    if total <= limit:
        return text, total
    kept, used = [], 0
    for word, count in zip(words, counts):
        if used + count > limit:
            break
        kept.append(word)
        used += count
    return " ".join(kept), total


def truncate_long_concepts(model: Any, concepts: list[str]) -> tuple[list[str], list[str]]:
    """Concepts cut to what the text encoder can see, plus one warning sentence per cut concept."""
    tokenizer = getattr(getattr(model, "pipe", None), "tokenizer", None)
    if tokenizer is None:
        return concepts, []
    fitted, warnings = [], []
    limit = int(tokenizer.model_max_length) - 2
    for concept in concepts:
        cut, tokens = fit_to_tokenizer(tokenizer, concept)
        if cut != concept:
            if not cut:
                raise InputError("The first word of a concept is already longer than the text encoder can read; "
                                 "shorten it.", concept[:80])
            shown = cut if len(cut) <= 60 else cut[:60].rsplit(" ", 1)[0] + " …"
            warnings.append(f"A concept was {tokens} tokens long, more than the {limit} the text encoder reads; "
                            f"only its start (“{shown}”) was erased.")
        fitted.append(cut)
    return fitted, warnings


def check_seed(seed: Any) -> int:
    from engine.generate import MAX_SEED

    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise InputError(f"The seed must be a whole number from 0 to {MAX_SEED}.", repr(seed))
    return seed


def erase(model: Any, request: EraseRequest, progress: ProgressCallback = no_progress,
          cancel: CancelToken | None = None) -> Any:
    """Run a method and return its EditDelta. The model's weights are unchanged afterwards
    (the caller pushes the edit on the model's stack).

    Concepts longer than the text encoder can read are cut at a word boundary; each cut is
    reported as a ``Progress`` with stage "warning" and kept in ``manifest["warnings"]``.
    """
    spec = get_method(request.method)
    request.targets = clean_concepts(request.targets)
    request.seed = check_seed(request.seed)
    request.params = spec.resolve_params(request.params)
    request.targets, warnings = truncate_long_concepts(model, request.targets)
    clean_concepts(request.targets)  # two long concepts may be equal once cut
    for warning in warnings:
        log.warning("%s", warning)
        progress(Progress("warning", 0, 0, warning))
    edit = spec.run(model, request, progress, cancel or CancelToken())
    if warnings and hasattr(edit, "manifest"):
        edit.manifest.setdefault("warnings", []).extend(warnings)
    return edit
