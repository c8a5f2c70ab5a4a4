"""What every export format shares: the request and result, and what the edit stack holds.

"The edited model" is the pipeline with its ``EditStack`` applied. Formats that write
whole weights (diffusers folder, single file) read the live pipeline; formats that
write only the change (LoRA, edit file) need the combined delta of the enabled weight
edits, computed here exactly as the stack computes the weights, so that base + delta
reproduces what the studio shows.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from engine.edits import FORMAT_VERSION, EditDelta, StackEntry
from engine.jobs import InputError

FORMATS = ("diffusers", "single-file", "lora", "edit")
FORMAT_TITLES = {"diffusers": "diffusers folder", "single-file": "single-file checkpoint",
                 "lora": "LoRA (kohya)", "edit": "edit file"}
DTYPES = ("fp32", "fp16")
SLD_POLICIES = ("skip", "refuse")
FILE_SUFFIX = ".safetensors"


@dataclass
class ExportRequest:
    """What to write and where. ``rank`` (LoRA only): a fixed rank, or None to choose each layer's
    rank by ``energy``, the share of the delta's squared singular values to keep."""

    format: str
    out: Path
    dtype: str = "fp32"
    rank: int | None = None
    energy: float = 0.999
    sld_policy: str = "skip"  # what to do with inference-time (SLD) entries: leave them out, or refuse

    def __post_init__(self) -> None:
        self.out = Path(self.out).expanduser() if str(self.out) else Path("")

    @classmethod
    def coerce(cls, request: Any) -> ExportRequest:
        """An ExportRequest from anything with the same fields: the export dialog's request (the GUI may
        not import the engine) or a dict."""
        if isinstance(request, cls):
            return request
        names = [f.name for f in fields(cls)]
        if isinstance(request, Mapping):
            return cls(**{name: request[name] for name in names if name in request})
        if not all(hasattr(request, name) for name in ("format", "out")):
            raise InputError("The export request is incomplete; choose a format and a target.", repr(request))
        return cls(**{name: getattr(request, name) for name in names if hasattr(request, name)})

    def validate(self) -> None:
        if self.format not in FORMATS:
            raise InputError(f"Unknown export format {self.format!r}; choose one of {', '.join(FORMATS)}.")
        if self.dtype not in DTYPES:
            raise InputError(f"Unknown precision {self.dtype!r}; choose fp32 or fp16.")
        if self.sld_policy not in SLD_POLICIES:
            raise InputError(f"Unknown SLD policy {self.sld_policy!r}; choose skip or refuse.")
        if not str(self.out) or str(self.out) == ".":
            raise InputError("Choose where to write the export.")
        if self.format != "diffusers" and self.out.suffix.lower() != FILE_SUFFIX:
            raise InputError(f"The file name must end in {FILE_SUFFIX} (for example {self.out.name}{FILE_SUFFIX}).")
        if self.rank is not None and (isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1):
            raise InputError("The LoRA rank must be a whole number of at least 1.", repr(self.rank))
        if not isinstance(self.energy, (int, float)) or not 0.0 < float(self.energy) <= 1.0:
            raise InputError("The captured energy must be a share above 0 and at most 1 (for example 0.999).",
                             repr(self.energy))


@dataclass
class ExportResult:
    """What was written and how it was verified. ``check`` is one sentence for the user;
    ``details`` holds numbers (LoRA ranks per layer, reconstruction errors, warnings, seconds)."""

    path: Path
    bytes: int
    check: str
    details: dict[str, Any] = field(default_factory=dict)
    format: str = ""

    @property
    def warnings(self) -> list[str]:
        return list(self.details.get("warnings", []))


@dataclass
class StackContent:
    """The stack, split into what can be baked into weights and what cannot."""

    weight_entries: list[StackEntry]  # enabled, non-zero strength, weight-changing
    inference_entries: list[StackEntry]  # enabled SLD-like entries; never baked into files

    @classmethod
    def of(cls, model: Any) -> StackContent:
        entries = list(model.stack.entries) if model.stack is not None else []
        weights = [e for e in entries if e.enabled and e.strength != 0.0 and not e.edit.is_inference_only
                   and e.edit.deltas]
        return cls(weights, [e for e in entries if e.enabled and e.strength != 0.0 and e.edit.is_inference_only])

    @property
    def touched(self) -> list[str]:
        names: dict[str, None] = {}
        for entry in self.weight_entries:
            names.update(dict.fromkeys(entry.edit.deltas))
        return sorted(names)


@torch.no_grad()
def combined_delta(model: Any, content: StackContent, on_tensor: Any = None) -> dict[str, torch.Tensor]:
    """``Σ s·Δ`` of the enabled weight edits per touched weight, in float32 on the CPU, chosen so that
    re-applying it to the base at strength 1 reproduces the studio's weights wherever float32 allows.

    The studio's weight is ``W0 + s1·Δ1 + s2·Δ2 ...`` rounded step by step (``EditStack._recompute``,
    recomputed here the same way on the same device). Per element the first candidate that lands on
    it exactly is kept: the plain sum ``Σ s·Δ`` (exact for one edit at strength 1), ``W_edit - W0``,
    and that difference moved by one or two ulps. For other strengths an exact delta does not always
    exist (``W0 + D`` can skip the needed value); the nearest stays, and the reload check reports it.
    """
    out: dict[str, torch.Tensor] = {}
    for name in content.touched:
        if on_tensor is not None:
            on_tensor(name)
        base = model.stack.original(name).to(torch.float32)
        total = base.clone()
        summed = torch.zeros_like(total)
        for entry in content.weight_entries:
            delta = entry.edit.deltas.get(name)
            if delta is not None:
                total.add_(delta.to(total.device), alpha=entry.strength)
                summed.add_(delta.to(total.device), alpha=entry.strength)
        out[name] = _reapplicable(base, total, summed).to("cpu", torch.float32).contiguous()
    return out


def _reapplicable(base: torch.Tensor, total: torch.Tensor, summed: torch.Tensor) -> torch.Tensor:
    difference = total - base
    up, down = torch.full_like(total, math.inf), torch.full_like(total, -math.inf)
    one_up, one_down = torch.nextafter(difference, up), torch.nextafter(difference, down)
    candidates = [difference, one_up, one_down, torch.nextafter(one_up, up), torch.nextafter(one_down, down)]
    chosen = summed.clone()
    found = base.clone().add_(summed, alpha=1.0) == total  # re-applied as the stack applies, at strength 1
    for candidate in candidates:
        if bool(found.all()):
            break
        hits = ~found & (base.clone().add_(candidate, alpha=1.0) == total)
        chosen = torch.where(hits, candidate, chosen)
        found |= hits
    return torch.where(found, chosen, difference)


def originals_fingerprint(model: Any, names: list[str]) -> str:
    """The manifest fingerprint of the *unedited* tensors (``edits.fingerprint`` hashes the live,
    edited weights). Same digest as ``EditDelta.check_fits``; the edit export's reload check
    runs ``check_fits`` on the written file, so a divergence would be caught there."""
    digest = hashlib.sha256()
    for name in sorted(names):
        tensor = model.stack.original(name).detach().to("cpu", torch.float32).contiguous()
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


def base_model_name(model: Any) -> str:
    return "ShapesWorld (built-in)" if getattr(model, "source", "") == "builtin" else str(model.source)


def merged_manifest(model: Any, content: StackContent, fingerprint: str) -> dict[str, Any]:
    """One manifest for everything exported: the single edit's own manifest with its strength
    recorded, or for several edits a "combined" manifest listing each part."""
    parts = [{"method": e.edit.method, "strength": e.strength,
              **{k: e.edit.manifest.get(k) for k in ("concepts", "params", "metrics", "created", "fingerprint")}}
             for e in content.weight_entries]
    manifest: dict[str, Any]
    if len(content.weight_entries) == 1:
        manifest = dict(content.weight_entries[0].edit.manifest)
        manifest["strength_baked_in"] = content.weight_entries[0].strength
    else:
        manifest = {"method": "combined", "concepts": _merge_concepts([e.edit for e in content.weight_entries]),
                    "params": {}, "metrics": {}}
    manifest.update({
        "format_version": FORMAT_VERSION,
        "fingerprint": fingerprint,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "base_model": base_model_name(model),
        "architecture": model.architecture,
        "combined_from": parts,
    })
    manifest.pop("inference", None)
    return manifest


def _merge_concepts(edits: list[EditDelta]) -> dict[str, Any]:
    merged: dict[str, list[Any]] = {}
    for edit in edits:
        for key, value in (edit.manifest.get("concepts") or {}).items():
            bucket = merged.setdefault(key, [])
            for item in value if isinstance(value, list) else [value]:
                if item not in bucket:
                    bucket.append(item)
    return merged


def sld_warning(entry: StackEntry) -> str:
    return (f"The inference-time entry '{entry.edit.label}' was left out: it steers sampling and cannot be "
            "written into weights.")


def entry_summary(entry: StackEntry) -> dict[str, Any]:
    m = entry.edit.manifest
    return {"method": entry.edit.method, "strength": entry.strength, "concepts": m.get("concepts", {}),
            "params": m.get("params", {}), "metrics": m.get("metrics", {})}
