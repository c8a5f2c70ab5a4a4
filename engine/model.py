"""Loading a Stable Diffusion model from local disk, fully offline.

``load_model`` accepts "builtin" (the ShapesWorld model in assets/), a diffusers
pipeline folder, or a single-file checkpoint (.safetensors, or .ckpt read with
``weights_only=True`` only) in the original SD 1.x/2.x layout as AUTOMATIC1111 and
ComfyUI write it. The result is a ``LoadedModel``: the pipeline, where it came from,
what architecture it is, and its ``EditStack`` (the only way its weights are changed).

A single file holds weights only. diffusers needs matching configs and would fetch
them from the Hub, so the configs come from the bundled skeletons in
``assets/skeletons`` (SD 1.x, SD 2.x base 512 epsilon, SD 2.x 768 v-prediction), chosen
from the state-dict keys and shapes, or from a folder the caller names (``config=``).
Everything that can go wrong with a file the user picked becomes a ``ModelLoadError``
with one plain sentence.
"""

from __future__ import annotations

import json
import logging
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import engine  # noqa: F401  (sets the offline switches before diffusers is imported)
from engine.jobs import CancelToken, ModelLoadError, Progress, ProgressCallback, no_progress
from engine.safetensors_header import MANIFEST_KEY, HeaderError, read_header

log = logging.getLogger(__name__)

ASSETS = Path(__file__).resolve().parent.parent / "assets"
BUILTIN_PATH = ASSETS / "models" / "shapesworld"
BUILTIN = "builtin"
SKELETONS = ASSETS / "skeletons"
CLIP_TOKENIZER = SKELETONS / "clip-tokenizer"
ARCHITECTURES = ("sd1", "sd2", "sd2-v")  # what a user may force for a single file
ARCHITECTURE_NAMES = {
    "shapesworld": "the built-in ShapesWorld model",
    "sd1": "Stable Diffusion 1.x",
    "sd2": "Stable Diffusion 2.x (512, epsilon)",
    "sd2-v": "Stable Diffusion 2.x (768, v-prediction)",
}
SAFETENSORS_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
UNET = "model.diffusion_model."


@dataclass
class LoadedModel:
    pipe: Any  # diffusers.StableDiffusionPipeline
    source: str  # "builtin", a folder or a file path, as the user gave it
    architecture: str  # "shapesworld", "sd1", "sd2", "sd2-v"
    device: str
    dtype: Any  # torch.dtype
    stack: Any = field(default=None)  # engine.edits.EditStack, made in __post_init__
    notes: list[str] = field(default_factory=list)  # how the architecture was decided, for the user

    def __post_init__(self) -> None:
        from engine.edits import EditStack

        if self.stack is None:
            self.stack = EditStack(self.pipe)

    @property
    def is_builtin(self) -> bool:
        return self.architecture == "shapesworld"

    @property
    def architecture_name(self) -> str:
        return ARCHITECTURE_NAMES.get(self.architecture, self.architecture)


def default_device() -> tuple[str, Any]:
    """CUDA with fp16 when a GPU is there, otherwise CPU with fp32 (fp16 on CPU is slow or unsupported)."""
    import torch

    if torch.cuda.is_available():
        return "cuda", torch.float16
    return "cpu", torch.float32


def resolve_device(device: str | None, dtype: Any) -> tuple[str, Any]:
    import torch

    auto_device, auto_dtype = default_device()
    device = (device or auto_device).strip().lower()
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError("This computer has no usable CUDA GPU; choose the CPU as device.", device)
    if not (device == "cpu" or device.startswith("cuda") or device == "mps"):
        raise ModelLoadError(f"Unknown device {device!r}; use cpu or cuda.", device)
    if dtype is None:
        dtype = auto_dtype if device == auto_device else (torch.float16 if device.startswith("cuda") else torch.float32)
    return device, dtype


def load_model(source: str | Path = BUILTIN, device: str | None = None, dtype: Any = None,
               architecture: str | None = None, progress: ProgressCallback = no_progress,
               cancel: CancelToken | None = None, config: str | Path | None = None) -> LoadedModel:
    """Load a model offline.

    ``architecture`` overrides detection for single files ("sd1", "sd2", "sd2-v"); ``config`` names a
    diffusers folder whose configs describe a single file (for sizes no skeleton covers).
    """
    cancel = cancel or CancelToken()
    _quiet_libraries()
    device, dtype = resolve_device(device, dtype)
    if architecture is not None and architecture not in ARCHITECTURES:
        raise ModelLoadError(f"Unknown architecture {architecture!r}; choose one of {', '.join(ARCHITECTURES)}.")
    source_text = str(source)
    path = BUILTIN_PATH if source_text == BUILTIN else Path(source_text).expanduser()
    progress(Progress("load", 0, 3, f"Loading {path.name if source_text != BUILTIN else 'the built-in model'}"))
    if not path.exists():
        raise ModelLoadError(f"There is no model at {path}; check the path.", str(path))
    if path.is_dir():
        pipe, arch, notes = _load_folder(path, dtype, architecture, source_text == BUILTIN)
    else:
        pipe, arch, notes = _load_single_file(path, dtype, architecture, config, progress, cancel)
    cancel.raise_if_cancelled()
    progress(Progress("load", 2, 3, f"Moving the model to {device}"))
    pipe.set_progress_bar_config(disable=True)
    try:
        pipe.to(device)
    except Exception as exc:
        from engine.jobs import is_out_of_memory, out_of_memory_error

        if is_out_of_memory(exc):
            raise out_of_memory_error(exc, device) from exc
        raise
    own_weights(pipe)
    if arch == "sd2?":
        arch, note = _settle_sd2_prediction(pipe)
        notes.append(note)
    for note in notes:
        log.info("%s: %s", path.name, note)
    cancel.raise_if_cancelled()  # a cancel while the weights moved still wins: the caller gets no model
    progress(Progress("load", 3, 3, "Model loaded"))
    return LoadedModel(pipe=pipe, source=source_text, architecture=arch, device=device, dtype=dtype, notes=notes)


def own_weights(pipe: Any) -> None:
    """Copy every unaligned CPU weight into memory of its own.

    Weights loaded from a file (a folder's or a single file's) are views into its mapping at whatever byte offset
    the file puts them. On some CPUs (measured on AMD EPYC at one thread) unaligned weights take other SIMD paths
    and change images in the last bit (2e-6), so the same weights from a folder and from a single file did not give
    identical images. Fresh copies are aligned to the widest vector (64 bytes); weights already aligned (converted
    to another precision on load, say) are left as they are. The cost, measured on an SD 1.5-sized fp32 folder
    on this 2-core CPU: load 3.6-3.9 → 6.9-8.0 s, first 1-step image 20 → 23-26 s,
    peak memory 7.1 GB while the file's pages and the copies coexist (4.7-4.9 GB after, as without the copies once
    an image is made). GPU loads are unaffected: their weights are copied to the device anyway."""
    for module in (pipe.unet, pipe.vae, pipe.text_encoder):
        for tensor in (*module.parameters(), *module.buffers()):
            if tensor.device.type == "cpu" and tensor.data_ptr() % 64:
                tensor.data = tensor.data.clone()


def _quiet_libraries() -> None:
    """Progress goes through our Progress callback; the libraries' own tqdm bars would only clutter stderr."""
    import diffusers.utils.logging as diffusers_logging
    import transformers.utils.logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()


# ---------------------------------------------------------------- diffusers folders
def _load_folder(path: Path, dtype: Any, architecture: str | None, builtin: bool) -> tuple[Any, str, list[str]]:
    from diffusers import StableDiffusionPipeline

    index = path / "model_index.json"
    if not index.is_file():
        raise ModelLoadError(f"The folder {path.name} is not a diffusers model (it has no model_index.json).",
                             str(path))
    try:
        class_name = json.loads(index.read_text(encoding="utf-8")).get("_class_name", "")
    except (ValueError, OSError, AttributeError) as exc:
        raise ModelLoadError(f"The model_index.json in {path.name} is damaged.", repr(exc)) from exc
    if "XL" in class_name:
        raise ModelLoadError("This is an SDXL model; SDXL is not supported yet.", class_name)
    if class_name not in ("StableDiffusionPipeline", "StableDiffusionPipelineSafe"):
        raise ModelLoadError(f"This is a {class_name or 'unknown'} model; only Stable Diffusion 1.x and 2.x text-to-"
                             "image models are supported.", class_name)
    try:
        pipe = StableDiffusionPipeline.from_pretrained(str(path), local_files_only=True, dtype=dtype,
                                                       safety_checker=None, feature_extractor=None,
                                                       requires_safety_checker=False)
    except Exception as exc:
        raise ModelLoadError(f"The model in {path.name} could not be loaded; it may be incomplete or damaged.",
                             repr(exc)) from exc
    if pipe.unet.config.in_channels != 4:
        raise ModelLoadError("This is an inpainting or image-editing model; only text-to-image models are "
                             "supported.", f"in_channels={pipe.unet.config.in_channels}")
    if builtin or (path / "world.json").is_file():
        return pipe, "shapesworld", []
    if architecture:
        return pipe, architecture, [f"Architecture {architecture} as requested."]
    if int(pipe.unet.config.cross_attention_dim) == 1024:
        v = pipe.scheduler.config.get("prediction_type") == "v_prediction"
        return pipe, "sd2-v" if v else "sd2", []
    return pipe, "sd1", []


# ---------------------------------------------------------------- single files: reading
def read_checkpoint(path: Path) -> dict[str, Any]:
    """Read a single-file checkpoint into ``{name: tensor}``, refusing anything that is not plain weights.

    .ckpt files are pickles; they are only ever opened with ``weights_only=True``, which refuses
    any object other than tensors and plain containers without executing it.
    """
    import torch

    size = path.stat().st_size
    if size == 0:
        raise ModelLoadError(f"{path.name} is empty (0 bytes); it is not a model.", str(path))
    suffix = path.suffix.lower()
    if suffix in SAFETENSORS_SUFFIXES:
        state = _read_safetensors(path)
    elif suffix in PICKLE_SUFFIXES:
        state = _read_pickle(path)
    else:
        raise ModelLoadError(f"{path.name} is not a model file; choose a .safetensors or .ckpt file or a diffusers "
                             "folder.", str(path))
    while isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ModelLoadError(f"{path.name} does not contain model weights.", type(state).__name__)
    tensors = {k: v for k, v in state.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not tensors:
        raise ModelLoadError(f"{path.name} does not contain any model weights.", str(path))
    return tensors


def _read_safetensors(path: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    try:
        header = read_header(path)
    except HeaderError as exc:
        message = {
            "format": f"{path.name} is not a model file (it is not in the safetensors format).",
            "truncated": f"{path.name} is incomplete (the file ends early); copy or download it again.",
            "damaged": f"{path.name} is damaged (its table of contents is invalid).",
        }[exc.problem]
        raise ModelLoadError(message, exc.detail or str(path)) from exc
    if MANIFEST_KEY in (header.get("__metadata__") or {}):
        raise ModelLoadError(f"{path.name} is an Erasure Studio edit, not a model; load the model it was made for "
                             "and apply the edit to it (--edit, or File > Import edit in the studio).", str(path))
    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:  # safetensors raises several types for broken files
        raise ModelLoadError(f"{path.name} is damaged and cannot be read.", repr(exc)) from exc


def _read_pickle(path: Path) -> Any:
    import torch

    is_zip = zipfile.is_zipfile(path)
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True, mmap=is_zip)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if "Weights only load failed" in text or "Unsupported global" in text or "GLOBAL" in text:
            raise ModelLoadError(f"{path.name} contains Python objects besides weights, so it was not opened (they "
                                 "could run code); use a .safetensors version of this model.", text[:500]) from exc
        raise ModelLoadError(f"{path.name} is not a model file.", text[:500]) from exc
    except Exception as exc:
        with open(path, "rb") as f:
            magic = f.read(4)
        if magic.startswith(b"PK") or is_zip:
            raise ModelLoadError(f"{path.name} is incomplete or damaged; copy or download it again.",
                                 repr(exc)[:500]) from exc
        raise ModelLoadError(f"{path.name} is not a model file.", repr(exc)[:500]) from exc


# ---------------------------------------------------------------- single files: what is it?
def _cross_attention_width(state: dict[str, Any]) -> int | None:
    for key, tensor in state.items():
        if key.startswith(UNET) and key.endswith("attn2.to_k.weight"):
            return int(tensor.shape[-1])
    return None


def identify_checkpoint(state: dict[str, Any]) -> str:
    """'sd1', 'sd2' (either 2.x variant), 'shapesworld' or 'unknown'; raises for families that are not supported."""
    keys = state.keys()

    def has(prefix: str) -> bool:
        return any(k.startswith(prefix) for k in keys)

    if has("conditioner.embedders."):
        refiner = not has("conditioner.embedders.1.")
        raise ModelLoadError("This is an SDXL " + ("refiner " if refiner else "") + "checkpoint; SDXL is not "
                             "supported yet.", "conditioner.embedders.* keys")
    if has("text_encoders.") or has(UNET + "joint_blocks."):
        raise ModelLoadError("This is a Stable Diffusion 3 checkpoint; SD3 is not supported yet.")
    if has("double_blocks.") or has(UNET + "double_blocks.") or has(UNET + "double_stream_modulation"):
        raise ModelLoadError("This is a FLUX checkpoint; FLUX is not supported yet.")
    if has("lora_unet_") or has("lora_te") or any(".lora_" in k or "lora_A" in k for k in keys):
        raise ModelLoadError("This is a LoRA, not a full model; load the model it was trained for instead.")
    if "emb_params" in state or "string_to_param.*" in state or "string_to_token" in state:
        raise ModelLoadError("This is a textual-inversion embedding, not a full model.")
    if not has(UNET):
        if has("encoder.down.") or has("decoder.up.") or has("encoder.down_blocks."):
            raise ModelLoadError("This file holds only a VAE, not a full Stable Diffusion model.")
        some = ", ".join(sorted(keys)[:3])
        raise ModelLoadError("This file is not a Stable Diffusion checkpoint (its weights have unknown names).",
                             some)
    conv_in = state.get(UNET + "input_blocks.0.0.weight")
    if conv_in is not None and conv_in.ndim == 4 and conv_in.shape[1] != 4:
        kind = {9: "an inpainting", 8: "an InstructPix2Pix"}.get(int(conv_in.shape[1]), "an image-conditioned")
        raise ModelLoadError(f"This is {kind} checkpoint; only text-to-image models are supported.",
                             f"input channels {conv_in.shape[1]}")
    if not has("first_stage_model."):
        raise ModelLoadError("This checkpoint has no VAE weights (it holds only part of a model).")
    if not has("cond_stage_model."):
        raise ModelLoadError("This checkpoint has no text-encoder weights (it holds only part of a model).")
    width = _cross_attention_width(state)
    open_clip = has("cond_stage_model.model.")
    if width == 1024 and open_clip:
        return "sd2"
    if width == 768 and has("cond_stage_model.transformer."):
        return "sd1"
    if width == 128 and conv_in is not None and tuple(conv_in.shape) == (48, 4, 3, 3):
        return "shapesworld"
    return "unknown"


def _v_prediction_hint(path: Path, state: dict[str, Any]) -> tuple[bool | None, str]:
    """Whether an SD 2.x file is 768 v-prediction, from what the file and its neighbours say, if anything."""
    if "v_pred" in state:
        return True, "The file marks itself as v-prediction (v_pred key)."
    yaml = path.with_suffix(".yaml")
    if yaml.is_file():
        try:
            text = yaml.read_text(encoding="utf-8", errors="replace")
        except OSError:
            text = ""
        v = any(line.split("#")[0].strip().replace('"', "").replace("'", "") == "parameterization: v"
                for line in text.splitlines())
        return v, f"{yaml.name} says {'v' if v else 'epsilon'}-prediction."
    name = path.name.lower().replace("_", "-")
    if any(tag in name for tag in ("768-v", "768v", "v-pred", "vpred", "v-param")):
        return True, "The file name says 768 v-prediction."
    if "base" in name or "512" in name:
        return False, "The file name says 2.x base (512, epsilon)."
    if "768" in name:  # every published 768 px SD 2.x release (2.0-v, 2.1) is v-prediction
        return True, "The file name says 768 px, which for SD 2.x means v-prediction."
    return None, ""


def _settle_sd2_prediction(pipe: Any) -> tuple[str, str]:
    """Tell SD 2.x base (epsilon) from 768-v by one UNet evaluation, as AUTOMATIC1111 does.

    At t=999 the input is almost pure noise, so an epsilon model predicts roughly the input itself,
    while a v model predicts about minus the clean image: (output - input) is then far below zero.
    """
    import torch

    unet = pipe.unet
    try:
        with torch.no_grad():
            x = torch.full((1, 4, 8, 8), 0.5, device=unet.device, dtype=unet.dtype)
            cond = torch.full((1, 2, int(unet.config.cross_attention_dim)), 0.5, device=unet.device, dtype=unet.dtype)
            t = torch.tensor([999], device=unet.device)
            out = unet(x, t, encoder_hidden_states=cond).sample
            v = float((out.float() - x.float()).mean()) < -1.0
    except Exception as exc:  # a test evaluation must not stop the load; fall back to the common 2.x release
        log.warning("v-prediction test failed", exc_info=exc)
        v = True
        note = "Could not test the prediction type; assuming SD 2.x 768 v-prediction (override with sd2 if wrong)."
    else:
        note = ("A test evaluation shows " + ("768 v-prediction" if v else "2.x base (epsilon)")
                + "; override the architecture if this is wrong.")
    if v:
        _use_sd2_v(pipe)
    return ("sd2-v" if v else "sd2"), note


def _use_sd2_v(pipe: Any) -> None:
    """Switch a pipeline built from the sd2 skeleton to the sd2-v one (they differ only in these configs)."""
    from diffusers import DDIMScheduler

    pipe.scheduler = DDIMScheduler.from_pretrained(str(SKELETONS / "sd2-v"), subfolder="scheduler",
                                                   local_files_only=True)
    pipe.unet.register_to_config(sample_size=96)
    pipe.vae.register_to_config(sample_size=768)


# ---------------------------------------------------------------- single files: building the pipeline
def _load_single_file(path: Path, dtype: Any, architecture: str | None, config: str | Path | None,
                      progress: ProgressCallback, cancel: CancelToken) -> tuple[Any, str, list[str]]:
    progress(Progress("load", 0, 3, f"Reading {path.name}"))
    state = read_checkpoint(path)
    cancel.raise_if_cancelled()
    _restore_text_model_prefix(state)
    found = identify_checkpoint(state)
    notes: list[str] = []
    if config is not None:
        config_dir = Path(config).expanduser()
        if not (config_dir / "model_index.json").is_file():
            raise ModelLoadError(f"The config folder {config_dir.name} is not a diffusers model folder.",
                                 str(config_dir))
        arch = architecture or ("sd2" if found == "sd2" else "shapesworld" if found == "shapesworld" else "sd1")
        if found == "sd2" and not architecture:
            v = json.loads((config_dir / "scheduler" / "scheduler_config.json").read_text(encoding="utf-8")).get(
                "prediction_type") == "v_prediction"
            arch = "sd2-v" if v else "sd2"
        notes.append(f"Configs from {config_dir.name}.")
        tokenizer_dir, tokenizer_kwargs = config_dir, {"subfolder": "tokenizer"}
    else:
        if found == "unknown" and not architecture:
            width = _cross_attention_width(state)
            raise ModelLoadError("This checkpoint has an unusual size that matches no Stable Diffusion 1.x or 2.x "
                                 "model; give a diffusers folder with its configs.", f"cross-attention width {width}")
        if found == "shapesworld" and not architecture:
            arch, config_dir = "shapesworld", BUILTIN_PATH
            tokenizer_dir, tokenizer_kwargs = BUILTIN_PATH, {"subfolder": "tokenizer"}
        else:
            if architecture:
                arch = architecture
                notes.append(f"Architecture {ARCHITECTURE_NAMES[arch]} as requested.")
            elif found == "sd2":
                v, why = _v_prediction_hint(path, state)
                arch = "sd2?" if v is None else ("sd2-v" if v else "sd2")
                if why:
                    notes.append(why)
            else:
                arch = "sd1"
            config_dir = SKELETONS / ("sd2" if arch == "sd2?" else arch)
            tokenizer_dir, tokenizer_kwargs = CLIP_TOKENIZER, _skeleton_tokenizer_kwargs(config_dir)
    progress(Progress("load", 1, 3, f"Building the {ARCHITECTURE_NAMES.get(arch.rstrip('?'), arch)} pipeline"))
    pipe = _build_pipeline(path, state, config_dir, tokenizer_dir, tokenizer_kwargs, dtype)
    return pipe, arch, notes


def _restore_text_model_prefix(state: dict[str, Any]) -> None:
    """Files written by converters under transformers >= 5.6 lack ``text_model.`` in CLIP keys; put it back."""
    prefix = "cond_stage_model.transformer."
    broken = [k for k in state if k.startswith(prefix) and not k.startswith(prefix + "text_model.")]
    for key in broken:
        state[prefix + "text_model." + key[len(prefix):]] = state.pop(key)


def _skeleton_tokenizer_kwargs(config_dir: Path) -> dict[str, Any]:
    """The skeletons share one CLIP vocabulary; each keeps only its tokenizer settings (SD 2 pads with "!")."""
    settings = json.loads((config_dir / "tokenizer" / "tokenizer_config.json").read_text(encoding="utf-8"))
    return {"model_max_length": settings["model_max_length"], "pad_token": settings["pad_token"]}


def _build_pipeline(path: Path, state: dict[str, Any], config_dir: Path, tokenizer_dir: Path,
                    tokenizer_kwargs: dict[str, Any], dtype: Any) -> Any:
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import create_diffusers_clip_model_from_ldm
    from transformers import CLIPTextModel, CLIPTokenizer

    config = str(config_dir)
    try:
        unet = UNet2DConditionModel.from_single_file(state, config=config, subfolder="unet", local_files_only=True,
                                                     dtype=dtype)
        vae = AutoencoderKL.from_single_file(state, config=config, subfolder="vae", local_files_only=True,
                                             dtype=dtype)
        text_encoder = create_diffusers_clip_model_from_ldm(CLIPTextModel, state, subfolder="text_encoder",
                                                            config=config, torch_dtype=dtype, local_files_only=True)
        tokenizer = CLIPTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True, **tokenizer_kwargs)
        scheduler = DDIMScheduler.from_pretrained(config, subfolder="scheduler", local_files_only=True)
    except ModelLoadError:
        raise
    except Exception as exc:
        text = repr(exc)
        if "shape" in text.lower() or "size mismatch" in text.lower():
            raise ModelLoadError(f"The weights in {path.name} do not fit the chosen architecture; check the "
                                 "architecture setting.", text[:800]) from exc
        raise ModelLoadError(f"{path.name} could not be turned into a model; it may be incomplete or damaged.",
                             text[:800]) from exc
    for name, module in (("UNet", unet), ("VAE", vae), ("text encoder", text_encoder)):
        missing = [n for n, p in module.named_parameters() if p.device.type == "meta"]
        if missing:
            raise ModelLoadError(f"{path.name} is incomplete: {len(missing)} {name} weights are missing.",
                                 ", ".join(missing[:5]))
    return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
