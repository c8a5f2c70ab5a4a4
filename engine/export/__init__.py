"""Exporting the edited model: diffusers folder, single-file checkpoint, LoRA, or edit file.

``export(model, request, progress, cancel)`` is a job. Every format is written to a
temporary beside the target (``engine.atomic``), reopened with the same readers a user
would use and compared with the edited model, and only then renamed into place; a
cancel, an error, a full disk or a kill leaves nothing at the target (the temporaries of
a killed process are removed by ``remove_stale_temporaries``, which this job runs on the
target folder and the app runs at start-up).

Inference-time entries (SLD) steer sampling and cannot be written into weights: by the
request's ``sld_policy`` they are left out with a warning, or the export is refused.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine.atomic import atomic_path, remove_path, remove_stale_temporaries, temp_path_for
from engine.export.common import (
    DTYPES,
    FILE_SUFFIX,
    FORMAT_TITLES,
    FORMATS,
    SLD_POLICIES,
    ExportRequest,
    ExportResult,
    StackContent,
    combined_delta,
    merged_manifest,
    originals_fingerprint,
    sld_warning,
)
from engine.export.writer import (
    EXPORT_DTYPES,
    disk_error,
    ensure_free_space,
    path_size,
    tensor_bytes,
    write_safetensors,
)
from engine.jobs import (
    Cancelled,
    CancelToken,
    EditMismatchError,
    ExportError,
    InputError,
    ProgressCallback,
    ProgressReporter,
    StudioError,
    is_out_of_memory,
    no_progress,
)

__all__ = [
    "DTYPES",
    "FORMATS",
    "FORMAT_TITLES",
    "SLD_POLICIES",
    "SOURCE_KEY",
    "ExportRequest",
    "ExportResult",
    "describe",
    "export",
]

# safetensors metadata key under which single files and LoRAs record the merged manifest. Not the
# edit file's key (engine.edits.MANIFEST_KEY), so these files are never mistaken for edit files.
SOURCE_KEY = "erasure_studio_source"
SAMPLE_PROMPT = "a photo of a red circle"


def export(model: Any, request: ExportRequest, progress: ProgressCallback = no_progress,
           cancel: CancelToken | None = None) -> ExportResult:
    """Write the edited model (``model.pipe`` with its stack applied) as ``request`` asks; see the module doc.

    ``request`` may also be any object or dict with ExportRequest's fields (the export dialog's).
    The model is only read, never changed.
    """
    cancel = cancel or CancelToken()
    started = time.perf_counter()
    request = ExportRequest.coerce(request)
    request.validate()
    target = request.out.resolve()
    _check_target(model, request, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(target.parent)

    content = StackContent.of(model)
    warnings: list[str] = []
    if content.inference_entries:
        if request.sld_policy == "refuse":
            raise InputError("The edit stack holds an inference-time (SLD) entry, which cannot be written into "
                             "weights; disable it, or choose to export the weight edits only.",
                             detail=content.inference_entries[0].edit.label)
        warnings = [sld_warning(e) for e in content.inference_entries]
        for w in warnings:
            progress_message(progress, w)
    writer = {"diffusers": _export_diffusers, "single-file": _export_single_file, "lora": _export_lora,
              "edit": _export_edit}[request.format]
    try:
        result = writer(model, request, target, content, warnings, progress, cancel)
    except OSError as exc:
        raise disk_error(exc, target) from exc
    except (StudioError, Cancelled):
        raise
    except Exception as exc:
        if is_out_of_memory(exc):
            raise  # the caller turns it into the user's next step (smaller model, other device)
        raise ExportError(f"The {FORMAT_TITLES[request.format]} could not be written; nothing was saved.",
                          detail=repr(exc)) from exc
    result.details["warnings"] = warnings
    result.details["seconds"] = round(time.perf_counter() - started, 3)
    return result


def describe(model: Any) -> dict[str, Any]:
    """What the export dialog shows about ``model``; the keys are ``widgets.export_dialog.ExportContext``'s,
    so the GUI can build it with ``ExportContext(**describe(model), folder=...)`` without the dialog
    importing the engine."""
    from engine.export.common import base_model_name, entry_summary
    from engine.export.folder import folder_tensors

    content = StackContent.of(model)

    def label(entry: Any) -> str:
        return f"{entry.edit.label} ({entry_summary(entry)['strength']:g})"

    weights = sum(tensor_bytes((t for _, t in items), EXPORT_DTYPES["fp32"])
                  for items in folder_tensors(model.pipe).values())
    return {"model_label": base_model_name(model),
            "edit_labels": [label(e) for e in content.weight_entries],
            "inference_labels": [label(e) for e in content.inference_entries],
            "weights_bytes": weights,
            "delta_bytes": sum(model.stack.original(n).numel() * 4 for n in content.touched)}


# ---------------------------------------------------------------- formats


def _export_diffusers(model: Any, request: ExportRequest, target: Path, content: StackContent,
                      warnings: list[str], progress: ProgressCallback, cancel: CancelToken) -> ExportResult:
    from diffusers import StableDiffusionPipeline

    from engine.export.card import model_card
    from engine.export.folder import (
        WEIGHT_COMPONENTS,
        component_mismatches,
        config_mismatches,
        copy_world_file,
        folder_tensors,
        write_pipeline_folder,
    )

    dtype = EXPORT_DTYPES[request.dtype]
    pipe = model.pipe
    tensors = folder_tensors(pipe)
    count = sum(len(items) for items in tensors.values())
    ensure_free_space(target.parent, sum(tensor_bytes((t for _, t in v), dtype) for v in tensors.values()))
    manifest = merged_manifest(model, content, originals_fingerprint(model, content.touched))
    write = ProgressReporter(progress, "export", count, cancel)
    write.start(f"Writing a diffusers folder ({request.dtype})")
    with atomic_path(target) as tmp:
        write_pipeline_folder(pipe, tmp, dtype, lambda name: write.step(name))
        copy_world_file(_source_folder(model), tmp)
        (tmp / "README.md").write_text(model_card(model, content, manifest, request.dtype, warnings),
                                       encoding="utf-8")
        cancel.raise_if_cancelled()
        verify = ProgressReporter(progress, "verify", count + 1, cancel)
        verify.start("Reloading the folder with diffusers")
        loaded = StableDiffusionPipeline.from_pretrained(str(tmp), local_files_only=True)
        verify.step("reloaded")
        compared = _compare_pipelines(pipe, loaded, dtype, verify, component_mismatches, config_mismatches)
        del loaded
    size = path_size(target)
    check = (f"Reloaded with diffusers' StableDiffusionPipeline.from_pretrained: all {compared} weight tensors "
             f"equal the edited model's ({request.dtype}), and the configs and tokenizer match.")
    details = {"components": list(WEIGHT_COMPONENTS), "tensors": compared, "dtype": request.dtype,
               "files": sorted(str(p.relative_to(target)) for p in target.rglob("*") if p.is_file()),
               "edits": len(content.weight_entries)}
    return ExportResult(target, size, check, details, request.format)


def _export_single_file(model: Any, request: ExportRequest, target: Path, content: StackContent,
                        warnings: list[str], progress: ProgressCallback, cancel: CancelToken) -> ExportResult:
    from diffusers import StableDiffusionPipeline

    from engine.export.folder import component_mismatches, config_mismatches, write_pipeline_folder
    from engine.ldm_keys import LdmKeyError, pipeline_to_ldm_state_dict

    dtype = EXPORT_DTYPES[request.dtype]
    pipe = model.pipe
    try:
        state = pipeline_to_ldm_state_dict(pipe)  # CPU tensors in the model's dtype; cast while writing
    except LdmKeyError as exc:
        raise ExportError("This model's layout has no single-file (original SD) equivalent; export a diffusers "
                          "folder instead.", detail=str(exc)) from exc
    items = sorted(state.items())
    ensure_free_space(target.parent, tensor_bytes((t for _, t in items), dtype))
    manifest = merged_manifest(model, content, originals_fingerprint(model, content.touched))
    write = ProgressReporter(progress, "export", len(items), cancel)
    write.start(f"Writing a single-file checkpoint ({request.dtype})")
    skeleton = temp_path_for(target.with_name(target.name + ".config"))
    try:
        with atomic_path(target) as tmp:
            write_safetensors(tmp, items, dtype, {"format": "pt", SOURCE_KEY: json.dumps(manifest)},
                              lambda name: write.step(name))
            del state, items
            # The offline reader needs a config folder: a weightless skeleton of this very pipeline.
            write_pipeline_folder(pipe, skeleton, None, weights=False)
            verify = ProgressReporter(progress, "verify", 1 + _tensor_count(pipe), cancel)
            verify.start("Reloading the file with diffusers' from_single_file")
            loaded = StableDiffusionPipeline.from_single_file(str(tmp), config=str(skeleton), local_files_only=True)
            verify.step("reloaded")
            compared = _compare_pipelines(pipe, loaded, dtype, verify, component_mismatches, config_mismatches)
            del loaded
    finally:
        remove_path(skeleton)
    size = path_size(target)
    check = (f"Reloaded with diffusers' from_single_file: all {compared} weight tensors of the UNet, VAE and text "
             f"encoder equal the edited model's ({request.dtype}).")
    return ExportResult(target, size, check, {"keys": compared, "dtype": request.dtype,
                                              "edits": len(content.weight_entries)}, request.format)


def _export_lora(model: Any, request: ExportRequest, target: Path, content: StackContent,
                 warnings: list[str], progress: ProgressCallback, cancel: CancelToken) -> ExportResult:
    from diffusers import StableDiffusionPipeline

    from engine.export import lora

    if not content.weight_entries:
        raise InputError("There is no weight edit to export as a LoRA; apply or enable an edit first.")
    dtype = EXPORT_DTYPES[request.dtype]
    lora.check_lora_compatible(model.pipe, content.touched)
    names = content.touched
    factor = ProgressReporter(progress, "factor", 2 * len(names), cancel)
    factor.start("Factoring the edit (truncated SVD)")
    deltas = combined_delta(model, content, lambda name: factor.step(name))
    layers = lora.factor_all(deltas, request.rank, request.energy, dtype, lambda name: factor.step(name))
    if not layers:
        raise InputError("The enabled edits add up to no change; there is nothing to export as a LoRA.")
    layers = lora.pad_for_diffusers(layers, dtype)
    items = lora.lora_items(layers, dtype)
    ensure_free_space(target.parent, tensor_bytes((t for _, t in items), None))
    summary = lora.summarize(layers)
    manifest = merged_manifest(model, content, originals_fingerprint(model, names))
    metadata = {**lora.lora_metadata(layers, model.architecture), SOURCE_KEY: json.dumps(manifest)}
    write = ProgressReporter(progress, "export", len(items), cancel)
    write.start(f"Writing a LoRA of {len(layers)} layer(s)")
    with atomic_path(target) as tmp:
        write_safetensors(tmp, items, None, metadata, lambda name: write.step(name))
        verify = ProgressReporter(progress, "verify", 2, cancel)
        verify.start("Reopening the LoRA")
        recomputed = lora.errors_from_file(tmp, deltas)
        verify.step("recomputed the reconstruction error")
        if recomputed["ranks"] != summary["ranks"] or abs(recomputed["error_overall"] - summary["error_overall"]) > \
                1e-6 * max(1.0, summary["error_overall"]):
            raise ExportError("The written LoRA does not match what was computed; nothing was saved.",
                              detail=f"{recomputed['error_overall']} vs {summary['error_overall']}")
        converted, _alphas = StableDiffusionPipeline.lora_state_dict(str(tmp))
        verify.step("parsed by diffusers")
        if len(converted) < 2 * len(layers):
            raise ExportError("diffusers could not read every layer of the written LoRA; nothing was saved.",
                              detail=f"{len(converted)} keys for {len(layers)} layers")
    size = path_size(target)
    real = [layer for layer in layers if layer.delta_norm > 0]  # without pad_for_diffusers' zero layer
    ranks = sorted(layer.rank for layer in real)
    rank_text = f"rank {ranks[0]}" if ranks[0] == ranks[-1] else f"ranks {ranks[0]}–{ranks[-1]}"
    check = (f"Reopened the LoRA ({len(real)} layers, {rank_text}): diffusers parses it and the reconstruction "
             f"error recomputed from the file is {summary['error_overall']:.2e} overall, "
             f"{summary['error_worst']:.2e} in the worst layer.")
    details = {**summary, "dtype": request.dtype, "energy": request.energy, "rank_request": request.rank,
               "edits": len(content.weight_entries),
               "parameters": sum(t.numel() for _, t in items)}
    return ExportResult(target, size, check, details, request.format)


def _export_edit(model: Any, request: ExportRequest, target: Path, content: StackContent,
                 warnings: list[str], progress: ProgressCallback, cancel: CancelToken) -> ExportResult:
    """Edit files are always float32: the delta is small and re-applying must reproduce the weights."""
    import torch

    from engine.edits import MANIFEST_KEY, EditDelta, get_parameter

    if not content.weight_entries:
        raise InputError("There is no weight edit to export; apply or enable an edit first.")
    names = content.touched
    ensure_free_space(target.parent, sum(model.stack.original(n).numel() * 4 for n in names))
    combine = ProgressReporter(progress, "combine", len(names), cancel)
    combine.start("Combining the enabled edits")
    deltas = combined_delta(model, content, lambda name: combine.step(name))
    originals = {n: model.stack.original(n) for n in names}
    manifest = merged_manifest(model, content, originals_fingerprint(model, names))
    write = ProgressReporter(progress, "export", len(names), cancel)
    write.start("Writing the edit file")
    with atomic_path(target) as tmp:
        write_safetensors(tmp, sorted(deltas.items()), torch.float32, {MANIFEST_KEY: json.dumps(manifest)},
                          lambda name: write.step(name))
        verify = ProgressReporter(progress, "verify", len(names) + 1, cancel)
        verify.start("Reloading the edit file")
        edit = EditDelta.load(tmp)
        try:
            edit.check_fits(model.pipe, originals)
        except EditMismatchError as exc:
            raise ExportError("The written edit file does not fit the base model; nothing was saved.",
                              detail=exc.detail) from exc
        verify.step("fits the base model")
        exact, elements, worst = 0, 0, 0.0
        with torch.no_grad():
            for name in names:
                verify.step(name)
                param = get_parameter(model.pipe, name).detach()
                reapplied = originals[name].to(torch.float32).clone()
                reapplied.add_(edit.deltas[name].to(reapplied.device), alpha=1.0)  # as EditStack applies it
                reapplied = reapplied.to(param.dtype)
                exact += int((reapplied == param).sum())
                elements += param.numel()
                worst = max(worst, float((reapplied.float() - param.float()).abs().max()))
    size = path_size(target)
    if exact == elements:
        check = (f"Reloaded the edit file: it fits the base model (fingerprint {manifest['fingerprint'][:12]}) and "
                 f"re-applied to it reproduces all {len(names)} edited weights bit for bit.")
    else:
        check = (f"Reloaded the edit file: it fits the base model; re-applied, {exact / elements:.1%} of the edited "
                 f"values are bit-exact and the rest differ by at most {worst:.1e} (float32 rounding of the "
                 "combined strengths).")
    details = {"weights": len(names), "exact_values": exact, "values": elements, "max_difference": worst, "method": manifest["method"],
               "edits": len(content.weight_entries), "fingerprint": manifest["fingerprint"]}
    return ExportResult(target, size, check, details, request.format)


# ---------------------------------------------------------------- helpers


def _check_target(model: Any, request: ExportRequest, target: Path) -> None:
    """Refuse targets that would destroy something: the loaded model, or a folder that is not a model."""
    source = _source_folder(model) or (Path(model.source).expanduser().resolve()
                                       if model.source != "builtin" else None)
    if source is not None and (target == source or source in target.parents):
        raise InputError("The export would overwrite the model it comes from; choose another place.", str(target))
    if request.format == "diffusers":
        if target.is_file():
            raise InputError(f"{target.name} is a file; choose a folder name for a diffusers export.", str(target))
        if target.is_dir() and any(target.iterdir()) and not (target / "model_index.json").is_file():
            raise InputError(f"The folder {target.name} already holds other files; choose an empty or new folder "
                             "(an earlier diffusers export may be replaced).", str(target))
    elif target.is_dir():
        raise InputError(f"{target.name} is a folder; choose a file name ending in {FILE_SUFFIX}.", str(target))


def _source_folder(model: Any) -> Path | None:
    from engine.model import BUILTIN, BUILTIN_PATH

    if model.source == BUILTIN:
        return BUILTIN_PATH.resolve()
    path = Path(model.source).expanduser()
    return path.resolve() if path.is_dir() else None


def _tensor_count(pipe: Any) -> int:
    return sum(len(getattr(pipe, c).state_dict()) for c in ("unet", "vae", "text_encoder"))


def _compare_pipelines(pipe: Any, loaded: Any, dtype: Any, verify: ProgressReporter,
                       component_mismatches: Callable[..., tuple[int, list[str]]],
                       config_mismatches: Callable[[Any, Any], list[str]]) -> int:
    """Every weight equal after rounding to the export dtype, same configs, same tokenization."""
    compared = 0
    for name in ("unet", "vae", "text_encoder"):
        count, bad = component_mismatches(getattr(pipe, name), getattr(loaded, name), dtype,
                                          lambda key, c=name: verify.step(f"{c}.{key}"))
        compared += count
        if bad:
            raise ExportError(f"The exported {name} did not reload identically; nothing was saved.",
                              detail=f"{len(bad)} tensors differ, e.g. {bad[:3]}")
        differing = config_mismatches(getattr(pipe, name), getattr(loaded, name))
        if differing:
            raise ExportError(f"The exported {name} reloaded with a different configuration; nothing was saved.",
                              detail=", ".join(differing[:5]))
    dtypes = {str(getattr(loaded, name).dtype) for name in ("unet", "vae", "text_encoder")}
    if len(dtypes) != 1:
        raise ExportError("The exported model reloads with mixed precisions and would not run; nothing was saved.",
                          detail=", ".join(sorted(dtypes)))
    if type(loaded.scheduler).__name__ != type(pipe.scheduler).__name__:
        raise ExportError("The exported scheduler reloaded as another type; nothing was saved.",
                          detail=f"{type(loaded.scheduler).__name__} vs {type(pipe.scheduler).__name__}")
    ids = pipe.tokenizer(SAMPLE_PROMPT).input_ids
    if loaded.tokenizer(SAMPLE_PROMPT).input_ids != ids:
        raise ExportError("The exported tokenizer splits text differently; nothing was saved.", detail=SAMPLE_PROMPT)
    return compared


def progress_message(progress: ProgressCallback, message: str) -> None:
    from engine.jobs import Progress

    progress(Progress("export", 0, 0, message))
