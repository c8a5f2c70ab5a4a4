"""Seeded, cancellable image generation that honours the model's edit stack.

Noise comes from CPU generators, one per seed, so the same request gives the same
images run after run and across devices. Weight edits are already in the weights
(the ``EditStack`` wrote them); inference-time entries (SLD) are applied here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from engine.jobs import Cancelled, CancelToken, InputError, ProgressCallback, ProgressReporter, no_progress

SCHEDULERS = ("ddim", "dpm++")
MAX_SEED = 2**32 - 1
MAX_GUIDANCE = 100.0  # far above any useful value (SD uses 5-12); beyond it images are only noise


@dataclass
class GenerationRequest:
    prompt: str
    seeds: list[int] = field(default_factory=lambda: [0])
    negative_prompt: str = ""
    steps: int = 25
    guidance: float = 5.0
    width: int | None = None  # None: the model's native size
    height: int | None = None
    scheduler: str = "ddim"
    preview_every: int = 0  # send an intermediate image every N steps (0: never)

    def validate(self) -> None:
        if not self.seeds:
            raise InputError("Give at least one seed.")
        for s in self.seeds:
            if isinstance(s, bool) or not isinstance(s, int) or not 0 <= s <= MAX_SEED:
                raise InputError(f"Seeds must be whole numbers from 0 to {MAX_SEED}.", repr(s))
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or not 1 <= self.steps <= 1000:
            raise InputError("Steps must be a whole number between 1 and 1000.", repr(self.steps))
        if isinstance(self.guidance, bool) or not isinstance(self.guidance, (int, float)) \
                or not math.isfinite(self.guidance) or not 0 <= self.guidance <= MAX_GUIDANCE:
            raise InputError(f"Guidance must be a number between 0 and {MAX_GUIDANCE:g}.", repr(self.guidance))
        if self.scheduler not in SCHEDULERS:
            raise InputError(f"Unknown scheduler {self.scheduler!r}; choose one of {', '.join(SCHEDULERS)}.")
        for size in (self.width, self.height):
            if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 8 or size % 8):
                raise InputError("Width and height must be multiples of 8.", repr(size))


def make_scheduler(pipe: Any, name: str) -> Any:
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    if name == "ddim":
        return DDIMScheduler.from_config(pipe.scheduler.config)
    return DPMSolverMultistepScheduler.from_config(pipe.scheduler.config, algorithm_type="dpmsolver++")


def initial_latents(pipe: Any, seeds: list[int], height: int, width: int) -> Any:
    import torch

    factor = pipe.vae_scale_factor
    shape = (pipe.unet.config.in_channels, height // factor, width // factor)
    noise = [torch.randn(shape, generator=torch.Generator("cpu").manual_seed(s), dtype=torch.float32) for s in seeds]
    return torch.stack(noise)


def generate(model: Any, request: GenerationRequest, progress: ProgressCallback = no_progress,
             cancel: CancelToken | None = None) -> list[Any]:
    """Generate one PIL image per seed. ``model`` is an ``engine.model.LoadedModel``."""
    import torch

    request.validate()
    cancel = cancel or CancelToken()
    pipe = model.pipe
    default = pipe.unet.config.sample_size * pipe.vae_scale_factor
    height, width = request.height or default, request.width or default
    # Device and dtype from one weight: pipe.device and unet.dtype walk every module (about 15 ms per call on
    # an SD 1.5-sized model, a few percent of a GPU image; see docs/benchmarks.md).
    weight = pipe.unet.conv_in.weight
    latents = initial_latents(pipe, request.seeds, height, width).to(weight.device, weight.dtype)
    reporter = ProgressReporter(progress, "generate", request.steps, cancel)
    reporter.start(f"Generating {len(request.seeds)} image(s)")
    pipe.scheduler = make_scheduler(pipe, request.scheduler)
    sld = model.stack.inference_entries() if model.stack is not None else []
    predicted = _record_predicted_x0(pipe.scheduler) if request.preview_every else {}

    def on_step(p: Any, index: int, timestep: Any, kwargs: dict) -> dict:
        if cancel.cancelled:
            # Raising here leaves the pipeline at once; interrupting would still decode the latents first.
            raise Cancelled("Generation was cancelled.")
        preview = None
        if request.preview_every and (index + 1) % request.preview_every == 0 and index + 1 < request.steps:
            # The scheduler's x0 estimate reads like a blurry final image; x_t itself is mostly noise.
            x0 = predicted.get("x0", kwargs["latents"])
            if x0.shape[-1] * x0.shape[-2] <= 32 * 32:  # decoding small latents costs milliseconds: show the truth
                preview = p.image_processor.postprocess(p.vae.decode(x0 / p.vae.config.scaling_factor).sample,
                                                        output_type="pil")
            else:
                preview = latent_preview(x0)
        reporter.step(f"step {index + 1}/{request.steps}", preview)
        return kwargs

    negative = [request.negative_prompt] * len(request.seeds) if request.negative_prompt else None
    common = {"prompt": [request.prompt] * len(request.seeds), "negative_prompt": negative,
              "num_inference_steps": request.steps, "guidance_scale": request.guidance, "height": height,
              "width": width, "latents": latents, "output_type": "pil"}
    with torch.inference_mode():
        if sld:
            from engine.sld import generate_with_sld

            images = generate_with_sld(pipe, sld, common, on_step)
        else:
            images = pipe(**common, callback_on_step_end=on_step,
                          callback_on_step_end_tensor_inputs=["latents"]).images
    if cancel.cancelled:
        raise Cancelled("Generation was cancelled.")
    return images


def _record_predicted_x0(scheduler: Any) -> dict:
    """Wrap ``scheduler.step`` so each step's predicted clean latents (DDIM returns them) are kept for previews."""
    record: dict = {}
    original_step = scheduler.step

    def step(*args: Any, **kwargs: Any) -> Any:
        out = original_step(*args, **kwargs)
        x0 = out[1] if isinstance(out, tuple) and len(out) > 1 else getattr(out, "pred_original_sample", None)
        if x0 is not None:
            record["x0"] = x0
        return out

    scheduler.step = step
    return record


SD_LATENT_RGB = ((0.3512, 0.2297, 0.3227), (0.3250, 0.4974, 0.2350), (-0.2829, 0.1762, 0.2721),
                 (-0.2120, -0.2616, -0.7177))  # ComfyUI's SD 1.5 factors


def latent_preview(latents: Any, factors: Any = SD_LATENT_RGB, bias: Any = (0.0, 0.0, 0.0)) -> list[Any]:
    """Cheap RGB previews straight from the latents (one PIL image per sample, at latent resolution)."""
    import numpy as np
    import torch
    from PIL import Image

    weights = torch.tensor(factors, dtype=torch.float32)
    rgb = torch.einsum("bchw,cr->bhwr", latents.detach().float().cpu(), weights)
    rgb = (rgb + torch.tensor(bias, dtype=torch.float32)).clamp(-1, 1)
    arrays = ((rgb + 1) * 127.5).round().to(torch.uint8).numpy()
    return [Image.fromarray(np.ascontiguousarray(a)) for a in arrays]
