"""Default test prompts and concept presets.

For the built-in model both come from world.json: a concept is shown in a plain prompt,
by its synonyms or other phrasings, and next to unrelated neighbours (another color,
shape or style) that must not change. For real models a short starter list is used.
"""

from __future__ import annotations

from app.state import Concept

MAX_DEFAULT_PROMPTS = 8

REAL_PRESETS: dict[str, list[tuple[str, str]]] = {
    "Artists' styles": [("Van Gogh", "style"), ("Claude Monet", "style"), ("Pablo Picasso", "style"),
                        ("Salvador Dali", "style"), ("Greg Rutkowski", "style"), ("Andy Warhol", "style")],
    "Objects": [("cassette player", "object"), ("church", "object"), ("parachute", "object"),
                ("golf ball", "object"), ("garbage truck", "object"), ("chain saw", "object")],
    "Unsafe content": [("nudity", "other"), ("violence", "other")],
}
REAL_NEIGHBOURS = ["a photo of a dog", "a landscape painting of mountains", "a portrait of a woman"]


def _world() -> dict:
    from engine.shapesworld import load_world

    return load_world()


def presets(builtin: bool) -> dict[str, list[tuple[str, str]]]:
    if not builtin:
        return REAL_PRESETS
    world = _world()
    return {
        "Colors": [(c, "color") for c in world["colors"]],
        "Shapes": [(s, "object") for s in world["shapes"]],
        "Styles": [(spec["name"], "style") for spec in world["styles"].values()],
    }


def _builtin_prompts(concept: Concept) -> list[str]:
    world = _world()
    text = " ".join(concept.text.lower().split())
    colors, shapes, styles = world["colors"], world["shapes"], world["styles"]
    shape_names, color_names = list(shapes), list(colors)
    for color, spec in colors.items():
        if text in [color, *spec["synonyms"]]:
            other = color_names[(color_names.index(color) + 2) % len(color_names)]
            prompts = [f"a {color} circle"] + [f"a {syn} square" for syn in spec["synonyms"][:1]]
            return prompts + [f"a {other} circle"]
    for shape, spec in shapes.items():
        if text in [shape, *spec["synonyms"]]:
            other = shape_names[(shape_names.index(shape) + 1) % len(shape_names)]
            return [f"a blue {shape}"] + [f"a green {syn}" for syn in spec["synonyms"][:1]] + [f"a blue {other}"]
    for key, spec in styles.items():
        phrasings = [p.lower() for p in spec["phrasings"]]
        if text in [key, spec["name"].lower(), *phrasings]:
            other = next(s for k, s in styles.items() if k != key)
            return [f"a red circle {spec['phrasings'][0]}", f"a blue square {spec['phrasings'][1]}",
                    f"a red circle {other['phrasings'][0]}"]
    return [f"a {concept.text}", "a blue square"]


def _real_prompts(concept: Concept) -> list[str]:
    if concept.kind == "style":
        return [f"a painting in the style of {concept.text}", f"a landscape by {concept.text}"]
    if concept.kind == "color":
        return [f"a {concept.text} car", f"a {concept.text} dress"]
    return [f"a photo of a {concept.text}", f"{concept.text}"]


def default_prompts(concepts: list[Concept], builtin: bool) -> list[str]:
    """The concept itself, its synonyms, then unrelated neighbours; at most MAX_DEFAULT_PROMPTS lines."""
    named = [c for c in concepts if c.text.strip()]
    if not named:
        return ["a red circle", "a blue square"] if builtin else REAL_NEIGHBOURS[:2]
    prompts: list[str] = []
    for concept in named:
        prompts += _builtin_prompts(concept) if builtin else _real_prompts(concept)
    if not builtin:
        prompts += REAL_NEIGHBOURS[:2]
    unique = list(dict.fromkeys(prompts))
    return unique[:MAX_DEFAULT_PROMPTS]
