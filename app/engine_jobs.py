"""The engine jobs the studio runs on its worker thread, and the results they send back.

Each factory takes copies of what its job needs (never live GUI objects) and returns a function the worker
calls with its ``EngineContext``; engine modules are imported inside, so torch loads on the worker thread,
after the window is up. ``app.controller`` builds and submits them on the GUI thread.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app import session as sessions
from app.state import ModelInfo
from app.worker import EngineContext
from engine.jobs import Cancelled, CancelToken, EditMismatchError, InputError, Progress

DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


@dataclass
class EngineInfo:
    methods: dict[str, Any]
    cuda: bool


@dataclass
class GridUpdate:
    """Images for one prompt row, sent from the preview job through Progress.preview."""

    kind: str  # "before" or "after"
    prompt: str
    seeds: list[int]
    images: list[Any]  # PIL images, one per seed
    final: bool
    mirror: bool = False  # no active edit: the after images are the before images


@dataclass
class MetricsResult:
    efficacy: float | None
    generality: float | None
    specificity: float | None
    efficacy_unedited: float | None
    generality_unedited: float | None
    curve: list[tuple[float, float | None, float | None]] = field(default_factory=list)
    strength: float | None = None
    stack_sig: tuple = ()
    probe_recovery: float | None = None  # None: no weight edit to probe (an SLD-only stack)


def _require_model(ctx: EngineContext) -> None:
    if ctx.model is None:
        raise InputError("No model is loaded; load one first.")


def engine_job(ctx: EngineContext, progress, cancel: CancelToken) -> EngineInfo:
    import os

    progress(Progress("engine", 0, 3, "Loading torch…"))
    import torch

    # leave a core to the GUI thread so the window stays responsive while sampling
    torch.set_num_threads(max(1, (os.cpu_count() or 2) - 1))
    progress(Progress("engine", 1, 3, "Loading diffusers…"))
    import engine.generate
    import engine.model  # noqa: F401

    progress(Progress("engine", 2, 3, "Loading erasure methods…"))
    from engine.methods import all_methods

    methods = all_methods()
    progress(Progress("engine", 3, 3, "Engine ready"))
    return EngineInfo(methods, bool(torch.cuda.is_available()))


def load_job(source: str, device: str, precision: str):
    def run(ctx: EngineContext, progress, cancel: CancelToken) -> ModelInfo:
        import torch

        from engine.model import load_model

        dtype = getattr(torch, DTYPES[precision]) if precision in DTYPES else None
        model = load_model(source, device=None if device == "auto" else device, dtype=dtype, progress=progress,
                           cancel=cancel)
        cancel.raise_if_cancelled()
        old = ctx.model
        ctx.model = model
        ctx.model_token += 1
        del old
        return ModelInfo(model.source, model.architecture, str(model.device), str(model.dtype).replace("torch.", ""),
                         ctx.model_token)

    return run


def erase_job(request: Any, snapshot: list, kinds: dict[str, str]):
    def run(ctx: EngineContext, progress, cancel: CancelToken) -> Any:
        from engine.methods import erase

        _require_model(ctx)
        ctx.model.stack.restore(snapshot)
        edit = erase(ctx.model, request, progress, cancel)
        edit.manifest.setdefault("concept_kinds", kinds)
        return edit

    return run


def preview_job(token: int, before: list[str], after: list[str], seeds: list[int], steps: int, guidance: float,
                size: int, preview_every: int, snapshot: list, active: bool):
    def run(ctx: EngineContext, progress, cancel: CancelToken) -> int:
        from engine.generate import GenerationRequest, generate

        _require_model(ctx)
        if ctx.model_token != token:
            raise Cancelled("The model changed; this preview is out of date.")
        model = ctx.model
        units = (len(before) + len(after)) * steps
        start = time.perf_counter()
        done = [0]

        def sub(kind: str, prompt: str):
            def callback(p: Progress) -> None:
                step = done[0] * steps + p.step
                elapsed = time.perf_counter() - start
                eta = elapsed / step * (units - step) if step else None
                update = GridUpdate(kind, prompt, seeds, p.preview, False, mirror=not active) \
                    if isinstance(p.preview, list) else None
                progress(Progress("preview", step, units, f"{kind}: {prompt}", eta, update))
            return callback

        def render(kind: str, prompt: str) -> None:
            request = GenerationRequest(prompt, seeds=list(seeds), steps=steps, guidance=guidance,
                                        width=size or None, height=size or None, preview_every=preview_every)
            images = generate(model, request, sub(kind, prompt), cancel)
            done[0] += 1
            progress(Progress("preview", done[0] * steps, units, f"{kind}: {prompt}", None,
                              GridUpdate(kind, prompt, seeds, images, True, mirror=not active)))

        if before:
            model.stack.restore([])
            for prompt in before:
                render("before", prompt)
        model.stack.restore(snapshot)
        for prompt in after:
            render("after", prompt)
        return token

    return run


def measure_job(snapshot: list, concepts: list[str], seeds: list[int], steps: int, guidance: float, selected: int,
                strengths: tuple[float, ...], sig: tuple, strength: float):
    def run(ctx: EngineContext, progress, cancel: CancelToken) -> MetricsResult:
        from engine.evaluate import EvalRequest, evaluate
        from engine.probe import probe_skip_reason

        _require_model(ctx)
        model = ctx.model

        def summarize(report: Any) -> tuple[float | None, ...]:
            def mean(key: str) -> float | None:
                values = [e.get(key) for e in report.erased.values() if e.get(key) is not None]
                return sum(values) / len(values) if values else None
            return (mean("efficacy"), mean("generality"), report.specificity, mean("efficacy_unedited"),
                    mean("generality_unedited"))

        request = EvalRequest(seeds=seeds, steps=steps, guidance=guidance, erased=concepts, quick=True)
        try:
            model.stack.restore(snapshot)
            report = evaluate(model, request, progress, cancel)
            eff, gen, spec, eff0, gen0 = summarize(report)
            probe = None
            if probe_skip_reason(model.stack) is None:
                probe = _mean_probe_recovery(model, report, seeds, steps, guidance, progress, cancel)
            curve = []
            for s in strengths:
                if s == strength and snapshot[selected][2]:
                    curve.append((s, eff, spec))  # the measurement just made
                    continue
                if s == 0.0 and len(snapshot) == 1:
                    curve.append((s, eff0, 1.0))  # strength 0 restores the original weights exactly
                    continue
                swept = list(snapshot)
                edit = swept[selected][0]
                swept[selected] = (edit, s, True)
                model.stack.restore(swept)
                e, _g, sp, *_ = summarize(evaluate(model, request, progress, cancel))
                curve.append((s, e, sp))
        finally:
            model.stack.restore(snapshot)
        return MetricsResult(eff, gen, spec, eff0, gen0, curve, strength, sig, probe_recovery=probe)

    return run


def _mean_probe_recovery(model: Any, report: Any, seeds: list[int], steps: int, guidance: float, progress,
                         cancel: CancelToken) -> float | None:
    """The adversarial-embedding probe's recovery rate, averaged over the erased concepts the judge knows."""
    from engine.probe import KINDS, probe_recovery

    rates = [probe_recovery(model, concept, entry["kind"], seeds=seeds, steps=steps, guidance=guidance,
                            progress=progress, cancel=cancel).recovery_rate
             for concept, entry in report.erased.items() if entry.get("kind") in KINDS]
    return sum(rates) / len(rates) if rates else None


def import_edits_job(paths: list[str]):
    def run(ctx: EngineContext, progress, cancel: CancelToken) -> list[tuple[str, Any]]:
        from engine.edits import EditDelta

        _require_model(ctx)
        imported = []
        for i, path in enumerate(paths):
            name = Path(path).name
            progress(Progress("import", i, len(paths), f"Reading {name}"))
            edit = EditDelta.load(path)
            try:
                ctx.model.stack.check_fits(edit)
            except EditMismatchError as exc:
                raise EditMismatchError(f"{name} was made for a different model; load that model, then import "
                                        "the edit again.", exc.detail) from exc
            imported.append((name, edit))
            cancel.raise_if_cancelled()
        return imported

    return run


def open_session_job(data: sessions.SessionData):
    def run(ctx: EngineContext, progress, cancel: CancelToken) -> dict[str, Any]:
        _require_model(ctx)
        if ctx.model.source != data.model.source:
            raise InputError(f"The session's model ({data.model.source}) could not be loaded.")
        edits = sessions.load_edits(data)
        ctx.model.stack.restore([])
        for edit in edits.values():
            ctx.model.stack.check_fits(edit)
            cancel.raise_if_cancelled()
        return edits

    return run


def save_edit_job(edit: Any, target: Path):
    def run(ctx: EngineContext, progress, cancel: CancelToken) -> str:
        edit.save(target)
        return f"Saved {edit.label} to {target}."

    return run


def export_job(snapshot: list, fields: dict[str, Any]):
    def run(ctx: EngineContext, progress, cancel: CancelToken) -> Any:
        from engine.export import ExportRequest, export

        _require_model(ctx)
        ctx.model.stack.restore(snapshot)
        return export(ctx.model, ExportRequest(**fields), progress, cancel)

    return run


def write_session_job(path: Path, model: sessions.ModelRef, doc: Any, edits: dict[str, Any]):
    def run(ctx: EngineContext, progress, cancel: CancelToken) -> Path:
        return sessions.write_session(path, model, doc, edits)

    return run
