"""SPEED — Scalable, Precise, Efficient concept Erasure (Li et al., ICLR'26), null-space-constrained closed form.

UCE's preservation error grows with the number of erased concepts because its preserve terms are soft.
SPEED confines the update to the approximate null space of the retained concepts, so they are left
(nearly) untouched by construction, and averages the target statistics so one solve serves any number
of concepts. Per edited projection W (``attn2.to_v`` by default):

* target statistics S_tt = mean c_t c_tᵀ and S_at = mean t c_tᵀ over the targets' tokens (v* = W t);
* **IPF** (influence-based prior filtering): keep the retain embeddings whose response ‖Δ_prov c‖ under the
  provisional edit Δ_prov = W (S_at − S_tt)(I + S_tt)^-1 exceeds the mean response;
* **DPA** (directed prior augmentation): ``aug_num`` perturbations of each kept embedding, the noise projected
  onto W's smallest right-singular directions (so W c barely moves: the same meaning for this layer), keeping
  the high-influence ones;
* S_rr = mean c cᵀ over the refined retain set; P projects onto its eigenvectors with eigenvalue below the
  threshold (the approximate null space);
* **IEC** (invariant equality constraints): K₂ = [the BOS embedding, 3 k-means centres of the empty prompt's
  tokens] stays exactly invariant (λ = 0);
* with M = (P S_tt P + α I)^-1 P:  Δ = W (S_at − S_tt) P [I − M K₂ (K₂ᵀ P M K₂ + λ I)^-1 K₂ᵀ P] M
  (derived in ``speed_factor`` for W acting on column vectors; the right-most P is what makes the
  retained subspace untouchable).

Defaults are the reference's where they carry over: values only, aug_num 10, threshold 0.1, λ 0,
and α = 0.05 (the reference's multi-concept value; its few-concept α = 1 left the
built-in model's edit too small to erase anything, see below). Deliberate deviations:

* the eigenvalue threshold is relative to S_rr's mean eigenvalue (tr S_rr / d), which equals the
  reference's absolute 0.1 for SD1.x's CLIP (mean eigenvalue ≈ 1; also ≈ 1 for the built-in model) and
  keeps its meaning for text encoders of another scale;
* target tokens ``subject-to-end`` (UCE's 2023 choice) instead of the last subject token: the text encoder
  is causal, so "circle", EOS and padding after "red" carry red too, and editing only the "red" token left
  red in 20 % of red prompts and "by Riley" in 69 % (red + blue + by Riley, 8 seeds); with subject-to-end
  (and the retained prompts read at all positions to match) 5 % and 0 % at the same specificity (0.78).
  With the retained concepts in plain captions only, the null space of the retained set was thin in this
  128-d text space and SPEED traded specificity for erasure along its threshold: 0.5 / 0.1 / 0.02 / 0.005
  gave specificity 0.76 / 0.78 / 0.86 / 1.00 with red left in 2 / 5 / 15 / 70 % (4 seeds, 15 steps);
* ``retain_in_context`` (on): where the model's caption templates are known (the built-in model), retained
  concepts are also retained inside them ("a green circle", "a green star by Kusama"), so the null space
  excludes the directions of the siblings *in context*; with bare words only, the edit changed "a green
  circle" as much as "a red circle". Adding the styled captions (a quarter of the model's training captions
  name a style) took red + blue + by Riley from specificity 0.88 to 0.98 with red left in 8.5 % → 4.8 %
  (16 seeds, threshold 0.1, 24 unrelated prompts; over all 48 unrelated prompts, 8 seeds: 0.90, UCE 0.97,
  because red and blue land on orange and orange's own prompts lose their color). Real models retain the
  bare concepts, as the reference does;
* the siblings' every caption form, which UCE preserves since it lifted orange's color after red's erasure
  from 0.52 to 0.75, are not retained here, and the push stays at η = 0.75 (UCE's is 1): with them
  (and η 1) red + blue + by Riley left red in 14 % with specificity 0.89, at threshold 0.3 red 1 % but
  orange lost its color entirely (specificity 0.73), against 5 % and 0.90 without them (8 seeds, all 48 unrelated prompts);
  more retained rows leave the null space too thin for the edit;
* UCE's ``style_phrasings`` (a color also erased in the styled captions with each style's every phrasing) is
  off, also for one concept: with it red + blue + by Riley (4 seeds, all 48 unrelated prompts) left red in
  2 → 7 % and red's synonyms in 0 → 19 % at specificity 0.89 → 0.92;
* tried and not kept: ESD-x's preserve projection applied to SPEED's value change (keep it on the targets'
  tokens, take it off their siblings' captions; ``engine.esd.projection_factor``). Red + blue + by Riley, 4 seeds,
  all 48 unrelated prompts: specificity 0.87 → 1.01 / 0.99 / 0.95 at preserve weight 0.1 / 0.03 / 0.01, but red
  came back in 14 / 11 / 10 % (1 % without it); blue and by Riley stayed at 0 %;
* ``soft_preserve`` (off by default, the reference): UCE's soft preserve term added to the solve inside the null
  space. In this 128-d text space the retained set spans almost everything, so the null space alone leaves the
  retained prompts changing nearly as much as the others ("a orange circle", retained: its value tokens move
  6.7 % against 9.8 % for orange prompts overall and 13.5 % for red's); with the soft term 4.2 % (UCE 3.8 %).
  Red + blue + by Riley, 4 seeds, all 48 unrelated prompts, soft_preserve 1, α 0.002, η 1: red 6.0 %, blue and
  by Riley 0 %, synonyms 0 %, specificity 0.949 (threshold 0.3: red 5.0 %, 0.937); with α 0.05: red 37 %,
  specificity 0.956. Orange's color still fell (0.82 → 0.49; UCE on the same suite: red 1.0 %, specificity 0.975,
  orange 0.69), so it stays below UCE and is not the default. Tried on 2026-12-02, tenth session (same suite, 4 seeds; UCE's
  default now: red / blue / by Riley 1.0 / 0 / 0 %, specificity 0.977, orange 0.69): with the retained concepts
  as bare words only (``retain_in_context`` off, the null space then 115 of 128 dimensions), soft_preserve 3 and
  α 0.002: red 7.0 %, blue and by Riley 0 %, specificity 0.968 (orange 0.60); the retain set as the siblings'
  bare words instead of the world's vocabulary: red 7.0 %, 0.925. With no retained concept at all (no null
  space, so not SPEED: UCE's soft term with SPEED's statistics) 0 / 0 / 0 % and 0.977 (soft 1: 0.961). Pushing
  further with the bare-word retain set (2026-12-07, soft 3, α 0.002): away 1.25 / 1.5 erased all three
  (0 / 0 / 0 %, synonyms 0 %) at specificity 0.919 / 0.912 (colors 0.948 / 0.942). So in this text space the
  null-space constraint itself is what costs the erasure or the specificity;
* the target is UCE's ``steer-away`` with sibling guides, for a style the prompt without it (see engine/uce.py;
  since that change, 16 seeds: red / blue / by Riley 4.0 / 0 / 0 → 3.0 / 0 / 0 %, 0.930 → 0.935;
  ``target=replace`` + ``default_guide=empty`` is the reference), and targets are expanded into a few prompts;
  as in UCE, a concept whose guide is one concrete sibling ("red → orange") is mapped exactly onto it, not past
  it.
  Measured with today's retain set (2026-12-07; red + blue + by Riley, 4 seeds, all 48 unrelated prompts;
  red / blue / by Riley left, red's synonyms left, specificity): the reference's ``replace`` onto the empty prompt
  62 / 14 / 0 %, 100 %, 0.942; steer-away from the empty prompt 9 / 0 / 0 %, 25 %, 0.883; the default (siblings,
  16 seeds) 0.2 / 0 / 0 %, 0.8 %, 0.915.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import torch

from engine import closed_form as cf
from engine import uce as uce_mod
from engine.edits import EditDelta
from engine.jobs import CancelToken, Progress, ProgressCallback, ProgressReporter
from engine.methods import EraseRequest, MethodSpec, ParamSpec

_SHARED = ("target", "away", "default_guide", "expand", "concept_type", "preserve_vocabulary", "vocabulary_sample")
PARAMS = (
    ParamSpec("edit", "choice", "values", "Which cross-attention projections change: values (the reference), keys, "
              "or both.", choices=("values", "keys", "keys-and-values")),
    ParamSpec("threshold", "float", 0.1,
              "Eigenvalues of the retain statistics below this share of their mean count as null space; smaller "
              "protects retained concepts more strictly.", minimum=0.0, maximum=10.0),
    ParamSpec("retain_scale", "float", 0.05, "α: regularises the update (larger = smaller, safer edit).",
              minimum=1e-6, maximum=100.0),
    ParamSpec("iec_lamb", "float", 0.0, "λ of the invariance constraints (0 keeps the empty prompt exactly "
              "unchanged).", minimum=0.0, maximum=100.0),
    ParamSpec("aug_num", "int", 10, "Perturbations added per influential retain embedding (DPA).",
              minimum=0, maximum=100),
    ParamSpec("retain_in_context", "bool", True,
              "Also retain each retained concept inside the model's caption templates (built-in model only)."),
    ParamSpec("soft_preserve", "float", 0.0,
              "Also hold the preserve set (every caption form of the targets' siblings on the built-in model) softly, "
              "as UCE does, at this multiple of UCE's weight; 0 is the reference (the null-space constraint only). "
              "Use it with a small α (retain_scale 0.002) and away 1.", minimum=0.0, maximum=100.0),
    ParamSpec("use_ipf", "bool", True, "Keep only the retain embeddings the edit would disturb most (IPF)."),
    ParamSpec("use_dpa", "bool", True, "Augment the retain set with meaning-preserving perturbations (DPA)."),
    ParamSpec("use_iec", "bool", True, "Keep the empty prompt's tokens exactly invariant (IEC)."),
    ParamSpec("tokens", "choice", "subject-to-end",
              "Which target tokens are edited: from the last subject word through the padding, or only the last "
              "subject word (the reference).",
              choices=("last-subject", "subject-to-end")),
    *(replace(p, default=0.75) if p.name == "away" else p for p in uce_mod.PARAMS if p.name in _SHARED),
)


def kmeans(rows: torch.Tensor, k: int, iters: int = 20) -> torch.Tensor:
    """Deterministic Lloyd's k-means (first/middle/last rows as the start)."""
    n = rows.shape[0]
    k = min(k, n)
    centres = rows[torch.linspace(0, n - 1, k).round().long()].clone()
    for _ in range(iters):
        assign = torch.cdist(rows, centres).argmin(dim=1)
        for j in range(k):
            members = rows[assign == j]
            if len(members):
                centres[j] = members.mean(dim=0)
    return centres


def invariant_keys(pipe: Any) -> torch.Tensor:
    """K₂ (d, 4): the BOS embedding and 3 k-means centres of the empty prompt's other tokens."""
    enc = cf.encode_prompts(pipe, [""])
    tokens = enc.embeds[0].to(torch.float64)
    return torch.cat([tokens[:1], kmeans(tokens[1:], 3)]).T


def small_right_directions(w: torch.Tensor) -> torch.Tensor:
    """Right-singular directions W barely responds to: its null space plus σ < 0.1 σ_max (at least one)."""
    _, s, vh = torch.linalg.svd(w, full_matrices=True)
    d = w.shape[1]
    sig = torch.zeros(d, dtype=w.dtype, device=w.device)
    sig[: s.numel()] = s
    keep = sig < 0.1 * sig.max()
    if not bool(keep.any()):
        keep[-1] = True
    return vh[keep].T  # (d, m)


def refine_retain(w: torch.Tensor, provisional: torch.Tensor, retain: torch.Tensor, params: dict[str, Any],
                  generator: torch.Generator) -> torch.Tensor:
    """IPF + DPA for one layer; returns the refined retain rows (n, d)."""
    delta = w @ provisional  # Δ_prov = W (S_at − S_tt)(I + S_tt)^-1
    response = (retain @ delta.T).norm(dim=1)
    mean_response = response.mean()
    kept = retain[response > mean_response] if params["use_ipf"] else retain
    if kept.shape[0] == 0:
        kept = retain
    rows = [kept]
    if params["use_dpa"] and params["aug_num"] > 0:
        basis = small_right_directions(w)
        d = w.shape[1]
        scale = kept.norm(dim=1, keepdim=True) / d ** 0.5
        for _ in range(params["aug_num"]):
            noise = torch.randn(kept.shape, generator=generator, dtype=kept.dtype).to(kept.device) * scale
            aug = kept + (noise @ basis) @ basis.T
            influential = (aug @ delta.T).norm(dim=1) > mean_response
            rows.append(aug[influential])
    return torch.cat(rows)


def null_projector(retain: torch.Tensor, threshold: float) -> torch.Tensor:
    s_rr = retain.T @ retain / max(1, retain.shape[0])
    evals, evecs = torch.linalg.eigh(s_rr)
    mean_eig = evals.clamp_min(0).sum() / evals.numel()
    small = evecs[:, evals < threshold * mean_eig]
    return small @ small.T


def speed_factor(s_tt: torch.Tensor, s_at: torch.Tensor, proj: torch.Tensor, k2: torch.Tensor | None,
                 alpha: float, lamb: float, s_pp: torch.Tensor | None = None) -> torch.Tensor:
    """F with Δ = W F, the null-space-constrained least-squares update (column-vector convention).

    Minimising mean_t ‖(W + Δ̃P) c_t − W t‖² + α‖Δ̃P‖² subject to Δ̃P K₂ = 0 gives, with
    M = (P S_tt P + α I)^-1 P (which commutes with P, so Δ c = 0 whenever P c = 0):

        Δ = W (S_at − S_tt) P [I − M K₂ (K₂ᵀ P M K₂ + λ I)^-1 K₂ᵀ P] M.

    This is the reference's formula with M written so that the right-most factor carries P: the update
    cannot touch the retained concepts' subspace, and λ = 0 keeps K₂ exactly invariant. ``s_pp`` (optional)
    adds UCE's soft preserve term mean ‖Δ̃P c_p‖²: it enters M only, since its target is no change."""
    d = s_tt.shape[0]
    eye = torch.eye(d, dtype=s_tt.dtype, device=s_tt.device)
    held = s_tt if s_pp is None else s_tt + s_pp
    m = torch.linalg.inv(proj @ held @ proj + alpha * eye) @ proj
    inner = eye
    if k2 is not None:
        mk = m @ k2
        gram = k2.T @ proj @ mk + lamb * torch.eye(k2.shape[1], dtype=s_tt.dtype, device=s_tt.device)
        inner = eye - mk @ torch.linalg.pinv(gram) @ k2.T @ proj
    return (s_at - s_tt) @ proj @ inner @ m


def run(model: Any, request: EraseRequest, progress: ProgressCallback, cancel: CancelToken) -> EditDelta:
    params = dict(request.params)
    started = time.perf_counter()
    which = {"values": "v", "keys": "k", "keys-and-values": "kv"}[params["edit"]]
    projections = cf.cross_attention_projections(model.pipe, which)
    progress(Progress("erase", 0, len(projections), "Encoding concepts"))
    # SPEED's one η serves styles and colors too; UCE's paraphrases are not measured with SPEED's null space
    uce_params = {p.name: p.default for p in uce_mod.PARAMS} | {k: params[k] for k in _SHARED} | {
        "tokens": params["tokens"], "style_away": params["away"], "color_away": params["away"], "paraphrases": False,
        "style_phrasings": "off"}
    plan = uce_mod.plan(model, request, uce_params)
    soft_preserve = plan.preserve  # UCE's preserve set (siblings in every caption form), for ``soft_preserve``
    # The retain set is the bare concepts (one last-subject token each), as in the reference: the null space
    # of a template-expanded set would leave the update almost no room in a narrow text encoder.
    plan.preserve = cf.build_preserve(model, plan.targets, list(request.preserve), params["preserve_vocabulary"],
                                      params["vocabulary_sample"])
    if params["retain_in_context"]:
        # without the siblings' every caption form, which UCE preserves: for SPEED they thin the null space
        plan.preserve = cf.expand_preserve(model, plan.preserve, plan.targets, params["concept_type"], siblings=False)
    pipe = model.pipe
    rows = cf.erase_rows(pipe, plan.erase_prompts, plan.erase_guides, params["tokens"])
    e = rows.erase.to(torch.float64)
    t = uce_mod.steer_targets(rows, uce_mod.prompt_etas(model, plan, uce_params)).to(torch.float64)
    s_tt = e.T @ e / e.shape[0]
    s_at = t.T @ e / e.shape[0]
    d = s_tt.shape[0]
    eye = torch.eye(d, dtype=torch.float64, device=s_tt.device)
    provisional = (s_at - s_tt) @ torch.linalg.inv(eye + s_tt)
    # Retained prompts are read at the same positions as the targets: with subject-to-end targets the edit
    # reaches the tokens after the subject too, so those of the retained prompts must span the protected space.
    retain_mode = "all" if params["tokens"] == "subject-to-end" else "last-subject"
    retain = cf.preserve_rows(pipe, plan.preserve, retain_mode).to(torch.float64) if plan.preserve else None
    s_pp = None
    if params["soft_preserve"] > 0 and soft_preserve:
        # UCE's preserve term, normalised like S_tt (UCE weighs summed preserve rows against summed erase rows)
        soft_rows = cf.preserve_rows(pipe, soft_preserve, "all").to(torch.float64)
        s_pp = params["soft_preserve"] * plan.preserve_scale * (soft_rows.T @ soft_rows) / e.shape[0]
    k2 = invariant_keys(pipe).to(s_tt.device) if params["use_iec"] else None
    generator = torch.Generator("cpu").manual_seed(int(request.seed))
    reporter = ProgressReporter(progress, "erase", len(projections), cancel)
    deltas: dict[str, torch.Tensor] = {}
    for p in projections:
        cancel.raise_if_cancelled()
        w = cf.base_weight(model, p).to(torch.float64)
        if retain is not None and retain.shape[0]:
            refined = refine_retain(w, provisional, retain, params, generator)
            proj = null_projector(refined, params["threshold"])
        else:
            proj = eye
        factor = speed_factor(s_tt, s_at, proj, k2, params["retain_scale"], params["iec_lamb"], s_pp)
        deltas[p.name] = (w @ factor).to(torch.float32).cpu()
        reporter.step(f"updated {p.name[5:]}")
    cf.check_finite(deltas)
    edit = EditDelta.create(model.pipe, deltas, "speed",
                            concepts={"targets": plan.targets, "guides": [";".join(g) for g in plan.guides],
                                      "preserve": plan.preserve},
                            params=params)
    edit.manifest["metrics"] = {"elapsed_s": round(time.perf_counter() - started, 3)}
    return edit


METHOD = MethodSpec(
    name="speed",
    title="SPEED (closed form, many concepts)",
    family="closed-form",
    description="Closed-form value edit confined to the null space of retained concepts, so erasing many concepts "
                "at once leaves the others intact. Erases hundreds of concepts in seconds.",
    params=PARAMS,
    run=run,
)
