"""Erasure quality on the built-in ShapesWorld model, measured with the judge.

For each prompt in a fixed suite (every color × shape × style, color and shape
synonyms, style phrasings, bare shapes) images are generated at the given seeds and
judged. Per-concept accuracy describes the model; with erased concepts it reports:

- efficacy: share of images from prompts naming the concept (canonical word) that still show it (lower is better);
- generality: the same for prompts naming it by a synonym or another phrasing (lower is better);
- specificity: accuracy on prompts about none of the erased concepts, relative to the unedited model
  (1.0 = unchanged); ``retention`` is the same for the *other* attributes of the target prompts
  (the shape of a red circle must stay a circle when red is erased).

The unedited model's verdicts are computed by temporarily clearing the edit stack (restored
bit-exactly afterwards) and cached on disk per model fingerprint and sampling settings.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from engine.jobs import CancelToken, InputError, ProgressCallback, ProgressReporter, no_progress
from engine.judge import Verdict, judge_image
from engine.shapesworld import SHAPES, load_world

JUDGE_VERSION = 1
KINDS = ("color", "shape", "style")


@dataclass(frozen=True)
class EvalCase:
    """One prompt and what it asks for; ``words`` maps each named attribute to the word used."""

    prompt: str
    color: str | None
    shape: str | None
    style: str  # "solid" when no style is named
    words: tuple[tuple[str, str], ...]  # (kind, word as written) for each attribute the prompt names
    group: str  # "combo", "color-synonym", "shape-synonym", "style-phrasing", "bare"


@dataclass(frozen=True)
class Concept:
    """An erased concept resolved against the world: its kind, canonical key and every way of naming it."""

    kind: str
    key: str
    canonical: str
    variants: tuple[str, ...]


@dataclass
class EvalRequest:
    seeds: list[int] = field(default_factory=lambda: list(range(16)))
    steps: int = 25
    guidance: float = 5.0
    erased: list[str] = field(default_factory=list)
    quick: bool = False  # a smaller suite (about a third of the combinations) for previews
    use_cache: bool = True
    cases: list[EvalCase] | None = None  # a custom suite (e.g. from compact_suite); overrides quick


@dataclass
class EvalReport:
    settings: dict[str, Any]
    accuracy: dict[str, dict[str, float]]  # per concept word: {"color": acc, ...} and "overall"
    bare_shape_colors: dict[str, float]  # share of each color for bare shape prompts ("a circle")
    erased: dict[str, dict[str, Any]] = field(default_factory=dict)
    specificity: float | None = None
    # the same per attribute: e.g. {"color": 0.99, ...} = color accuracy of the untouched prompts, relative
    specificity_by_kind: dict[str, float] = field(default_factory=dict)
    base_accuracy: dict[str, dict[str, float]] | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def resolve_concept(text: str) -> Concept:
    """Map a user's concept ("red", "crimson", "star", "by Kusama", "kusama") to the world's vocabulary."""
    world = load_world()
    needle = " ".join(text.lower().split())
    for color, spec in world["colors"].items():
        if needle in [color, *spec["synonyms"]]:
            return Concept("color", color, color, tuple(spec["synonyms"]))
    for shape, spec in world["shapes"].items():
        if needle in [shape, *spec["synonyms"]]:
            return Concept("shape", shape, shape, tuple(spec["synonyms"]))
    for style, spec in world["styles"].items():
        phrasings = [p.lower() for p in spec["phrasings"]]
        if needle in [style, spec["name"].lower(), *phrasings]:
            return Concept("style", style, spec["phrasings"][0], tuple(spec["phrasings"][1:]))
    raise InputError(f"{text!r} is not a concept of the built-in model; use a color, shape or style from world.json.")


def build_suite(quick: bool = False) -> list[EvalCase]:
    world = load_world()
    colors = list(world["colors"])
    styles = list(world["styles"])
    cases: list[EvalCase] = []

    def add(color: str | None, color_word: str | None, shape: str | None, shape_word: str | None,
            style: str, style_word: str | None, group: str) -> None:
        words = []
        parts = ["a"]
        if color_word:
            parts.append(color_word)
            words.append(("color", color_word))
        parts.append(shape_word or "shape")
        if shape_word:
            words.append(("shape", shape_word))
        if style_word:
            parts.append(style_word)
            words.append(("style", style_word))
        cases.append(EvalCase(" ".join(parts), color, shape, style, tuple(words), group))

    for i, shape in enumerate(SHAPES):
        for j, color in enumerate(colors):
            if quick and (i + j) % 3:
                continue
            add(color, color, shape, shape, "solid", None, "combo")
            for style in styles:
                add(color, color, shape, shape, style, world["styles"][style]["phrasings"][0], "combo")
    for color in colors:
        for word in world["colors"][color]["synonyms"]:
            for i, shape in enumerate(SHAPES):
                if quick and i % 2:
                    continue
                add(color, word, shape, shape, "solid", None, "color-synonym")
    for i, shape in enumerate(SHAPES):
        for word in world["shapes"][shape]["synonyms"]:
            for j, color in enumerate(colors):
                if quick and (i + j) % 3:
                    continue
                add(color, color, shape, word, "solid", None, "shape-synonym")
    for style in styles:
        for phrase in world["styles"][style]["phrasings"][1:]:
            for i, shape in enumerate(SHAPES):
                color = colors[(i + len(phrase)) % len(colors)]
                add(color, color, shape, shape, style, phrase, "style-phrasing")
    for shape in SHAPES:
        add(None, None, shape, shape, "solid", None, "bare")
    return cases


def compact_suite(erased: list[str], others: int = 6) -> list[EvalCase]:
    """A small suite for live metrics: every prompt naming an erased concept in the plain color/shape
    combination (canonical and variant words), plus ``others`` prompts about none of them."""
    concepts = [resolve_concept(c) for c in erased]
    full = build_suite()
    mentioned = [c for c in full if any(case_mentions(c, k) for k in concepts) and c.group != "bare"
                 and (c.style == "solid" or any(k.kind == "style" for k in concepts))]
    rest = [c for c in full if c.group == "combo" and not any(case_mentions(c, k) for k in concepts)]
    step = max(1, len(rest) // max(1, others))
    return mentioned + rest[::step][:others]


def case_correct(case: EvalCase, verdict: Verdict) -> dict[str, bool]:
    """Per named attribute: does the image show what the prompt asked for?"""
    result = {}
    if case.color is not None:
        result["color"] = verdict.color == case.color
    if case.shape is not None:
        result["shape"] = verdict.shape == case.shape
    result["style"] = verdict.style == case.style
    return result


def case_mentions(case: EvalCase, concept: Concept) -> str | None:
    """"canonical", "variant" or None: how (if at all) a prompt names the concept."""
    for kind, word in case.words:
        if kind != concept.kind:
            continue
        if word.lower() == concept.canonical.lower():
            return "canonical"
        if word.lower() in (v.lower() for v in concept.variants):
            return "variant"
    return None


def _model_fingerprint(model: Any) -> str:
    digest = hashlib.sha256()
    for component in ("unet", "text_encoder", "vae"):
        for name, tensor in getattr(model.pipe, component).state_dict().items():
            digest.update(name.encode())
            digest.update(tensor.detach().to("cpu").contiguous().numpy().tobytes()[:4096])
            digest.update(str(float(tensor.float().sum())).encode())
    return digest.hexdigest()[:20]


def _generate_verdicts(model: Any, cases: list[EvalCase], request: EvalRequest, reporter: ProgressReporter,
                       cancel: CancelToken, label: str) -> list[list[Verdict]]:
    from engine.generate import GenerationRequest, generate

    out = []
    for case in cases:
        images = generate(model, GenerationRequest(case.prompt, seeds=list(request.seeds), steps=request.steps,
                                                   guidance=request.guidance), cancel=cancel)
        out.append([judge_image(np.asarray(im)) for im in images])
        reporter.step(f"{label}: {case.prompt}")
    return out


def _cache_path(key: str):
    from engine.paths import cache_dir

    return cache_dir() / "eval" / f"{key}.json"


def _base_verdicts(model: Any, cases: list[EvalCase], request: EvalRequest, reporter: ProgressReporter,
                   cancel: CancelToken) -> list[list[Verdict]]:
    """Verdicts of the unedited model (edit stack cleared for the duration, then restored)."""
    snapshot = model.stack.snapshot()
    key_src = json.dumps([model.source, [c.prompt for c in cases], request.seeds, request.steps, request.guidance,
                          JUDGE_VERSION, str(model.device), str(model.dtype)])
    try:
        model.stack.clear()
        key = hashlib.sha256((key_src + _model_fingerprint(model)).encode()).hexdigest()[:24]
        path = _cache_path(key)
        if request.use_cache and path.is_file():
            data = json.loads(path.read_text())
            reporter.step("unedited model: cached", advance=len(cases))
            return [[Verdict(*v) for v in row] for row in data]
        verdicts = _generate_verdicts(model, cases, request, reporter, cancel, "unedited model")
    finally:
        model.stack.restore(snapshot)
    if request.use_cache:
        from engine.atomic import atomic_path

        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps([[[v.color, v.shape, v.style] for v in row] for row in verdicts]))
    return verdicts


def _accuracy_table(cases: list[EvalCase], verdicts: list[list[Verdict]]) -> dict[str, dict[str, float]]:
    """Accuracy per concept word, e.g. {"crimson": {"color": 0.98}, "by Kusama": {"style": 1.0}}."""
    sums: dict[str, Counter] = {}
    for case, row in zip(cases, verdicts):
        for verdict in row:
            correct = case_correct(case, verdict)
            for kind, word in case.words:
                sums.setdefault(word, Counter())
                sums[word][kind + "_ok"] += correct[kind]
                sums[word][kind + "_n"] += 1
            sums.setdefault("(solid)", Counter())
            if case.style == "solid":
                sums["(solid)"]["style_ok"] += correct["style"]
                sums["(solid)"]["style_n"] += 1
    table = {}
    for word, c in sorted(sums.items()):
        table[word] = {k: round(c[k + "_ok"] / c[k + "_n"], 4) for k in KINDS if c[k + "_n"]}
    return table


def _full_accuracy(pairs: list[tuple[EvalCase, list[Verdict]]]) -> float:
    ok = n = 0
    for case, row in pairs:
        for verdict in row:
            ok += all(case_correct(case, verdict).values())
            n += 1
    return ok / n if n else float("nan")


def _kind_accuracy(pairs: list[tuple[EvalCase, list[Verdict]]], kind: str) -> float:
    marks = [case_correct(case, v)[kind] for case, row in pairs for v in row if kind in case_correct(case, v)]
    return sum(marks) / len(marks) if marks else float("nan")


def evaluate(model: Any, request: EvalRequest, progress: ProgressCallback = no_progress,
             cancel: CancelToken | None = None) -> EvalReport:
    """Judge the model (with its current edit stack) on the suite; see the module docstring."""
    if not model.is_builtin:
        raise InputError("Evaluation needs the built-in ShapesWorld model, which has a judge; load 'builtin'.")
    cancel = cancel or CancelToken()
    concepts = [resolve_concept(c) for c in request.erased]
    cases = request.cases if request.cases is not None else build_suite(request.quick)
    edited = len(model.stack) > 0 and concepts
    total = len(cases) * (2 if edited else 1)
    reporter = ProgressReporter(progress, "evaluate", total, cancel)
    reporter.start(f"Evaluating {len(cases)} prompts × {len(request.seeds)} seeds")
    verdicts = _generate_verdicts(model, cases, request, reporter, cancel, "edited model" if edited else "model")
    base = _base_verdicts(model, cases, request, reporter, cancel) if edited else verdicts

    spread = Counter(v.color for case, row in zip(cases, verdicts) if case.group == "bare" for v in row)
    n_bare = sum(spread.values())
    report = EvalReport(
        settings={"seeds": list(request.seeds), "steps": request.steps, "guidance": request.guidance,
                  "prompts": len(cases), "quick": request.quick, "erased": list(request.erased),
                  "edits": [e.edit.label for e in model.stack.entries if e.enabled],
                  "strengths": [e.strength for e in model.stack.entries if e.enabled]},
        accuracy=_accuracy_table(cases, verdicts),
        bare_shape_colors={c: round(k / n_bare, 4) for c, k in spread.most_common()},
    )
    if not concepts:
        return report
    report.base_accuracy = _accuracy_table(cases, base)

    untouched = [i for i, case in enumerate(cases)
                 if case.group != "bare" and not any(case_mentions(case, c) for c in concepts)]
    base_acc = _full_accuracy([(cases[i], base[i]) for i in untouched])
    edit_acc = _full_accuracy([(cases[i], verdicts[i]) for i in untouched])
    report.specificity = round(edit_acc / base_acc, 4) if base_acc else None
    for kind in KINDS:
        base_k = _kind_accuracy([(cases[i], base[i]) for i in untouched], kind)
        edit_k = _kind_accuracy([(cases[i], verdicts[i]) for i in untouched], kind)
        if base_k > 0:  # NaN (no such prompts) compares False
            report.specificity_by_kind[kind] = round(edit_k / base_k, 4)
    for concept, text in zip(concepts, request.erased):
        entry: dict[str, Any] = {"kind": concept.kind, "key": concept.key}
        for how, name in (("canonical", "efficacy"), ("variant", "generality")):
            idx = [i for i, case in enumerate(cases) if case_mentions(case, concept) == how]
            shown = [v.shows(concept.kind, concept.key) for i in idx for v in verdicts[i]]
            base_shown = [v.shows(concept.kind, concept.key) for i in idx for v in base[i]]
            entry[name] = round(float(np.mean(shown)), 4) if shown else None
            entry[name + "_unedited"] = round(float(np.mean(base_shown)), 4) if base_shown else None
            entry[name + "_prompts"] = len(idx)
            # what the prompts were drawn as instead (e.g. "blue" for Concept Ablation's red → blue)
            judged = Counter(getattr(v, concept.kind) for i in idx for v in verdicts[i])
            outcomes = {k: round(n / max(1, len(shown)), 4) for k, n in judged.most_common()}
            entry["target_outcomes" if how == "canonical" else "generality_outcomes"] = outcomes
            if how == "canonical":
                other = [k for k in KINDS if k != concept.kind]
                keep = [all(case_correct(cases[i], v)[k] for k in other if k in case_correct(cases[i], v))
                        for i in idx for v in verdicts[i]]
                base_keep = [all(case_correct(cases[i], v)[k] for k in other if k in case_correct(cases[i], v))
                             for i in idx for v in base[i]]
                entry["retention"] = (round(float(np.mean(keep)) / float(np.mean(base_keep)), 4)
                                      if base_keep and np.mean(base_keep) else None)
        report.erased[text] = entry
    return report
