"""Shared fixtures: the built-in model, an SD1-shaped tiny pipeline, Qt offscreen, the gpu marker.

Qt must be told to render offscreen before anything imports it, so that is set at the top
of this file, which pytest imports before any test module.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
# Settings, sessions and logs written by tests go to a throw-away folder, never the user's.
_STUDIO_HOME = tempfile.mkdtemp(prefix="erasure-studio-tests-")
os.environ["ERASURE_STUDIO_HOME"] = _STUDIO_HOME

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import pytest

import engine  # noqa: F401  (offline switches before diffusers is imported anywhere)

CLIP_TOKENIZER = ROOT / "assets" / "skeletons" / "clip-tokenizer"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    shutil.rmtree(_STUDIO_HOME, ignore_errors=True)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip ``@pytest.mark.gpu`` tests on machines without CUDA."""
    if not any(item.get_closest_marker("gpu") for item in items):
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if item.get_closest_marker("gpu"):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def builtin_model():
    """The built-in ShapesWorld model on CPU in fp32, loaded once per test session.

    Tests that change it must restore it (``model.stack.clear()``) so others see the original.
    """
    import torch

    from engine.model import load_model

    model = load_model("builtin", device="cpu", dtype=torch.float32)
    yield model
    if model.stack is not None and len(model.stack):
        model.stack.clear()


def weights_digest(model) -> str:
    """SHA-256 over every tensor (parameters and buffers) of a model's UNet, VAE and text encoder, bit for bit.

    ``model`` is a LoadedModel or a pipeline. Tests compare digests to prove a job left a model untouched.
    """
    import hashlib

    import torch

    pipe = getattr(model, "pipe", model)
    digest = hashlib.sha256()
    for component in ("unet", "vae", "text_encoder"):
        for name, tensor in getattr(pipe, component).state_dict().items():
            digest.update(f"{component}.{name}".encode())
            digest.update(tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def build_tiny_sd1_pipeline(seed: int = 0):
    """A random SD1-shaped pipeline small enough for CPU tests (about 1.5 M parameters).

    Same structure as SD 1.5: 4 UNet levels with two layers per block, cross-attention in the first
    three down levels (and the last three up levels), a 4-level VAE, a CLIP text encoder with the
    real CLIP vocabulary; only the widths are tiny (GroupNorm groups small to fit them).
    """
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16, 32, 32), layers_per_block=2, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16, attention_head_dim=2, norm_num_groups=4)
    vae = AutoencoderKL(block_out_channels=(8, 16, 32, 32), in_channels=3, out_channels=3, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        layers_per_block=2, norm_num_groups=4, sample_size=64)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=16, intermediate_size=32, num_attention_heads=2, num_hidden_layers=2,
        max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
        hidden_act="quick_gelu", projection_dim=16))
    tokenizer = CLIPTokenizer.from_pretrained(str(CLIP_TOKENIZER), model_max_length=77, pad_token="<|endoftext|>")
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="session")
def tiny_sd1_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny SD1-shaped pipeline saved as a diffusers folder (built once per session)."""
    folder = tmp_path_factory.mktemp("tiny-sd1") / "pipeline"
    build_tiny_sd1_pipeline().save_pretrained(str(folder), safe_serialization=True)
    return folder


@pytest.fixture
def tiny_sd1_pipeline(tiny_sd1_dir: Path):
    """A fresh copy of the tiny SD1-shaped pipeline, loaded from its saved folder (CPU, fp32)."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(tiny_sd1_dir), local_files_only=True, safety_checker=None,
                                                   feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe
