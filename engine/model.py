"""Loading a Stable Diffusion model from local disk, fully offline.

``load_model`` accepts "builtin" (the ShapesWorld model in assets/), a diffusers
pipeline folder, or a single-file checkpoint (.safetensors / .ckpt) in the original SD
layout. The result is a ``LoadedModel``: the pipeline, where it came from, what
architecture it is, and its ``EditStack`` (the only way its weights are changed).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import engine  # noqa: F401  (sets the offline switches before diffusers is imported)
from engine.jobs import CancelToken, ModelLoadError, Progress, ProgressCallback, no_progress

ASSETS = Path(__file__).resolve().parent.parent / "assets"
BUILTIN_PATH = ASSETS / "models" / "shapesworld"
BUILTIN = "builtin"


@dataclass
class LoadedModel:
    pipe: Any  # diffusers.StableDiffusionPipeline
    source: str  # "builtin", a folder or a file path, as the user gave it
    architecture: str  # "shapesworld", "sd1", "sd2", "sd2-v"
    device: str
    dtype: Any  # torch.dtype
    stack: Any = field(default=None)  # engine.edits.EditStack, made in __post_init__

    def __post_init__(self) -> None:
        from engine.edits import EditStack

        if self.stack is None:
            self.stack = EditStack(self.pipe)

    @property
    def is_builtin(self) -> bool:
        return self.architecture == "shapesworld"


def default_device() -> tuple[str, Any]:
    import torch

    if torch.cuda.is_available():
        return "cuda", torch.float16
    return "cpu", torch.float32


def load_model(source: str | Path = BUILTIN, device: str | None = None, dtype: Any = None,
               architecture: str | None = None, progress: ProgressCallback = no_progress,
               cancel: CancelToken | None = None) -> LoadedModel:
    """Load a model offline. ``architecture`` overrides detection for single files ("sd1", "sd2", "sd2-v")."""
    import torch
    from diffusers import StableDiffusionPipeline

    cancel = cancel or CancelToken()
    auto_device, auto_dtype = default_device()
    device = device or auto_device
    if dtype is None:
        dtype = auto_dtype if device == auto_device else (torch.float16 if device.startswith("cuda") else torch.float32)
    progress(Progress("load", 0, 2, f"Loading {source}"))
    source_text = str(source)
    path = BUILTIN_PATH if source_text == BUILTIN else Path(source_text).expanduser()
    if not path.exists():
        raise ModelLoadError(f"There is no model at {path}; check the path.", str(path))
    if not path.is_dir():
        raise ModelLoadError("Single-file checkpoints are not supported yet.", str(path))
    if not (path / "model_index.json").is_file():
        raise ModelLoadError(f"The folder {path.name} is not a diffusers model (it has no model_index.json).",
                             str(path))
    try:
        pipe = StableDiffusionPipeline.from_pretrained(str(path), local_files_only=True, dtype=dtype,
                                                       safety_checker=None, feature_extractor=None,
                                                       requires_safety_checker=False)
    except Exception as exc:
        raise ModelLoadError(f"The model in {path.name} could not be loaded; it may be incomplete or damaged.",
                             repr(exc)) from exc
    cancel.raise_if_cancelled()
    pipe.set_progress_bar_config(disable=True)
    pipe.to(device)
    arch = "shapesworld" if source_text == BUILTIN or (path / "world.json").is_file() else "sd1"
    progress(Progress("load", 2, 2, "Model loaded"))
    return LoadedModel(pipe=pipe, source=source_text, architecture=arch, device=device, dtype=dtype)
