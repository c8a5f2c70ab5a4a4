"""The adversarial-embedding probe: can the erased concept still be reached by *some* text embedding?

For the model as it is now (weights W′, with every applied edit) and its base weights W, the closed-form
embedding that best reproduces what the base model saw for a prompt is (RECE's derivation)

    c′ = argmin Σ_l ‖W′_l c − W_l c_prompt‖² + λ‖c‖² = (λI + Σ W′ᵀW′)^-1 (Σ W′ᵀW) c_prompt,

summed over every cross-attention key and value projection, per token of the 77-token embedding.
The probe generates with ``prompt_embeds = c′`` (seeded exactly like engine.generate) and judges the
images: the recovery rate is the share of images that show the concept again. An unedited model gives
c′ ≈ c, so the rate is then the plain accuracy; a robust erasure keeps it low.

Weight edits only: inference-time entries (SLD) are not applied to the probe's generations.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from engine import closed_form as cf
from engine.jobs import Cancelled, CancelToken, InputError, ProgressCallback, ProgressReporter, no_progress

KINDS = ("color", "shape", "style")
DEFAULT_REG = {"color": 0.1, "shape": 0.1, "style": 1e-3}  # RECE's object / art defaults


@dataclass
class ProbeResult:
    concept: str
    kind: str
    value: str  # what the judge must not see, e.g. "red", "star", "kusama"
    recovery_rate: float  # share of probe images that show the concept
    per_prompt: dict[str, float] = field(default_factory=dict)
    images: int = 0
    reg: float = 0.0


def probe_skip_reason(stack: Any) -> str | None:
    """Why the probe has nothing to measure, or None: it inverts weight edits, and SLD steers sampling instead
    (the probe's generations do not apply it)."""
    weights = [e for e in stack.entries if e.enabled and e.strength > 0 and not e.edit.is_inference_only]
    if stack.inference_entries() and not weights:
        return "the edits steer sampling (SLD) and change no weights, so there is nothing to probe"
    return None


def probe_map(model: Any, reg: float) -> torch.Tensor:
    """R (d×d, float64) with c′ = R c for the model's current weights against its base weights."""
    gram_cur, cross = None, None
    for proj in cf.cross_attention_projections(model.pipe, "kv"):
        current = proj.module.weight.detach().to(torch.float64)
        base = cf.base_weight(model, proj).to(torch.float64).to(current.device)
        a, b = current.T @ current, current.T @ base
        gram_cur = a if gram_cur is None else gram_cur + a
        cross = b if cross is None else cross + b
    eye = torch.eye(gram_cur.shape[0], dtype=torch.float64, device=gram_cur.device)
    return torch.linalg.solve(reg * eye + gram_cur, cross)


def adversarial_embeddings(model: Any, prompts: list[str], reg: float) -> torch.Tensor:
    """c′ for each prompt, shaped like the pipeline's prompt_embeds (n, L, d) in the model's dtype."""
    enc = cf.encode_prompts(model.pipe, prompts)
    r = probe_map(model, reg).to(torch.float32)
    adv = torch.einsum("ij,nlj->nli", r, enc.embeds.to(r.device))
    return adv.to(model.pipe.unet.dtype)


def judge_value(model: Any, concept: str, kind: str) -> str:
    """The judge's label of a concept: "crimson" → "red", "by Kusama" → "kusama"."""
    if kind not in KINDS:
        raise InputError(f"The probe kind must be one of {', '.join(KINDS)}.", kind)
    info = cf.concept_info(model, concept)
    if info is None or info.group != kind:
        raise InputError(f"The probe can judge only {kind}s of the built-in world; {concept!r} is not one.")
    return info.member


def probe_recovery(model: Any, concept: str, kind: str, seeds: list[int], prompts: list[str] | None = None,
                   steps: int = 25, guidance: float = 5.0, reg: float | None = None,
                   progress: ProgressCallback = no_progress, cancel: CancelToken | None = None) -> ProbeResult:
    """Generate from the closed-form adversarial embedding of each prompt (default: the concept in the model's
    caption templates) and report the share of images in which the judge still sees the concept.

    ``kind`` is "color", "shape" or "style"; ``reg`` defaults to RECE's value for the kind."""
    from engine.generate import initial_latents, make_scheduler
    from engine.judge import judge_images

    cancel = cancel or CancelToken()
    if not seeds:
        raise InputError("Give at least one seed.")
    value = judge_value(model, concept, kind)
    prompts = list(prompts) if prompts else cf.concept_prompts(model, concept)
    reg = DEFAULT_REG[kind] if reg is None else float(reg)
    pipe = model.pipe
    with torch.no_grad():
        adv = adversarial_embeddings(model, prompts, reg)
        negative = pipe.encode_prompt([""], pipe.device, 1, False)[0].to(pipe.unet.dtype)
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    latents = initial_latents(pipe, seeds, size, size).to(pipe.device, pipe.unet.dtype)
    reporter = ProgressReporter(progress, "probe", steps * len(prompts), cancel)
    reporter.start(f"Probing {concept!r} with {len(prompts)} adversarial embeddings")

    def on_step(p: Any, index: int, timestep: Any, kwargs: dict) -> dict:
        if cancel.cancelled:
            raise Cancelled("The probe was cancelled.")
        reporter.step(f"step {index + 1}/{steps}")
        return kwargs

    per_prompt: dict[str, float] = {}
    shown = total = 0
    for i, prompt in enumerate(prompts):
        n = len(seeds)
        pipe.scheduler = make_scheduler(pipe, "ddim")
        with torch.inference_mode():
            images = pipe(prompt_embeds=adv[i:i + 1].expand(n, -1, -1).clone(),
                          negative_prompt_embeds=negative.expand(n, -1, -1).clone(),
                          num_inference_steps=steps, guidance_scale=guidance, height=size, width=size,
                          latents=latents.clone(), output_type="pil", callback_on_step_end=on_step).images
        hits = sum(v.shows(kind, value) for v in judge_images(images))
        per_prompt[prompt] = hits / n
        shown += hits
        total += n
    return ProbeResult(concept, kind, value, shown / total, per_prompt, total, reg)
