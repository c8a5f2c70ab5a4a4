"""Writing a pipeline as a diffusers folder (whole model, or a weightless config skeleton).

The folder is written component by component rather than with ``save_pretrained`` so
that (1) each tensor goes through the streaming writer (progress, cancel, fp16 without a
second copy of the model), (2) the text encoder gets ``text_model.``-prefixed keys,
which transformers >= 5.6 no longer writes but older transformers need, and (3) the
tokenizer also gets ``vocab.json``/``merges.txt``, which transformers 5 no longer
writes but older readers of CLIPTokenizer need.
"""

from __future__ import annotations

import copy
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from engine.export.writer import write_safetensors

DIFFUSERS_WEIGHTS = "diffusion_pytorch_model.safetensors"
TRANSFORMERS_WEIGHTS = "model.safetensors"
WEIGHT_COMPONENTS = ("unet", "vae", "text_encoder")
TEXT_MODEL_PREFIX = "text_model."


def text_encoder_items(text_encoder: Any) -> list[tuple[str, torch.Tensor]]:
    """The text encoder's state dict with the ``text_model.`` prefix that every reader accepts."""
    state = text_encoder.state_dict()
    if type(text_encoder).__name__ != "CLIPTextModel":
        return list(state.items())
    return [(k if k.startswith(TEXT_MODEL_PREFIX) else TEXT_MODEL_PREFIX + k, v) for k, v in state.items()]


def weight_items(pipe: Any, component: str) -> list[tuple[str, torch.Tensor]]:
    module = getattr(pipe, component)
    return text_encoder_items(module) if component == "text_encoder" else list(module.state_dict().items())


def folder_tensors(pipe: Any) -> dict[str, list[tuple[str, torch.Tensor]]]:
    """Per weight component, the (name, live tensor) pairs a diffusers folder stores."""
    return {c: weight_items(pipe, c) for c in WEIGHT_COMPONENTS if getattr(pipe, c, None) is not None}


def write_pipeline_folder(pipe: Any, folder: Path, dtype: torch.dtype | None,
                          on_tensor: Callable[[str], None] | None = None, weights: bool = True) -> None:
    """Write ``pipe`` as a diffusers folder; ``weights=False`` writes only the config skeleton that
    ``from_single_file(config=...)`` needs offline."""
    folder.mkdir(parents=True, exist_ok=True)
    pipe.save_config(folder)  # model_index.json, with null entries for absent components
    _drop_private_keys(folder / "model_index.json")
    tensors = folder_tensors(pipe) if weights else {}
    for name, component in pipe.components.items():
        if component is None:
            continue
        target = folder / name
        if name in ("unet", "vae"):
            component.save_config(target)
            if weights:
                write_safetensors(target / DIFFUSERS_WEIGHTS, tensors[name], dtype, {"format": "pt"},
                                  lambda key, c=name: on_tensor and on_tensor(f"{c}.{key}"))
        elif name == "text_encoder":
            config = copy.deepcopy(component.config)
            # transformers 5 loads a text encoder in its config's dtype by default, while diffusers loads
            # UNet and VAE in float32: a "float16" here makes a plain from_pretrained() mix precisions and
            # fail. float32 keeps the default load consistent; dtype=torch.float16 still loads all in half.
            config.dtype = "float32"
            config.save_pretrained(target)
            if weights:
                write_safetensors(target / TRANSFORMERS_WEIGHTS, tensors[name], dtype, {"format": "pt"},
                                  lambda key, c=name: on_tensor and on_tensor(f"{c}.{key}"))
        elif name == "tokenizer":
            component.save_pretrained(target)
            write_legacy_vocab(target)
        elif name == "scheduler":
            component.save_pretrained(target)
        elif hasattr(component, "save_pretrained"):  # an optional part (safety checker, image encoder)
            component.save_pretrained(target) if weights else None


def write_legacy_vocab(folder: Path) -> None:
    """vocab.json + merges.txt from tokenizer.json's BPE model, for readers older than transformers 5."""
    tokenizer_json = folder / "tokenizer.json"
    if not tokenizer_json.is_file() or (folder / "vocab.json").exists():
        return
    model = json.loads(tokenizer_json.read_text(encoding="utf-8")).get("model", {})
    if model.get("type") != "BPE" or not isinstance(model.get("vocab"), dict):
        return
    (folder / "vocab.json").write_text(json.dumps(model["vocab"], ensure_ascii=False, indent=2) + "\n",
                                       encoding="utf-8")
    merges = [" ".join(m) if isinstance(m, list) else str(m) for m in model.get("merges", [])]
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(m + "\n" for m in merges), encoding="utf-8")


def _drop_private_keys(path: Path) -> None:
    """model_index.json would otherwise record the local path the model was loaded from."""
    data = json.loads(path.read_text(encoding="utf-8"))
    data.pop("_name_or_path", None)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def copy_world_file(source: Path | None, folder: Path) -> None:
    """The built-in model's world.json travels with it, so the studio recognises the export."""
    if source is not None and (source / "world.json").is_file():
        shutil.copy2(source / "world.json", folder / "world.json")


def component_mismatches(expected: Any, loaded: Any, dtype: torch.dtype | None,
                         on_tensor: Callable[[str], None] | None = None) -> tuple[int, list[str]]:
    """Compare every tensor of two modules after rounding both to the export dtype.
    Returns (tensors compared, names that differ or are missing)."""
    a, b = expected.state_dict(), loaded.state_dict()
    bad = sorted(set(a) ^ set(b))
    for key in sorted(set(a) & set(b)):
        if on_tensor is not None:
            on_tensor(key)
        x, y = a[key].detach(), b[key].detach()
        target = dtype if dtype is not None and x.is_floating_point() else x.dtype
        if tuple(x.shape) != tuple(y.shape) or not torch.equal(x.to("cpu", target), y.to("cpu", target)):
            bad.append(key)
    return len(a), bad


def config_mismatches(expected: Any, loaded: Any) -> list[str]:
    """Public config keys that differ between two components (private ``_`` keys are bookkeeping)."""
    def public(cfg: Any) -> dict[str, Any]:
        data = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
        return {k: v for k, v in data.items() if not k.startswith("_")
                and k not in ("dtype", "torch_dtype", "transformers_version", "architectures")}

    a, b = public(expected.config), public(loaded.config)
    return sorted(k for k in set(a) | set(b) if _norm(a.get(k)) != _norm(b.get(k)))


def _norm(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value
