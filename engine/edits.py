"""Edits: weight deltas with a manifest, and the stack that applies them to a model.

An ``EditDelta`` holds ``{parameter name: float32 delta}`` where a name is the
component plus the module's parameter name, e.g.
``unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight``. Its
manifest records the method, concepts, hyperparameters and the fingerprint of the
base tensors it touches.

The ``EditStack`` owns the only write path to a model's weights: every touched weight
is recomputed as ``W0 + sum(s_i * delta_i)`` from a stored copy of the original ``W0``,
so strength 0 (or removing every edit) restores the original bit for bit.
Inference-time entries (SLD) change no weights; the generator reads them from the stack.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from engine.jobs import EditMismatchError, InputError
from engine.safetensors_header import MANIFEST_KEY

COMPONENTS = ("unet", "text_encoder")
STACK_ATTRIBUTE = "_erasure_studio_stack"  # on a pipeline: a weak reference to the EditStack that owns its weights
FORMAT_VERSION = 1
LABEL_CONCEPTS = 5  # concepts named in an edit's label (history list, model card); the manifest keeps them all


def get_parameter(pipe: Any, name: str) -> torch.nn.Parameter:
    component, _, param = name.partition(".")
    if component not in COMPONENTS:
        raise EditMismatchError(f"This edit touches an unknown part of the model ({component}).", name)
    module = getattr(pipe, component, None)
    if module is None:
        raise EditMismatchError("This edit needs a model part that the loaded model does not have.", name)
    try:
        return module.get_parameter(param)
    except AttributeError as exc:
        raise EditMismatchError("This edit does not fit the loaded model: a weight it changes is missing.",
                                name) from exc


def fingerprint(pipe: Any, names: list[str] | tuple[str, ...]) -> str:
    """SHA-256 over the named original tensors (name, shape and float32 bytes), sorted by name.

    Original means the base model's: when ``pipe`` has an ``EditStack``, its stored copies of the
    untouched weights, not the weights as the stack's edits left them. An edit made while other
    edits are applied (UCE on top of UCE, ESD trained from an edited model) must carry the base
    model's fingerprint, because that is what ``check_fits`` compares it with when it is pushed.
    """
    ref = getattr(pipe, STACK_ATTRIBUTE, None)
    stack = ref() if ref is not None else None
    return tensors_digest({name: stack.original(name) if stack is not None else get_parameter(pipe, name).detach()
                           for name in names})


def tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over (name, shape, float32 bytes) of each tensor, sorted by name."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().to("cpu", torch.float32).contiguous()
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


@dataclass
class EditDelta:
    """One method's result: parameter deltas (float32, CPU) plus a JSON-able manifest.

    ``manifest`` keys: method, concepts (targets/guides/anchors/preserve), params,
    fingerprint, created, metrics (optional), and ``inference`` for SLD-like entries.
    """

    deltas: dict[str, torch.Tensor]
    manifest: dict[str, Any] = field(default_factory=dict)

    @property
    def method(self) -> str:
        return str(self.manifest.get("method", "unknown"))

    @property
    def is_inference_only(self) -> bool:
        """True for entries (like SLD) that change sampling, not weights; they cannot be baked into a file."""
        return bool(self.manifest.get("inference"))

    @property
    def targets(self) -> list[str]:
        """The concepts this edit erases."""
        return list(self.manifest.get("concepts", {}).get("targets", []))

    @property
    def label(self) -> str:
        """"uce: red, blue"; a mass erasure names its first LABEL_CONCEPTS concepts and counts the rest."""
        concepts = self.targets
        named = ", ".join(concepts[:LABEL_CONCEPTS]) or "(no concept)"
        if len(concepts) > LABEL_CONCEPTS:
            named += f" and {len(concepts) - LABEL_CONCEPTS} more"
        return f"{self.method}: {named}"

    @classmethod
    def create(cls, pipe: Any, deltas: dict[str, torch.Tensor], method: str, concepts: dict[str, Any],
               params: dict[str, Any], inference: dict[str, Any] | None = None) -> EditDelta:
        clean = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in deltas.items()}
        manifest = {
            "format_version": FORMAT_VERSION,
            "method": method,
            "concepts": concepts,
            "params": params,
            "fingerprint": fingerprint(pipe, list(clean)) if clean else "",
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "metrics": {},
        }
        if inference is not None:
            manifest["inference"] = inference
        return cls(clean, manifest)

    def check_fits(self, pipe: Any, original: dict[str, torch.Tensor] | None = None) -> None:
        """Refuse an edit made for another model (shape or fingerprint mismatch)."""
        for name, delta in self.deltas.items():
            param = get_parameter(pipe, name)
            if tuple(param.shape) != tuple(delta.shape):
                raise EditMismatchError("This edit was made for a different model (a weight has another shape).",
                                        f"{name}: model {tuple(param.shape)} vs edit {tuple(delta.shape)}")
        if not self.deltas:
            return
        expected = self.manifest.get("fingerprint", "")
        if original is not None:
            actual = tensors_digest({name: original[name] for name in self.deltas})
        else:
            actual = fingerprint(pipe, list(self.deltas))
        if expected != actual:
            raise EditMismatchError("This edit was made for a different base model; load that model to apply it.",
                                    f"fingerprint {expected[:12]} != {actual[:12]}")

    def save(self, path: str | Path) -> None:
        from safetensors.torch import save_file

        from engine.atomic import atomic_path
        from engine.export.writer import disk_error

        try:
            with atomic_path(Path(path)) as tmp:
                save_file(self.deltas, str(tmp), metadata={MANIFEST_KEY: json.dumps(self.manifest)})
        except OSError as exc:  # a full disk, a read-only folder: one sentence, and nothing left behind
            raise disk_error(exc, Path(path)) from exc

    @classmethod
    def load(cls, path: str | Path) -> EditDelta:
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise InputError(f"The edit file {path.name} does not exist.", str(path))
        try:
            with safe_open(str(path), framework="pt") as f:
                metadata = f.metadata() or {}
                deltas = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
        except Exception as exc:  # safetensors raises several types for broken files
            raise InputError(f"{path.name} is not a readable edit file.", repr(exc)) from exc
        if MANIFEST_KEY not in metadata:
            raise InputError(f"{path.name} is not an Erasure Studio edit (it has no manifest).", str(path))
        try:
            manifest = json.loads(metadata[MANIFEST_KEY])
            check_manifest(manifest)
        except (ValueError, TypeError) as exc:
            raise InputError(f"{path.name} has a damaged manifest.", repr(exc)) from exc
        if int(manifest.get("format_version", FORMAT_VERSION)) > FORMAT_VERSION:
            raise InputError(f"{path.name} was written by a newer version of Erasure Studio; update to apply it.",
                             str(manifest.get("format_version")))
        for name, tensor in deltas.items():
            if not name.startswith(tuple(c + "." for c in COMPONENTS)):
                raise InputError(f"{path.name} changes an unknown part of the model.", name)
            if not tensor.is_floating_point() or not bool(torch.isfinite(tensor).all()):
                raise InputError(f"{path.name} contains invalid numbers (NaN or infinity); it cannot be applied.",
                                 name)
        return cls({k: v.to(torch.float32) for k, v in deltas.items()}, manifest)


def check_manifest(manifest: Any) -> None:
    """Raise ValueError or TypeError unless ``manifest`` has the types every reader relies on.

    An edit file comes from anywhere: a wrong type here (concepts as a string, say) would
    otherwise surface later as a crash in a label, a history panel or the sampler.
    """
    if not isinstance(manifest, dict):
        raise TypeError("the manifest is not a JSON object")
    if not isinstance(manifest.get("method"), str) or not manifest["method"]:
        raise ValueError("the manifest names no method")
    for key in ("concepts", "params", "metrics", "inference"):
        if key in manifest and not isinstance(manifest[key], dict):
            raise ValueError(f"manifest {key} is not an object")
    for key in ("fingerprint", "created"):
        if key in manifest and not isinstance(manifest[key], str):
            raise ValueError(f"manifest {key} is not a string")
    version = manifest.get("format_version", FORMAT_VERSION)
    if isinstance(version, bool) or not isinstance(version, int):
        raise TypeError("manifest format_version is not a whole number")
    targets = manifest.get("concepts", {}).get("targets", [])
    if not isinstance(targets, list) or not all(isinstance(t, str) for t in targets):
        raise ValueError("manifest concepts.targets is not a list of text")
    inference = manifest.get("inference")
    if inference is not None:
        if not isinstance(inference.get("concept"), str) or not inference["concept"].strip():
            raise ValueError("the inference entry names no concept")
        for key, value in inference.items():
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            texts = isinstance(value, list) and all(isinstance(v, str) for v in value)  # SLD's reference prompts
            if not (isinstance(value, str) or texts or (number and math.isfinite(value))):
                raise ValueError(f"inference {key} is neither text, a list of text nor a finite number")


def check_finite(edit: EditDelta) -> None:
    """Refuse deltas with NaN or infinity before any weight is written (a NaN would spread to every image)."""
    for name, delta in edit.deltas.items():
        if not bool(torch.isfinite(delta).all()):
            raise InputError("This edit contains invalid numbers (NaN or infinity); it cannot be applied.", name)


@dataclass
class StackEntry:
    edit: EditDelta
    strength: float = 1.0
    enabled: bool = True


STRENGTH_RANGE = (0.0, 2.0)


def check_strength(strength: float) -> float:
    if not isinstance(strength, (int, float)) or math.isnan(strength) or not (
            STRENGTH_RANGE[0] <= strength <= STRENGTH_RANGE[1]):
        raise InputError(f"Strength must be a number between {STRENGTH_RANGE[0]:g} and {STRENGTH_RANGE[1]:g}.",
                         repr(strength))
    return float(strength)


class EditStack:
    """Ordered (edit, strength, enabled) entries applied to one pipeline's weights."""

    def __init__(self, pipe: Any) -> None:
        self.pipe = pipe
        self.entries: list[StackEntry] = []
        self._originals: dict[str, torch.Tensor] = {}
        setattr(pipe, STACK_ATTRIBUTE, weakref.ref(self))  # lets fingerprint() find the base weights

    # -- queries
    def __len__(self) -> int:
        return len(self.entries)

    def original(self, name: str) -> torch.Tensor:
        """The untouched base weight (a copy on the model's device), whatever is applied now."""
        if name in self._originals:
            return self._originals[name]
        return get_parameter(self.pipe, name).detach()

    def check_fits(self, edit: EditDelta) -> None:
        """Refuse an edit made for another base model, whatever the stack has applied now."""
        edit.check_fits(self.pipe, {n: self.original(n) for n in edit.deltas})

    def inference_entries(self) -> list[StackEntry]:
        return [e for e in self.entries if e.enabled and e.edit.is_inference_only and e.strength > 0]

    def snapshot(self) -> list[tuple[EditDelta, float, bool]]:
        return [(e.edit, e.strength, e.enabled) for e in self.entries]

    # -- changes
    def push(self, edit: EditDelta, strength: float = 1.0, enabled: bool = True) -> None:
        strength = check_strength(strength)
        check_finite(edit)
        self.check_fits(edit)
        self.entries.append(StackEntry(edit, strength, enabled))
        self._recompute(edit.deltas)

    def remove(self, index: int) -> StackEntry:
        entry = self.entries.pop(index)
        self._recompute(entry.edit.deltas)
        return entry

    def set_strength(self, index: int, strength: float) -> None:
        self.entries[index].strength = check_strength(strength)
        self._recompute(self.entries[index].edit.deltas)

    def set_enabled(self, index: int, enabled: bool) -> None:
        self.entries[index].enabled = bool(enabled)
        self._recompute(self.entries[index].edit.deltas)

    def move(self, index: int, new_index: int) -> None:
        entry = self.entries.pop(index)
        self.entries.insert(new_index, entry)
        self._recompute(entry.edit.deltas)

    def restore(self, snapshot: list[tuple[EditDelta, float, bool]]) -> None:
        """Replace the whole stack (undo/redo, session load); recomputes every touched weight."""
        touched = set(self._originals)
        entries = [StackEntry(e, check_strength(s), en) for e, s, en in snapshot]
        for entry in entries:  # every weight must exist with the edit's shape before any is written
            for name, delta in entry.edit.deltas.items():
                if tuple(get_parameter(self.pipe, name).shape) != tuple(delta.shape):
                    raise EditMismatchError("This edit was made for a different model (a weight has another "
                                            "shape).", name)
        self.entries = entries
        for entry in self.entries:
            touched |= set(entry.edit.deltas)
        self._recompute(dict.fromkeys(touched))

    def clear(self) -> None:
        self.restore([])

    # -- the one write path
    @torch.no_grad()
    def _recompute(self, names: dict[str, Any]) -> None:
        for name in names:
            param = get_parameter(self.pipe, name)
            if name not in self._originals:
                self._originals[name] = param.detach().clone()
            base = self._originals[name]
            active = [(e.strength, e.edit.deltas[name]) for e in self.entries
                      if e.enabled and name in e.edit.deltas and e.strength != 0.0]
            if not active:
                param.copy_(base)
                del self._originals[name]
                continue
            total = base.to(torch.float32).clone()
            for strength, delta in active:
                total.add_(delta.to(total.device), alpha=strength)
            param.copy_(total.to(param.dtype))
