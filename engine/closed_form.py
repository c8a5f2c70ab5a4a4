"""Shared machinery of the closed-form methods (UCE, RECE, SPEED and the embedding probe).

Every closed-form method here edits the cross-attention key/value projections
(``attn2.to_k`` / ``attn2.to_v``) of the UNet. Those projections only ever see
text-encoder token embeddings, so an edit is fully described by what it does to
embedding vectors.

The central observation that keeps everything fast and small: when every target value
is a *linear* function of embeddings through the same old projection (``v* = W t`` with
``t`` an embedding-space target: the guide's tokens, a centroid of guides, or a
"steer away" combination), the UCE least-squares solution is

    W_new = W (I + G),  G = s_e (T - C_ee) (λ I + s_e C_ee + s_p C_pp)^-1

with ``C_ee = Σ c_e c_eᵀ``, ``T = Σ t c_eᵀ`` and ``C_pp = Σ c_p c_pᵀ``. Those are d×d
statistics (d = text width: 768 for SD1.x, 128 for the built-in model), so memory does not
grow with the number of concepts, one d×d solve serves all layers, and a layer's delta is
just ``W_l G``. RECE and SPEED reuse the same pieces.

Edits are computed against the *base* weights (``model.stack.original``), never against
whatever edits happen to be applied: every edit is then a self-contained delta relative
to the base, and edits compose on the stack by addition (the stack's own rule).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from engine.concept_lists import read_concepts_file
from engine.jobs import CancelToken, EditMismatchError, InputError, ProgressCallback, ProgressReporter

TOKEN_MODES = ("subject-to-end", "last-subject", "all")
ASSETS = Path(__file__).resolve().parent.parent / "assets"
COMMON_CONCEPTS_FILE = ASSETS / "concepts" / "common_concepts.txt"

# Prompt templates for concept expansion on real Stable Diffusion models. The art list follows the
# 2023 UCE code's extra prompts; the object list is a short set of neutral photo captions.
ART_TEMPLATES = ("{}", "painting by {}", "art by {}", "artwork by {}", "picture by {}", "style of {}")
OBJECT_TEMPLATES = ("{}", "a photo of {}", "an image of {}", "a picture of {}", "a painting of {}")


@dataclass(frozen=True)
class Projection:
    """One cross-attention key or value projection of the UNet."""

    name: str  # "unet.<parameter name>", the EditDelta key
    kind: str  # "k" or "v"
    module: Any  # the torch.nn.Linear


def cross_attention_projections(pipe: Any, which: str = "kv") -> list[Projection]:
    """Every cross-attention ``to_k`` / ``to_v`` in the UNet (``which``: "kv", "k" or "v").

    Cross-attention is recognised by its input width (the text encoder's width), not only by
    the ``attn2`` name, so self-attention layers are never touched by mistake."""
    unet = pipe.unet
    text_dim = int(unet.config.cross_attention_dim)
    found: list[Projection] = []
    for module_name, module in unet.named_modules():
        if not module_name.endswith("attn2"):
            continue
        for kind in which:
            linear = getattr(module, f"to_{kind}", None)
            if linear is None or getattr(linear, "in_features", None) != text_dim:
                continue
            found.append(Projection(f"unet.{module_name}.to_{kind}.weight", kind, linear))
    if not found:
        raise EditMismatchError("This model has no text cross-attention layers, so closed-form erasure cannot edit it.",
                                f"cross_attention_dim={text_dim}")
    return found


def base_weight(model: Any, projection: Projection) -> torch.Tensor:
    """The unedited float32 weight of a projection (the stack's stored original, on the model's device)."""
    return model.stack.original(projection.name).to(torch.float32)


# ----------------------------------------------------------------------------- text embeddings

@dataclass
class Encoded:
    """Text-encoder output for a list of prompts: float32 (n, L, d) on the model's device, and the number
    of real tokens of each prompt (BOS and EOS included, capped at L)."""

    prompts: list[str]
    embeds: torch.Tensor
    lengths: list[int]

    def subject_index(self, i: int) -> int:
        """Index of the last subject token (the token before EOS); 0 (BOS) for the empty prompt."""
        return max(self.lengths[i] - 2, 0)


# Embeddings of recently encoded prompts. Preserve sets (the vocabulary in several templates) are the
# same from one erase to the next, and encoding them dominates a closed-form edit, so they are kept.
# Keyed by the text encoder's identity and the in-place version counters of its weights, so an edit that
# changes the text encoder can never be served stale embeddings. Bounded by _CACHE_LIMIT_BYTES.
_CACHE: dict[tuple, tuple[torch.Tensor, int]] = {}
_CACHE_LIMIT_BYTES = 256 * 2**20


def _encoder_key(pipe: Any) -> tuple:
    encoder = pipe.text_encoder
    return id(encoder), sum(p._version for p in encoder.parameters()), str(pipe.device)


@torch.no_grad()
def encode_prompts(pipe: Any, prompts: list[str], batch_size: int = 64) -> Encoded:
    """Encode prompts exactly as the pipeline conditions the UNet (``pipe.encode_prompt``), float32."""
    tokenizer = pipe.tokenizer
    max_len = int(tokenizer.model_max_length)
    key = _encoder_key(pipe)
    missing = list(dict.fromkeys(p for p in prompts if (key, p) not in _CACHE))
    for start in range(0, len(missing), batch_size):
        batch = missing[start:start + batch_size]
        ids = tokenizer(batch, padding="max_length", max_length=max_len, truncation=True).input_ids
        embeds = pipe.encode_prompt(batch, pipe.device, 1, False)[0].to(torch.float32)
        for prompt, row, emb in zip(batch, ids, embeds):
            _CACHE[(key, prompt)] = (emb, _real_length(tokenizer, row))
    if not prompts:
        return Encoded([], torch.zeros(0, max_len, int(pipe.text_encoder.config.hidden_size)), [])
    hits = [_CACHE[(key, p)] for p in prompts]
    _trim_cache()
    return Encoded(list(prompts), torch.stack([h[0] for h in hits]), [h[1] for h in hits])


def _trim_cache() -> None:
    size = sum(t.numel() * t.element_size() for t, _ in _CACHE.values())
    for k in list(_CACHE):  # oldest first (dicts keep insertion order)
        if size <= _CACHE_LIMIT_BYTES:
            break
        tensor, _ = _CACHE.pop(k)
        size -= tensor.numel() * tensor.element_size()


def _real_length(tokenizer: Any, ids: list[int]) -> int:
    """BOS + words + the first EOS. Padding may reuse the EOS id (SD1.x), so count up to the first EOS."""
    eos = tokenizer.eos_token_id
    for i, token in enumerate(ids[1:], start=1):
        if token == eos:
            return i + 1
    return len(ids)


def aligned_spans(length_e: int, length_g: int, max_len: int, mode: str) -> tuple[slice, slice]:
    """Token positions of an erase prompt and its guide prompt that are mapped onto each other.

    ``subject-to-end`` (UCE 2023): from each prompt's last subject token through EOS and padding,
    cut to a common length so position k of one lines up with position k of the other.
    ``last-subject`` (UCE 2025, SPEED): only the last subject token. ``all``: every position."""
    if mode == "all":
        return slice(0, max_len), slice(0, max_len)
    start_e, start_g = max(length_e - 2, 0), max(length_g - 2, 0)
    if mode == "last-subject":
        return slice(start_e, start_e + 1), slice(start_g, start_g + 1)
    if mode != "subject-to-end":
        raise InputError(f"Token mode must be one of {', '.join(TOKEN_MODES)}.", mode)
    span = max_len - max(start_e, start_g)
    return slice(start_e, start_e + span), slice(start_g, start_g + span)


# ----------------------------------------------------------------------------- statistics and the solve

@dataclass
class Statistics:
    """Running d×d sums of the UCE objective. Memory is O(d²) whatever the number of concepts."""

    dim: int
    device: Any = "cpu"
    cee: torch.Tensor = field(init=False)  # Σ c_e c_eᵀ over erase tokens
    tce: torch.Tensor = field(init=False)  # Σ t c_eᵀ: embedding-space targets (v* = W t) against erase tokens
    cpp: torch.Tensor = field(init=False)  # Σ c_p c_pᵀ over preserve tokens
    erase_tokens: int = 0
    preserve_tokens: int = 0

    def __post_init__(self) -> None:
        zeros = lambda: torch.zeros(self.dim, self.dim, dtype=torch.float64, device=self.device)
        self.cee, self.tce, self.cpp = zeros(), zeros(), zeros()

    def add_erase(self, erase: torch.Tensor, target: torch.Tensor, weight: float = 1.0) -> None:
        """Add rows ``erase`` (n, d) whose new values must be ``W target`` (n, d)."""
        e, t = erase.to(torch.float32), target.to(torch.float32)
        self.cee += weight * (e.T @ e).to(torch.float64)
        self.tce += weight * (t.T @ e).to(torch.float64)
        self.erase_tokens += e.shape[0]

    def add_preserve(self, rows: torch.Tensor, weight: float = 1.0) -> None:
        p = rows.to(torch.float32)
        self.cpp += weight * (p.T @ p).to(torch.float64)
        self.preserve_tokens += p.shape[0]


def solve_right_factor(stats: Statistics, lamb: float, erase_scale: float, preserve_scale: float) -> torch.Tensor:
    """G with W_new = W (I + G) for every projection W (float64, d×d).

    W_new = (λW + s_e Σ v* c_eᵀ + s_p Σ W c_p c_pᵀ)(λI + s_e C_ee + s_p C_pp)^-1 with v* = W t
    rearranges to W (I + s_e (T - C_ee) A^-1). The small system is solved in float64 (never in the
    model's fp16), which is what keeps UCE stable; the caller casts the deltas to float32."""
    eye = torch.eye(stats.dim, dtype=torch.float64, device=stats.cee.device)
    a = lamb * eye + erase_scale * stats.cee + preserve_scale * stats.cpp
    rhs = erase_scale * (stats.tce - stats.cee)
    # G = rhs A^-1  <=>  Aᵀ Gᵀ = rhsᵀ
    return torch.linalg.solve(a.T, rhs.T).T


def deltas_from_factor(model: Any, projections: list[Projection], factor: torch.Tensor, progress: ProgressCallback,
                       cancel: CancelToken, stage: str = "erase") -> dict[str, torch.Tensor]:
    """Per layer: delta = W_base · factor (float32, CPU). Reports per layer and honours cancel between layers."""
    reporter = ProgressReporter(progress, stage, len(projections), cancel)
    deltas: dict[str, torch.Tensor] = {}
    for proj in projections:
        cancel.raise_if_cancelled()
        w = base_weight(model, proj).to(torch.float64)
        deltas[proj.name] = (w @ factor.to(w.device)).to(torch.float32).cpu()
        reporter.step(f"updated {proj.name[5:]}")
    return deltas


def check_finite(deltas: dict[str, torch.Tensor]) -> None:
    for name, delta in deltas.items():
        if not bool(torch.isfinite(delta).all()):
            raise InputError("The solve produced invalid numbers; raise λ (the regulariser) and try again.", name)


# ----------------------------------------------------------------------------- concepts, guides, preserve sets

@dataclass(frozen=True)
class ConceptInfo:
    """What the model's own vocabulary says about a concept (built-in model only; real models give none).

    ``group`` is "color", "shape" or "style"; ``word`` is the word of the concept text that names the
    group member; ``siblings`` are the other members (same phrasing, other word); ``synonyms`` name the
    same member (they must never be preserved while it is erased)."""

    group: str
    member: str
    word: str
    siblings: tuple[str, ...]
    synonyms: tuple[str, ...]


def _world(model: Any) -> dict | None:
    if not getattr(model, "is_builtin", False):
        return None
    from engine.shapesworld import load_world

    return load_world()


def concept_info(model: Any, concept: str) -> ConceptInfo | None:
    """Recognise a concept of the built-in world ("red", "crimson", "star", "by Kusama", ...)."""
    return _builtin_concept_info(concept) if _world(model) is not None else None


@lru_cache(maxsize=4096)  # many-concept jobs ask about the same concepts thousands of times
def _builtin_concept_info(concept: str) -> ConceptInfo | None:
    from engine.shapesworld import load_world

    world = load_world()
    words = set(re.findall(r"[a-z]+", concept.lower()))
    groups: list[tuple[str, dict[str, list[str]]]] = [
        ("color", {c: [c, *v["synonyms"]] for c, v in world["colors"].items()}),
        ("shape", {s: [s, *v["synonyms"]] for s, v in world["shapes"].items()}),
        ("style", {k: [v["name"].lower()] for k, v in world["styles"].items()}),
    ]
    for group, members in groups:
        for member, names in members.items():
            hit = next((n for n in names if n in words), None)
            if hit is None:
                continue
            siblings = []
            for other, other_names in members.items():
                if other == member:
                    continue
                sibling = re.sub(rf"\b{re.escape(hit)}\b", other_names[0], concept, flags=re.IGNORECASE)
                if group == "style":
                    sibling = re.sub(rf"\b{re.escape(hit)}\b", world["styles"][other]["name"], concept,
                                     flags=re.IGNORECASE)
                siblings.append(sibling)
            return ConceptInfo(group, member, hit, tuple(siblings), tuple(n for n in names if n != hit))
    return None


def concept_prompts(model: Any, concept: str, concept_type: str = "object", styled: bool = True) -> list[str]:
    """The prompts one concept is erased in (the concept itself first); ``styled``: also inside the
    model's style captions (built-in model).

    Built-in model: the concept inside the model's own caption templates (world.json), the canonical
    way it was trained to be asked for. Real models: UCE's art prompts or neutral object captions."""
    info = concept_info(model, concept)
    world = _world(model)
    if world is not None and info is None:
        return [concept]  # a built-in phrase outside the color/shape/style groups ("a shape", "art")
    if info is None or world is None:
        templates = ART_TEMPLATES if concept_type == "art" else OBJECT_TEMPLATES
        return _unique([t.format(concept) for t in templates])
    prompts = [concept]
    shapes = list(world["shapes"])
    colors = list(world["colors"])
    # A quarter of the model's captions name a style too ("a red square by Kusama"); the concept is erased
    # (and its siblings preserved) in that context as well, since the tokens after the concept differ there.
    styles = [v["phrasings"][0] for v in world["styles"].values()] if styled else []
    if info.group == "color":
        for shape in shapes:
            prompts.append(f"a {concept} {shape}")
        prompts += [f"something {concept}", f"a {concept} shape", f"a picture of a {concept} {shapes[0]}"]
        prompts += [f"a {concept} {shapes[(i + 1) % len(shapes)]} {style}" for i, style in enumerate(styles)]
    elif info.group == "shape":
        prompts += [f"a {concept}", f"a picture of a {concept}", f"a {colors[0]} {concept}"]
        prompts += [f"a {c} {concept}" for c in colors[1:3]]
        prompts += [f"a {colors[(i + 3) % len(colors)]} {concept} {style}" for i, style in enumerate(styles)]
    else:
        # a bare style name ("Kusama") is asked for as "by Kusama" in the model's captions
        phrase = concept if concept.strip().lower() != info.word else f"by {concept}"
        prompts += [phrase, f"a shape {phrase}", f"art {phrase}", f"a circle {phrase}", f"a star {phrase}"]
    return _unique(prompts)


def caption_heads(model: Any, color: str) -> list[str]:
    """Every color caption template of the built-in model cut right after the color ("a picture of a red",
    "by Riley, a red", each style phrasing in turn); empty for other concepts and real models.

    The text encoder is causal, so the last token of a head is the color's own token in that caption's context.
    UCE edits from a prompt's last word on, so with the heads among its erase prompts the edit reaches the
    color's token in every caption form, not only the words after it. Without them red stayed in styled captions
    ("by Vasarely, a crimson circle"): UCE on red, 4 seeds, red/crimson/scarlet in all 12 color templates
    (144 images, 48 styled) left red in 13 → 2 images (styled 12 → 2), orange kept its color in 73 → 71 of 96;
    over the suite (16 seeds, all 80 unrelated prompts) red 2.3 → 0.8 %, synonyms 3.1 → 0.8 %, specificity
    99.0 → 98.7 %, shapes of red prompts kept 94.2 → 93.4 %. (ESD-x's preserve projection does not take them:
    red left 31 → 29, orange kept 90 → 86.)"""
    info = concept_info(model, color)
    return list(_color_heads(color)) if info is not None and info.group == "color" else []


def caption_forms(model: Any, color: str) -> list[tuple[str, str]]:
    """(caption, the same caption without the color) for every color caption template of the built-in model,
    each style phrasing in turn and the shapes cycling: ("by Riley, a red circle", "by Riley, a circle"), 44
    for a color. Empty for other concepts and real models. ESD-x trains on them (``caption_forms``)."""
    info = concept_info(model, color)
    return list(_caption_forms(color)) if info is not None and info.group == "color" else []


def _cycled_fills(templates: list[str]) -> list[tuple[str, str, str]]:
    """(template, shape, style) for each template, each style phrasing in turn where it has a style slot, the
    built-in model's shapes cycling over the whole list."""
    from engine.shapesworld import all_style_phrases, load_world

    shapes = list(load_world()["shapes"])
    phrasings = all_style_phrases()
    fills = [(template, style) for template in templates for style in (phrasings if "{style}" in template else [""])]
    return [(template, shapes[i % len(shapes)], style) for i, (template, style) in enumerate(fills)]


@lru_cache(maxsize=64)
def _caption_forms(color: str) -> tuple[tuple[str, str], ...]:
    from engine.shapesworld import fill_caption, load_world

    templates = [t for ts in load_world()["templates"].values() for t in ts if "{color}" in t]
    return tuple((fill_caption(template, color=color, shape=shape, style=style),
                  fill_caption(template, shape=shape, style=style))
                 for template, shape, style in _cycled_fills(templates))


# Phrasings of a color outside the built-in model's caption templates, which always put the color after "a",
# "something" or a style; users also write "orange circle" or "a circle colored orange".
COLOR_PARAPHRASES = ("{color} {shape}", "a {shape} colored {color}")


def color_paraphrases(model: Any, color: str) -> list[str]:
    """The color in ``COLOR_PARAPHRASES`` with every shape of the built-in model ("red circle", "a star colored
    red"); empty for other concepts and real models. UCE's ``paraphrases`` option erases the target and
    preserves its siblings in these forms (see engine/uce.py)."""
    info = concept_info(model, color)
    world = _world(model)
    if info is None or world is None or info.group != "color":
        return []
    return [t.format(color=color, shape=shape) for t in COLOR_PARAPHRASES for shape in world["shapes"]]


def styled_color_captions(model: Any, color: str) -> list[str]:
    """The color in every styled caption template of the built-in model, whole, each style phrasing in turn and
    the shapes cycling ("a red star painted by Riley", "in the style of Kusama, a red circle"): 27 for a color.
    Empty for other concepts and real models.

    UCE edits from the color to the end of the prompt, and the text encoder is causal, so the tokens of "painted
    by Riley" after "red" carry red in a context that the first phrasing ("by Riley") does not cover: with only
    that one among the erase prompts, red stayed in "a red object painted by Riley" and "a crimson object in the
    style of Kusama" (see engine/uce.py)."""
    info = concept_info(model, color)
    return list(_styled_color_captions(color)) if info is not None and info.group == "color" else []


@lru_cache(maxsize=64)
def _styled_color_captions(color: str) -> tuple[str, ...]:
    from engine.shapesworld import fill_caption, load_world

    return tuple(fill_caption(template, color=color, shape=shape, style=style)
                 for template, shape, style in _cycled_fills(load_world()["templates"]["color_shape_style"]))


@lru_cache(maxsize=64)
def _color_heads(color: str) -> tuple[str, ...]:
    from engine.shapesworld import all_style_phrases, fill_caption, load_world

    world = load_world()
    phrasings = all_style_phrases()
    out: list[str] = []
    for template in (t for ts in world["templates"].values() for t in ts if "{color}" in t):
        head = template[:template.index("{color}")] + "{color}"
        out += [fill_caption(head, color=color, style=style) for style in (phrasings if "{style}" in head else [""])]
    return tuple(_unique(out))


def substitute(prompt: str, concept: str, replacement: str) -> str:
    """The prompt with the concept replaced (whole words, case-insensitive), whitespace tidied."""
    out = re.sub(rf"(?<!\w){re.escape(concept)}(?!\w)", replacement, prompt, flags=re.IGNORECASE)
    return " ".join(out.split())


def default_guides(model: Any, concept: str) -> list[str]:
    """The guide set when the user gives none: the concept's siblings on the built-in model (the other
    colors/shapes/styles of its world), else the empty prompt."""
    info = concept_info(model, concept)
    return list(info.siblings) if info else [""]


def vocabulary_sample(model: Any, limit: int = 0) -> list[str]:
    """Preserve candidates from the model's own vocabulary: world.json words and phrases for the built-in
    model, the bundled common-concepts list for real models. ``limit`` > 0 takes an even sample."""
    world = _world(model)
    if world is not None:
        items: list[str] = []
        for color, v in world["colors"].items():
            items += [color, *v["synonyms"]]
        for shape, v in world["shapes"].items():
            items += [shape, *v["synonyms"]]
        for v in world["styles"].values():
            items += list(v["phrasings"])
        items += ["a shape", "an object", "art", "a white background"]
    else:
        items = read_concepts_file(COMMON_CONCEPTS_FILE) if COMMON_CONCEPTS_FILE.is_file() else []
    items = _unique(items)
    if limit and len(items) > limit:
        step = len(items) / limit
        items = [items[int(i * step)] for i in range(limit)]
    return items


def related_to(model: Any, candidate: str, concepts: list[str]) -> bool:
    """True when a preserve candidate names an erased concept (the same word, or a known synonym)."""
    return bool(concept_pattern(model, concepts).search(candidate.lower()))


def concept_pattern(model: Any, concepts: list[str]) -> re.Pattern[str]:
    """One regex matching any of the concepts' names (their words and known synonyms, whole words, lower case);
    filters thousands of candidate prompts against many concepts in one pass each."""
    names: set[str] = set()
    for concept in concepts:
        names.add(concept.lower())
        info = concept_info(model, concept)
        if info is not None:
            names |= {info.word.lower(), *(s.lower() for s in info.synonyms)}
    if not names:
        return re.compile(r"(?!)")  # matches nothing
    alternatives = "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))
    return re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)")


def build_preserve(model: Any, targets: list[str], explicit: list[str], use_vocabulary: bool,
                   sample: int = 0) -> list[str]:
    """Explicit preserve concepts plus (optionally) a vocabulary sample, minus anything naming a target."""
    pool = list(explicit)
    if use_vocabulary:
        pool += vocabulary_sample(model, sample)
    named = concept_pattern(model, targets)
    return [p for p in _unique(pool) if not named.search(p.lower())]


def expand_preserve(model: Any, preserve: list[str], targets: list[str], concept_type: str = "object",
                    siblings: bool = True, paraphrased: tuple[str, ...] = ()) -> list[str]:
    """Preserve concepts inside the same caption templates the targets are erased in, so that what is
    protected is the concept *in context* ("a orange circle"), not only the bare word. Expanded prompts that
    mention a target (e.g. "a red circle" from the shape "circle" while erasing red) are dropped.
    ``siblings``: also every caption form naming a sibling of a target (``sibling_captions``).
    ``paraphrased``: the color targets whose sibling colors are also preserved in ``COLOR_PARAPHRASES``
    ("orange circle" for red).

    Only where the model's own caption templates are known (the built-in model): on a real model the
    preserve list is typically hundreds of entries, and multiplying it by generic templates would cost
    more than it protects, so real models preserve the bare concepts, as the reference does."""
    if _world(model) is None:
        return list(preserve)
    out: list[str] = []
    for concept in preserve:
        out += concept_prompts(model, concept, concept_type)
    for target in targets if siblings else []:
        out += sibling_captions(model, target)
    for target in paraphrased:
        out += [p for sibling in default_guides(model, target) for p in color_paraphrases(model, sibling)]
    named = concept_pattern(model, targets)
    return [p for p in _unique(out) if not named.search(p.lower())]


def sibling_captions(model: Any, concept: str) -> list[str]:
    """Every caption form of the built-in model that names a sibling of the concept ("a orange star by
    Kusama", "painted by Vasarely, a green circle" for red), the other slots filled with every canonical color
    and shape and every style phrasing. Empty for concepts outside the world and for real models.

    A concept's nearest sibling is where an erasure spills: erasing red drew orange yellow in styled captions,
    whose tokens the few preserved templates did not cover (orange's color 0.85 → 0.52, 8 seeds; with its
    siblings preserved in every caption form 0.75, red still erased)."""
    info = concept_info(model, concept)  # None for real models too
    return list(_sibling_captions(info.group, info.member)) if info is not None else []


@lru_cache(maxsize=64)
def _sibling_captions(group: str, member: str) -> tuple[str, ...]:
    from engine.shapesworld import all_style_phrases, fill_caption, load_world

    world = load_world()
    slots = {"color": list(world["colors"]), "shape": list(world["shapes"]), "style": all_style_phrases()}
    members = ([world["styles"][k]["phrasings"] for k in world["styles"] if k != member]
               if group == "style" else [[m] for m in slots[group] if m != member])
    out: list[str] = []
    for template in (t for ts in world["templates"].values() for t in ts if "{" + group + "}" in t):
        for words in members:
            fills: list[dict[str, str]] = [{group: w} for w in words]
            for slot in ("color", "shape", "style"):
                if slot != group and "{" + slot + "}" in template:
                    fills = [f | {slot: v} for f in fills for v in slots[slot]]
            out += [fill_caption(template, **f) for f in fills]
    return tuple(_unique(out))


def broadcast(values: list[str], count: int, what: str) -> list[str | None]:
    """One entry per target: an empty list gives None each, one entry is shared, else the counts must match."""
    if not values:
        return [None] * count
    if len(values) == 1:
        return [values[0]] * count
    if len(values) != count:
        raise InputError(f"Give one {what} for every concept, or a single {what} for all of them.",
                         f"{len(values)} {what}s for {count} concepts")
    return list(values)


def split_guide(guide: str | None) -> list[str] | None:
    """A guide entry may list several prompts separated by ';' — their centroid is the guide."""
    if guide is None:
        return None
    parts = [" ".join(p.split()) for p in guide.split(";")]
    return parts or [""]


def _unique(items: list[str]) -> list[str]:
    seen: set[str] = set()
    out = []
    for item in items:
        key = item.lower()
        if key not in seen:
            seen.add(key)
            out.append(item)
    return out


# ----------------------------------------------------------------------------- erase/guide pair statistics

@dataclass
class EraseSet:
    """The erase side of a closed-form solve: token rows and their embedding-space targets."""

    erase: torch.Tensor  # (n, d)
    guide: torch.Tensor  # (n, d) guide centroid, aligned row by row with ``erase``
    prompt_index: torch.Tensor  # (n,) the erase prompt each row comes from


def erase_rows(pipe: Any, erase_prompts: list[str], guide_sets: list[list[str]], mode: str) -> EraseSet:
    """Aligned token rows for each erase prompt and the centroid of its guide prompts.

    With several guide prompts (e.g. the siblings), every guide is aligned to the erase prompt and
    the rows are averaged, so the target is "the same prompt about a sibling, on average"."""
    all_guides = sorted({g for gs in guide_sets for g in gs})
    enc_e = encode_prompts(pipe, erase_prompts)
    enc_g = encode_prompts(pipe, all_guides)
    index = {g: i for i, g in enumerate(all_guides)}
    max_len = enc_e.embeds.shape[1]
    erase_parts, guide_parts, index_parts = [], [], []
    for i, guides in enumerate(guide_sets):
        starts = [aligned_spans(enc_e.lengths[i], enc_g.lengths[index[g]], max_len, mode) for g in guides]
        # a common span length over all guides of this prompt
        span = min(s_e.stop - s_e.start for s_e, _ in starts)
        e0 = starts[0][0].start
        erase_parts.append(enc_e.embeds[i, e0:e0 + span])
        acc = torch.zeros_like(erase_parts[-1])
        for g, (_, s_g) in zip(guides, starts):
            acc += enc_g.embeds[index[g], s_g.start:s_g.start + span]
        guide_parts.append(acc / len(guides))
        index_parts.append(torch.full((span,), i, dtype=torch.long))
    return EraseSet(torch.cat(erase_parts), torch.cat(guide_parts), torch.cat(index_parts))


def preserve_rows(pipe: Any, prompts: list[str], mode: str = "all") -> torch.Tensor:
    """Token rows of preserve prompts: all positions (UCE 2023) or the last subject token."""
    if not prompts:
        return torch.zeros(0, int(pipe.text_encoder.config.hidden_size), device=pipe.device)
    enc = encode_prompts(pipe, prompts)
    if mode == "all":
        return enc.embeds.reshape(-1, enc.embeds.shape[-1])
    rows = [enc.embeds[i, enc.subject_index(i)] for i in range(len(prompts))]
    return torch.stack(rows)
