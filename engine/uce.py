"""UCE — Unified Concept Editing (Gandikota et al., WACV'24), closed form on cross-attention K/V.

For every cross-attention projection W (``attn2.to_k`` and ``attn2.to_v``) solve

    W' = argmin Σ_e ‖W' c_e − v*_e‖² + Σ_p ‖W' c_p − W c_p‖² + λ ‖W' − W‖²

in one least-squares system for all concepts (engine.closed_form does the algebra: one d×d solve
serves every layer). Tokens follow the 2023 code: from the last subject token through EOS and
padding, aligned between each erase prompt and its guide prompt; preserve prompts use all tokens.

Deliberate deviations from the reference, each an option that can be switched back:

* **Target ``steer-away`` (default) instead of ``replace``.** The reference maps the concept to its
  guide, ``v* = W c_g``. With the empty guide that makes "a red circle" behave like "a circle", which
  still draws red whenever the model's prior does (1 time in 6 in ShapesWorld; for a real model,
  "Van Gogh" → "a painting" still looks like Van Gogh whenever that is the prior's favourite). The
  default instead uses ESD's negative-guidance idea in closed form: ``v* = W c_g − η (W c_e − W c_g)``,
  i.e. the guide pushed further away from the concept by η times the concept's own direction. η = 0
  is exactly the reference's ``replace``. Because steer-away moves the concept further, preserve prompts
  get weight 0.3 each (the reference rule, max(0.1, 1/|P|), is ``preserve_scale=0``): with the reference
  weight, η = 1 dragged red's nearest sibling along (some orange shapes changed color); with 0.3 it did not.
  When the guide is one concrete sibling (the user asked "red → orange", or every other color but orange
  is erased in the same job) the concept is mapped exactly onto it: pushing past orange lands on yellow
  (red, green, blue, yellow and purple at once drew red prompts yellow, an erased color; mapped exactly,
  all five drew orange, 4 seeds).
  The default η = 1 (ESD's) was chosen on the built-in model, 8 seeds, 25 steps, all unrelated prompts,
  with the siblings preserved in every caption form (``closed_form.sibling_captions``): red alone at
  η = 0.75 / 1 / 1.25 / 1.5 left red in 0 % of red prompts and orange (the sibling red spills onto) kept its
  color in 0.52 (η 0.75 before the sibling captions) / 0.75 / 0.73 / 0.70 of its prompts (unedited 0.85),
  with the shapes of red prompts kept 0.94 / 0.95 / 0.89 at η 1 / 1.25 / 1.5 (η 1.5: specificity 0.97 over
  all 80 unrelated prompts; red + blue + "by Riley" in one job 0.97, every concept at most 1.5 %).
  Styles are not pushed: a style's prompts get their own η, ``style_away`` = 0 (a target is a style when the
  built-in model lists it as one, or when a real model's request has ``concept_type=art``), and in a mixed job
  each target's prompts keep their own η. Sent to the sibling styles, "by Kusama" at η 1 / 0.75 had specificity
  0.93 (16 seeds) / 0.96 (8 seeds) over all 72 unrelated prompts; sent to the same prompt without the style
  (below), η 0 / 0.5 / 0.75 gave 0.972 / 0.959 / 0.957 (4 seeds) with Kusama gone from every image alike.
  The built-in model's colors get ``color_away`` = 1.5, which their paraphrases need (below).
* **A style's guide is the prompt without it** (``default_guide`` auto), as the reference guides art: "a red
  circle by Kusama" becomes a plain red circle. Sent to the sibling styles instead (Riley's stripes, Vasarely's
  checks, which the model draws with the right color and shape less often), Kusama's prompts kept their color
  and shape in 64 % of images; without a style in 98 % (16 seeds, all 72 unrelated prompts; specificity
  0.957 → 0.991, Kusama left in 1.8 → 0 %, its other phrasings 3.9 → 0 %).
* **Guide = the concept's siblings when known** (other concepts). On the built-in model, "red" is guided to the centroid
  of "green", "blue", ... (the same prompt about the other members of its group, from world.json),
  i.e. "some other color", which keeps the rest of the prompt (the shape) intact. A near twin is left out
  (``near_sibling_ratio``, ``distant_siblings``): orange embeds at 0.66 of the median sibling's distance from
  red, and with it the centroid sat so near red that at guidance 7.5 (the suite samples at 5) red came back
  in 14 of the 100 images of the suite's red prompts (4 seeds); without it in 0 (at guidance 5: 5 → 1). The
  rule also drops orange for yellow, yellow and red for orange, and square for circle. Real models have no
  such list: the guide is what the user gives (several guides separated by ';' give their centroid),
  else the empty prompt, as in the reference.
* **Prompt expansion.** Each concept is erased in a few prompts (the model's own caption templates on
  the built-in model; UCE's art prompts or neutral captions otherwise), as UCE's 2025 code does. A color
  is also erased in every caption template cut right after it ("by Riley, a red"), so the edit reaches the
  color's own token in each context, not only the words after it (``closed_form.caption_heads``).
* **Every style phrasing** (``style_phrasings``, auto: on when the job erases one concept;
  ``closed_form.styled_color_captions``): a color also erased
  in every styled caption template with each style's every phrasing ("a red star painted by Riley"), not only
  the first ("by Riley"). With only the first, red stays in "a red object painted by Riley" and "in the style of
  Kusama, a red star". For red alone it helps: red/crimson/scarlet in all 12 color templates
  (scripts/caption_spot_check.py, 4 seeds, 144 images) red left 9 → 1 (guidance 5, 25 steps) and 4 → 1
  (guidance 7.5, 50 steps), orange kept 87 → 85 and 88 → 89 of 96; RECE 11 → 1; over the suite (16 seeds, all
  80 unrelated prompts) red 0 → 0 %, synonyms 0.8 → 0 %, shapes of red prompts kept 95.0 → 93.4 %,
  specificity 100.6 → 99.3 %. But red + blue + by Riley in one job (16 seeds, all 48 unrelated prompts) left red
  in 1.5 → 6.8 % at specificity 97.3 → 94.1 %, failing both of the studio's targets, so by default it is on
  only in a job with one concept (RECE red with it: red 0 %, synonyms 0 %, specificity 99.5 → 98.3 %, 16 seeds).
  Erasing every caption form whole (ESD-x's ``caption_forms``, plain templates too) left red alone in 0 of 144
  but orange kept only 77 of 96.
* **Paraphrases** (``paraphrases``, on; colors of the built-in model only). The built-in model's captions always
  put a color after "a", "something" or a style, so without it the preserve set never holds "orange circle" or
  "a circle colored orange", and the edit spills there: UCE on red drew them yellow (or a yellowish orange the
  judge calls yellow). With it a color target is also erased, and its sibling colors preserved, in
  ``COLOR_PARAPHRASES`` ("red circle", "a circle colored red", with every shape); not a target mapped exactly onto
  one sibling (five colors onto orange: with orange's paraphrases preserved, orange kept 94.6 % of its color
  against 98.2 %, 16 seeds). Measured with
  ``scripts/phrasing_spot_check.py`` (4 seeds; six phrasings in neither set, such as "an orange circle", "a
  triangle painted orange", "a orange-colored square"; each kept color's unedited count 20-24 of 24): red alone left
  red in 1 / 24 either way, and the other colors kept their color in 111 → 115 of 120 (orange 15 → 20 of 24,
  unedited 20); red + blue + by Riley kept 72 → 82 of 96 (unedited 88).
  The option needs a larger push for colors, ``color_away`` = 1.5 (1 when the option is off): the sibling colors
  are now held in more phrasings, and at η 1 / 1.25 red alone was left in 9.4 % of the suite's red prompts
  (4 seeds, all 80 unrelated prompts) / 12 % of its red prompts with styled ones (4 seeds), at 1.5 in 0 %.
  16 seeds, all 80 unrelated prompts, η 1.5: red 1.6 %, synonyms 1.6 %, specificity 101.1 %, shapes of red
  prompts kept 94.2 % (without the option at η 1: 0.8 / 0.8 / 98.7 %, 93.4 %).
* **Prompts naming two targets** ("a red square by Riley" while erasing red and Riley) are erased with both
  swapped for their guides, every pair ("a green square by Vasarely", ...), so the guide re-asserts neither.
  Leaving them out instead (the earlier rule) let red come back in 15 % of red + Riley prompts once red was
  also held in its paraphrases (red + blue + by Riley, 4 seeds); with both swapped 1 %.

The edit is computed against the base weights, so it composes with other edits on the stack.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from engine import closed_form as cf
from engine.edits import EditDelta
from engine.jobs import CancelToken, InputError, Progress, ProgressCallback
from engine.methods import EraseRequest, MethodSpec, ParamSpec

PARAMS = (
    ParamSpec("edit", "choice", "keys-and-values",
              "Which cross-attention projections change: keys and values (the reference) or values only.",
              choices=("keys-and-values", "values")),
    ParamSpec("target", "choice", "steer-away",
              "replace maps the concept onto its guide (the paper); steer-away also pushes it away from the "
              "concept so the prior cannot bring it back.", choices=("steer-away", "replace")),
    ParamSpec("away", "float", 1.0,
              "How far steer-away pushes past the guide, in units of the concept's own direction (0 = replace).",
              minimum=0.0, maximum=4.0),
    ParamSpec("style_away", "float", 0.0,
              "The same push for styles (art). 0 maps a style's prompts exactly onto their guide, by default the "
              "same prompt without the style, as the paper does for art; raise it (0.5-1) if the model still "
              "draws the style unasked.", minimum=0.0, maximum=4.0),
    ParamSpec("color_away", "float", 1.5,
              "The same push for the built-in model's colors: with paraphrases on, each color is held in more "
              "phrasings of its sibling colors, and a push of 1 left red in 9 % of red prompts.",
              minimum=0.0, maximum=4.0),
    ParamSpec("default_guide", "choice", "auto",
              "The guide when you give none. Siblings: the concept's siblings (other colors, shapes, styles) where "
              "the model knows them, else the empty prompt. Empty: the same prompt without the concept. Auto: "
              "empty for a style (the picture is drawn without it, not in another artist's style), siblings "
              "otherwise.", choices=("auto", "siblings", "empty")),
    ParamSpec("near_sibling_ratio", "float", 0.75,
              "With sibling guides, leave out a near twin: a sibling whose prompts embed nearer the concept than "
              "this share of the median sibling's (orange for red). It drags the guide back toward the concept, "
              "and at guidance 7.5 red came back. 0 keeps every sibling.", minimum=0.0, maximum=1.0,
              minimum_means="every sibling"),
    ParamSpec("erase_scale", "float", 1.0, "Weight of the erase terms in the least-squares solve.",
              minimum=0.0, maximum=100.0),
    ParamSpec("preserve_scale", "float", 0.3,
              "Weight of each preserve prompt; 0 uses the reference rule max(0.1, 1/number of preserve prompts).",
              minimum=0.0, maximum=100.0, minimum_means="reference rule"),
    ParamSpec("lamb", "float", 0.5, "λ: how strongly every weight is held near its original value.",
              minimum=1e-4, maximum=100.0),
    ParamSpec("tokens", "choice", "subject-to-end",
              "Which tokens of a prompt are edited: from the last subject word through the padding (2023 code), "
              "only the last subject word (2025 code), or all.", choices=cf.TOKEN_MODES),
    ParamSpec("expand", "bool", True,
              "Also erase the concept inside a few caption templates, not only the bare word."),
    ParamSpec("concept_type", "choice", "object",
              "Object or art: picks the expansion templates for real models (art uses 'painting by X', ...).",
              choices=("object", "art")),
    ParamSpec("preserve_siblings", "bool", True,
              "Also preserve the concept's siblings (other colors, shapes, styles) in every caption form of the "
              "built-in model, where an erasure spills most."),
    ParamSpec("paraphrases", "bool", True,
              "Also erase a color, and preserve its sibling colors, in phrasings outside the built-in model's "
              "captions ('red circle', 'a circle colored red'); without it those phrasings of the siblings lose "
              "their color (use color_away 1 then)."),
    ParamSpec("style_phrasings", "choice", "auto",
              "Also erase a color in the styled captions with each style's every phrasing ('a red star painted by "
              "Riley'), not only the first ('by Riley'); built-in model only. Auto: on when the job erases one "
              "concept, where it helps; in a job with several concepts it let red back.",
              choices=("auto", "on", "off")),
    ParamSpec("preserve_vocabulary", "bool", True,
              "Also preserve a sample of the model's own vocabulary (world words, or the bundled common list)."),
    ParamSpec("vocabulary_sample", "int", 300,
              "How many vocabulary entries to preserve at most (0 = all of them).", minimum=0, maximum=100000,
              minimum_means="all"),
)


@dataclass
class UcePlan:
    """Everything a UCE solve needs, resolved from a request (shared with RECE and the probe)."""

    targets: list[str]
    guides: list[list[str]]  # per target: guide prompts whose centroid is the guide
    preserve: list[str]
    erase_prompts: list[str]
    erase_guides: list[list[str]]
    preserve_scale: float
    # per erase prompt: map it exactly onto its guide (the guide is one concrete sibling, e.g. "orange")
    replace_only: list[bool]
    prompt_target: list[int]  # per erase prompt: the index of its target


def plan(model: Any, request: EraseRequest, params: dict[str, Any]) -> UcePlan:
    """Resolve guides (explicit, siblings or empty), expansion and the preserve set."""
    targets = list(request.targets)
    explicit = cf.broadcast(list(request.guides), len(targets), "guide")
    guides: list[list[str]] = []
    for target, guide in zip(targets, explicit):
        parts = cf.split_guide(guide)
        if parts is None and uses_sibling_guide(model, target, params):
            parts = free_siblings(model, target, targets) or [""]
            parts = distant_siblings(model, target, parts, params["near_sibling_ratio"])
        elif parts is None:
            parts = [""]
        if any(p.lower() == target.lower() for p in parts):
            raise InputError(f"The guide for {target!r} is the concept itself; pick another guide.")
        guides.append(parts)
    erase_prompts: list[str] = []
    erase_guides: list[list[str]] = []
    replace_only: list[bool] = []
    prompt_target: list[int] = []
    paraphrased: list[str] = []  # targets erased in their paraphrases; their siblings are preserved in theirs
    for index, (target, parts) in enumerate(zip(targets, guides)):
        single_sibling = len(parts) == 1 and is_sibling(model, parts[0], target)
        # A concept mapped exactly onto one sibling is mapped in the plain captions only: mapped in the styled
        # ones too, five colors sent onto orange tied orange's styled prompts to theirs (orange's color right in
        # 76 % of its prompts against 84 % plain-only and 85 % unedited, 8 seeds; styled red/blue prompts
        # were erased either way).
        if not params["expand"]:
            prompts = [target]
        elif single_sibling:
            prompts = cf.concept_prompts(model, target, params["concept_type"], styled=False)
        else:
            prompts = cf.concept_prompts(model, target, params["concept_type"]) + cf.caption_heads(model, target)
            if params["style_phrasings"] == "on" or (params["style_phrasings"] == "auto" and len(targets) == 1):
                prompts += cf.styled_color_captions(model, target)
            if params["paraphrases"]:
                prompts += cf.color_paraphrases(model, target)
                paraphrased.append(target)
        others = [(t, swap_parts(model, t, g, targets)) for t, g in zip(targets, guides) if t != target]
        for prompt in prompts:
            prompt_guides = guide_prompts(model, prompt, target, parts, others)
            if prompt_guides is None:
                continue
            replace_only.append(single_sibling)
            prompt_target.append(index)
            erase_prompts.append(prompt)
            erase_guides.append(prompt_guides)
    preserve = cf.build_preserve(model, targets, list(request.preserve), params["preserve_vocabulary"],
                                 params["vocabulary_sample"])
    if params["expand"]:
        preserve = cf.expand_preserve(model, preserve, targets, params["concept_type"], params["preserve_siblings"],
                                      tuple(paraphrased))
    scale = params["preserve_scale"] or (max(0.1, 1.0 / len(preserve)) if preserve else 0.0)
    return UcePlan(targets, guides, preserve, erase_prompts, erase_guides, scale, replace_only, prompt_target)


def swap_parts(model: Any, target: str, parts: list[str], targets: list[str]) -> list[str]:
    """What another target of the job is swapped for in a prompt that names it too: its guide, or, when that is
    the empty prompt, its siblings not erased in the job, so the prompt keeps its length and its tokens line up
    with the guide's. Shortened ("a red square by Riley" → "a green square"), red stayed in 9 of the 132 images
    of red's prompts (4 seeds), all in Riley's captions."""
    if parts != [""]:
        return parts
    return free_siblings(model, target, targets) or parts


def free_siblings(model: Any, target: str, targets: list[str]) -> list[str]:
    """The target's siblings that the job does not erase: siblings erased in the same job are no place to send
    a concept. Empty when the model knows none."""
    return [g for g in cf.default_guides(model, target) if g and not cf.related_to(model, g, targets)]


def uses_sibling_guide(model: Any, target: str, params: dict[str, Any]) -> bool:
    """Whether a target without an explicit guide goes to its siblings (``default_guide``; auto: all but styles)."""
    choice = params["default_guide"]
    return choice == "siblings" or (choice == "auto" and not is_style(model, target, params))


def distant_siblings(model: Any, target: str, siblings: list[str], ratio: float) -> list[str]:
    """The siblings to guide toward: all but near twins, those whose prompts embed nearer the target's than
    ``ratio`` times the median sibling's (orange for red: 0.66; the pairs the built-in model keeps: 0.82 or
    more). A near twin drags the centroid back toward the concept; never leaves fewer than two."""
    if ratio <= 0 or len(siblings) < 3:
        return siblings
    prompts = cf.concept_prompts(model, target, styled=False)
    base = cf.encode_prompts(model.pipe, prompts).embeds
    distances = []
    for sibling in siblings:
        swapped = cf.encode_prompts(model.pipe, [cf.substitute(p, target, sibling) for p in prompts]).embeds
        distances.append(float((swapped - base).norm()))
    median = sorted(distances)[len(distances) // 2]
    kept = [s for s, d in zip(siblings, distances) if d >= ratio * median]
    return kept if len(kept) >= 2 else siblings


def guide_prompts(model: Any, prompt: str, target: str, parts: list[str],
                  others: list[tuple[str, list[str]]]) -> list[str] | None:
    """The guides of one erase prompt: the prompt with the target swapped for each guide part (a guide that is
    itself a full prompt replaces the bare concept only). A prompt that also names other targets of the job
    ("a red square by Riley" while erasing Riley too) has those swapped for their guides as well, every
    combination, so its guide re-asserts none of them; None when another target is named only through a word
    that cannot be swapped (a synonym), and the prompt is left out."""
    variants = [prompt]
    rest = cf.substitute(prompt, target, "")  # "hot dog" names "dog" only through the target itself
    for other, other_parts in others:
        if not cf.related_to(model, rest, [other]):
            continue
        if cf.substitute(rest, other, "") == rest:
            return None
        variants = [cf.substitute(v, other, g) for v in variants for g in other_parts]
    return [cf.substitute(v, target, g) for v in variants for g in parts]


def is_sibling(model: Any, guide: str, target: str) -> bool:
    """True when the guide is another member of the target's group ("orange" for "red")."""
    a, b = cf.concept_info(model, guide), cf.concept_info(model, target)
    return a is not None and b is not None and a.group == b.group and a.member != b.member


def is_style(model: Any, target: str, params: dict[str, Any]) -> bool:
    """A style of the built-in model, or any concept of an art request on a real model."""
    info = cf.concept_info(model, target)
    return info.group == "style" if info is not None else params["concept_type"] == "art"


def target_eta(model: Any, target: str, params: dict[str, Any]) -> float:
    """The push of one target: ``style_away`` for a style, ``color_away`` for a built-in color, else ``away``."""
    if is_style(model, target, params):
        return params["style_away"]
    info = cf.concept_info(model, target)
    return params["color_away"] if info is not None and info.group == "color" else params["away"]


def prompt_etas(model: Any, uce: UcePlan, params: dict[str, Any]) -> list[float]:
    """η per erase prompt: 0 for ``replace`` and for prompts mapped exactly onto one sibling, else its
    target's push (``target_eta``)."""
    if params["target"] != "steer-away":
        return [0.0] * len(uce.erase_prompts)
    per_target = [target_eta(model, t, params) for t in uce.targets]
    return [0.0 if exact else per_target[i] for i, exact in zip(uce.prompt_target, uce.replace_only)]


def steer_targets(rows: cf.EraseSet, etas: list[float]) -> torch.Tensor:
    """Embedding-space targets t (v* = W t) per erase row: (1 + η) c_g − η c_e, i.e. the guide pushed η times
    the concept's own direction further away, with η of the row's prompt (``prompt_etas``)."""
    away = torch.tensor(etas, dtype=rows.erase.dtype, device=rows.erase.device)[rows.prompt_index.to(rows.erase.device)]
    away = away.unsqueeze(1)
    return (1.0 + away) * rows.guide - away * rows.erase


def uce_statistics(model: Any, uce: UcePlan, params: dict[str, Any]) -> cf.Statistics:
    """Accumulate the d×d statistics of the erase pairs (with the chosen target) and the preserve prompts."""
    pipe = model.pipe
    rows = cf.erase_rows(pipe, uce.erase_prompts, uce.erase_guides, params["tokens"])
    stats = cf.Statistics(rows.erase.shape[1], device=rows.erase.device)
    stats.add_erase(rows.erase, steer_targets(rows, prompt_etas(model, uce, params)))
    if uce.preserve:
        stats.add_preserve(cf.preserve_rows(pipe, uce.preserve, "all"))
    return stats


def run(model: Any, request: EraseRequest, progress: ProgressCallback, cancel: CancelToken) -> EditDelta:
    params = request.params
    started = time.perf_counter()
    progress(Progress("erase", 0, 1, "Encoding concepts"))
    which = "v" if params["edit"] == "values" else "kv"
    projections = cf.cross_attention_projections(model.pipe, which)
    uce = plan(model, request, params)
    cancel.raise_if_cancelled()
    stats = uce_statistics(model, uce, params)
    cancel.raise_if_cancelled()
    factor = cf.solve_right_factor(stats, params["lamb"], params["erase_scale"], uce.preserve_scale)
    deltas = cf.deltas_from_factor(model, projections, factor, progress, cancel)
    cf.check_finite(deltas)
    edit = EditDelta.create(model.pipe, deltas, "uce",
                            concepts={"targets": uce.targets, "guides": [";".join(g) for g in uce.guides],
                                      "preserve": uce.preserve},
                            params=dict(params))
    edit.manifest["metrics"] = {"elapsed_s": round(time.perf_counter() - started, 3),
                                "erase_tokens": stats.erase_tokens, "preserve_tokens": stats.preserve_tokens}
    return edit


METHOD = MethodSpec(
    name="uce",
    title="UCE (closed form)",
    family="closed-form",
    description="Unified Concept Editing: one least-squares solve on every cross-attention key/value projection "
                "maps the concepts onto their guides while preserving other prompts. Takes about a second.",
    params=PARAMS,
    run=run,
)
