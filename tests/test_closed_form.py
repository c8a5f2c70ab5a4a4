"""Closed-form erasure (UCE, RECE, SPEED) and the adversarial-embedding probe on the built-in model."""

from __future__ import annotations

import pytest
import torch

import engine  # noqa: F401
from engine import closed_form as cf
from engine.edits import EditDelta
from engine.generate import GenerationRequest, generate
from engine.jobs import Cancelled, CancelToken, InputError
from engine.judge import judge_images
from engine.methods import EraseRequest, all_methods, erase


@pytest.fixture(scope="module")
def model():
    from engine.model import load_model

    return load_model("builtin", device="cpu")


def _weights(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.pipe.unet.named_parameters()}


def _verdicts(model, prompt: str, seeds=range(4), steps: int = 10):
    return judge_images(generate(model, GenerationRequest(prompt, seeds=list(seeds), steps=steps, guidance=5.0)))


def _verdicts_after_uce(model, targets: list[str], *prompts: str) -> list[list]:
    """Each prompt's verdicts (4 seeds, 25 steps) with UCE's default edit of ``targets`` applied; the model is
    left as it was."""
    model.stack.push(erase(model, EraseRequest("uce", targets)))
    try:
        return [_verdicts(model, prompt, steps=25) for prompt in prompts]
    finally:
        model.stack.clear()


def _share(verdicts, kind: str, value: str) -> float:
    return sum(v.shows(kind, value) for v in verdicts) / len(verdicts)


def test_registry_and_tooltips():
    methods = all_methods()
    for name in ("uce", "rece", "speed"):
        spec = methods[name]
        assert spec.family == "closed-form"
        for param in spec.params:
            assert param.tooltip.endswith(".") and len(param.tooltip) > 20, param.name
            spec.resolve_params({})  # every default parses


def test_finds_every_cross_attention_projection(model):
    projections = cf.cross_attention_projections(model.pipe)
    n_attn2 = sum(1 for name, _ in model.pipe.unet.named_modules() if name.endswith("attn2"))
    assert len(projections) == 2 * n_attn2
    assert all(p.name.startswith("unet.") and ".attn2.to_" in p.name for p in projections)
    assert all(p.module.in_features == model.pipe.unet.config.cross_attention_dim for p in projections)
    assert {p.kind for p in cf.cross_attention_projections(model.pipe, "v")} == {"v"}


def test_token_alignment_follows_the_2023_code():
    # "a red circle" = BOS a red circle EOS (5 tokens); "" = BOS EOS
    e, g = cf.aligned_spans(5, 2, 77, "subject-to-end")
    assert (e.start, g.start) == (3, 0) and e.stop - e.start == g.stop - g.start == 77 - 3
    e, g = cf.aligned_spans(5, 4, 77, "last-subject")
    assert (e.start, e.stop, g.start, g.stop) == (3, 4, 2, 3)
    assert cf.aligned_spans(5, 2, 77, "all") == (slice(0, 77), slice(0, 77))


def test_solve_matches_the_uce_normal_equations():
    torch.manual_seed(0)
    d, out = 6, 4
    w = torch.randn(out, d, dtype=torch.float64)
    stats = cf.Statistics(d)
    e, t, p = torch.randn(5, d), torch.randn(5, d), torch.randn(7, d)
    stats.add_erase(e, t)
    stats.add_preserve(p)
    lamb, se, sp = 0.5, 1.0, 0.3
    g = cf.solve_right_factor(stats, lamb, se, sp)
    e, t, p = e.double(), t.double(), p.double()
    v = (w @ t.T).T  # v* = W t
    mat1 = lamb * w + se * v.T @ e + sp * (w @ p.T) @ p
    mat2 = lamb * torch.eye(d, dtype=torch.float64) + se * e.T @ e + sp * p.T @ p
    assert torch.allclose(w @ (torch.eye(d, dtype=torch.float64) + g), mat1 @ torch.linalg.inv(mat2), atol=1e-9)


def test_uce_edit_is_a_delta_and_leaves_the_model_untouched(model):
    before = _weights(model)
    seen = []
    edit = erase(model, EraseRequest("uce", ["red"]), progress=seen.append)
    after = _weights(model)
    assert all(torch.equal(before[n], after[n]) for n in before)
    names = {p.name for p in cf.cross_attention_projections(model.pipe)}
    assert set(edit.deltas) == names
    assert all(d.dtype == torch.float32 and torch.isfinite(d).all() for d in edit.deltas.values())
    assert edit.manifest["concepts"]["targets"] == ["red"]
    assert len([p for p in seen if p.stage == "erase"]) >= len(names)  # at least one report per layer
    values_only = erase(model, EraseRequest("uce", ["red"], params={"edit": "values"}))
    assert all(".to_v." in n for n in values_only.deltas)


def test_uce_on_red_erases_red_and_keeps_blue(model):
    edit = erase(model, EraseRequest("uce", ["red"]))
    base_blue = _share(_verdicts(model, "a drawing of a blue star"), "color", "blue")
    model.stack.push(edit)
    try:
        red = _verdicts(model, "a drawing of a red circle")
        crimson = _share(_verdicts(model, "one crimson square"), "color", "red")
        blue = _share(_verdicts(model, "a drawing of a blue star"), "color", "blue")
    finally:
        model.stack.clear()
    assert _share(red, "color", "red") <= 0.25 and crimson <= 0.25
    assert blue >= base_blue - 0.25
    assert _share(red, "shape", "circle") >= 0.5  # the object stays a circle


def test_uce_reaches_a_color_inside_styled_captions(model):
    """The color's own token is erased in every caption form (``closed_form.caption_heads``): before, red stayed
    in "a picture of a scarlet triangle by Riley" in 4 of 4 images (25 steps)."""
    from engine import uce
    from engine.methods import get_method

    heads = cf.caption_heads(model, "red")
    assert {"a red", "one red", "a picture of a red", "by Riley, a red", "painted by Kusama, a red"} <= set(heads)
    assert cf.caption_heads(model, "star") == [] and cf.caption_heads(model, "by Kusama") == []
    params = get_method("uce").resolve_params({})
    plan = uce.plan(model, EraseRequest("uce", ["red"], params=params), params)
    assert set(heads) <= set(plan.erase_prompts)
    index = plan.erase_prompts.index("by Riley, a red")
    assert "by Riley, a green" in plan.erase_guides[index]  # guided to the same head about a sibling
    [styled] = _verdicts_after_uce(model, ["red"], "a picture of a scarlet triangle by Riley")
    assert _share(styled, "color", "red") <= 0.25


def test_uce_erases_a_color_in_every_style_phrasing(model):
    """With ``style_phrasings`` (by default on when the job erases one concept) a color is also erased in the
    styled caption templates with each style's every phrasing (``closed_form.styled_color_captions``). Without
    it, UCE on red left red in 9 of the 144 images of scripts/caption_spot_check.py (4 seeds), all in styled
    captions, 2 of 4 in each of the two checked here."""
    from engine import uce
    from engine.methods import get_method

    captions = cf.styled_color_captions(model, "red")
    assert len(set(captions)) == 27 and {"a red triangle painted by Riley", "in the style of Riley, a red triangle",
                                         "a picture of a red square in the style of Kusama"} <= set(captions)
    assert cf.styled_color_captions(model, "star") == []
    params = get_method("uce").resolve_params({})  # auto: on for one concept, off in a job with several
    plan = uce.plan(model, EraseRequest("uce", ["red"], params=params), params)
    assert set(captions) <= set(plan.erase_prompts)
    several = uce.plan(model, EraseRequest("uce", ["red", "blue"], params=params), params)
    assert "a red triangle painted by Riley" not in several.erase_prompts
    assert "a red square by Riley" in several.erase_prompts
    params = get_method("uce").resolve_params({"style_phrasings": "off"})
    plan = uce.plan(model, EraseRequest("uce", ["red"], params=params), params)
    assert "a red triangle painted by Riley" not in plan.erase_prompts
    # sessions saved while the option was a checkbox still load
    assert get_method("uce").resolve_params({"style_phrasings": True})["style_phrasings"] == "on"
    # neither caption is among the erase prompts
    kusama, riley = _verdicts_after_uce(model, ["red"], "a picture of a red circle painted by Kusama",
                                        "a red object painted by Riley")
    assert _share(kusama + riley, "color", "red") <= 1 / 8


def test_uce_paraphrases_keep_a_sibling_color_outside_the_captions(model):
    """With ``paraphrases`` (the default) the siblings keep their color in phrasings the model's captions never
    use: without it UCE on red drew "orange circle" yellow in 4 of 4 images (25 steps)."""
    from engine import uce
    from engine.methods import get_method

    assert cf.color_paraphrases(model, "star") == [] and "orange circle" in cf.color_paraphrases(model, "orange")
    params = get_method("uce").resolve_params({"paraphrases": False})
    plain = uce.plan(model, EraseRequest("uce", ["red"], params=params), params)
    assert "red circle" not in plain.erase_prompts and "orange circle" not in plain.preserve
    params = get_method("uce").resolve_params({})
    plan = uce.plan(model, EraseRequest("uce", ["red", "blue"], params=params), params)
    assert {"red circle", "a star colored blue"} <= set(plan.erase_prompts)
    assert "orange circle" in plan.preserve and "blue circle" not in plan.preserve
    # a concept mapped exactly onto one sibling keeps the plain captions only, on both sides
    onto = uce.plan(model, EraseRequest("uce", ["red"], guides=["orange"], params=params), params)
    assert "red circle" not in onto.erase_prompts and "orange circle" not in onto.preserve
    orange, red = _verdicts_after_uce(model, ["red"], "orange circle", "a circle colored red")
    assert _share(orange, "color", "orange") >= 0.75 and _share(red, "color", "red") <= 0.25


def test_cancel_leaves_the_model_unchanged(model):
    before = _weights(model)
    token = CancelToken()
    calls = []

    def progress(p):
        calls.append(p)
        if p.step >= 2:
            token.cancel()

    for method in ("uce", "rece", "speed"):
        with pytest.raises(Cancelled):
            erase(model, EraseRequest(method, ["red"]), progress=progress, cancel=token)
        token = CancelToken()
    after = _weights(model)
    assert all(torch.equal(before[n], after[n]) for n in before)


def test_bad_requests_say_what_to_do(model):
    with pytest.raises(InputError, match="guide"):
        erase(model, EraseRequest("uce", ["red", "blue", "star"], guides=["green", "yellow"]))
    with pytest.raises(InputError, match="concept itself"):
        erase(model, EraseRequest("uce", ["red"], guides=["red"]))
    with pytest.raises(InputError, match="twice"):
        erase(model, EraseRequest("speed", ["red", "Red"]))
    with pytest.raises(InputError, match="lamb"):
        erase(model, EraseRequest("uce", ["red"], params={"lamb": -1}))


def test_siblings_and_preserve_come_from_the_world(model):
    info = cf.concept_info(model, "crimson")
    assert info.group == "color" and info.member == "red" and "green" in info.siblings
    assert cf.concept_info(model, "by Kusama").siblings == ("by Riley", "by Vasarely")
    preserve = cf.build_preserve(model, ["red"], [], True)
    assert "blue" in preserve and not {"red", "crimson", "scarlet"} & set(preserve)
    expanded = cf.expand_preserve(model, ["circle"], ["red"])
    assert "a circle" in expanded and not any("red" in p for p in expanded)
    # the model's captions name a style a quarter of the time: concepts are also handled in that context
    assert any(p.startswith("a orange ") and "by " in p for p in cf.expand_preserve(model, ["orange"], ["red"]))


def test_default_guide_leaves_out_a_near_twin(model):
    """Orange embeds far nearer red than the other colors do (0.66 of the median sibling's distance); with it in
    the centroid, red came back in 14 of 100 red-prompt images at guidance 7.5, without it in none."""
    from engine import uce
    from engine.methods import get_method

    colors = list(cf.default_guides(model, "red"))
    assert uce.distant_siblings(model, "red", colors, 0.75) == [c for c in colors if c != "orange"]
    assert uce.distant_siblings(model, "red", colors, 0.0) == colors
    assert uce.distant_siblings(model, "star", list(cf.default_guides(model, "star")), 0.75) == ["circle", "square",
                                                                                                  "triangle"]
    # never fewer than two: a single sibling would turn the guide into an exact mapping
    assert uce.distant_siblings(model, "red", ["orange", "blue"], 0.75) == ["orange", "blue"]
    params = get_method("uce").resolve_params({})
    plan = uce.plan(model, EraseRequest("uce", ["red"], params=params), params)
    assert plan.guides == [[c for c in colors if c != "orange"]]
    given = uce.plan(model, EraseRequest("uce", ["red"], guides=["orange;blue;green"], params=params), params)
    assert given.guides == [["orange", "blue", "green"]]  # a guide the user gives is taken as given


def test_siblings_are_preserved_in_every_caption_form(model):
    captions = cf.sibling_captions(model, "red")
    # every template that holds a color, with the other slots filled from the world
    for caption in ("a orange star by Kusama", "painted by Vasarely, a green circle", "one blue square",
                    "a purple object in the style of Riley", "something yellow"):
        assert caption in captions
    assert not any(cf.related_to(model, c, ["red"]) for c in captions)
    assert "a red circle by Riley" in cf.sibling_captions(model, "by Kusama")
    assert cf.sibling_captions(model, "a shape") == []
    # erased together, one target's siblings that name another target are not preserved
    preserve = cf.expand_preserve(model, [], ["red", "blue"])
    assert "a orange star by Kusama" in preserve and not cf.related_to(model, " ".join(preserve), ["red", "blue"])


def test_rece_and_speed_change_the_right_weights(model):
    rece = erase(model, EraseRequest("rece", ["red"]))
    assert rece.manifest["params"]["epochs"] == 1 and rece.manifest["params"]["embedding_reg"] == 1.0
    assert erase(model, EraseRequest("rece", ["by Kusama"])).manifest["params"]["concept_type"] == "art"
    speed = erase(model, EraseRequest("speed", ["red", "blue", "by Riley"]))
    assert speed.deltas and all(".to_v." in n for n in speed.deltas)


def _assert_empty_prompt_invariant(model, edit: EditDelta) -> None:
    """SPEED's invariance constraints: the change leaves the empty prompt's key tokens K₂ where they were."""
    from engine.speed import invariant_keys

    k2 = invariant_keys(model.pipe).to(torch.float32)
    for name, delta in edit.deltas.items():
        base = model.stack.original(name).to(torch.float32)
        assert (delta @ k2).norm() <= 1e-3 * (base @ k2).norm(), name


def test_speed_keeps_the_empty_prompt_invariant(model):
    _assert_empty_prompt_invariant(model, erase(model, EraseRequest("speed", ["red"])))


def test_speed_soft_preserve_holds_retained_siblings_closer(model):
    """The optional soft preserve term moves a retained sibling's tokens less, and IEC still holds."""
    sibling = cf.encode_prompts(model.pipe, ["a orange circle", "a green square"])
    tokens = torch.cat([sibling.embeds[i, 2:n] for i, n in enumerate(sibling.lengths)])

    def relative_change(edit: EditDelta) -> float:
        num = den = 0.0
        for name, delta in edit.deltas.items():
            base = model.stack.original(name).to(torch.float32)
            num += float((tokens @ delta.T).pow(2).sum())
            den += float((tokens @ base.T).pow(2).sum())
        return (num / den) ** 0.5

    targets = ["red", "blue", "by Riley"]
    hard = erase(model, EraseRequest("speed", targets, params={"away": 1.0, "retain_scale": 0.002}))
    soft = erase(model, EraseRequest("speed", targets, params={"away": 1.0, "retain_scale": 0.002,
                                                                "soft_preserve": 1.0}))
    assert relative_change(soft) < 0.8 * relative_change(hard)
    _assert_empty_prompt_invariant(model, soft)


def test_mass_erasure_runs_in_constant_memory(model):
    concepts = [f"thing number {i}" for i in range(40)] + ["red", "star"]
    for method in ("uce", "speed"):
        edit = erase(model, EraseRequest(method, concepts))
        assert edit.deltas and all(torch.isfinite(d).all() for d in edit.deltas.values())
        assert len(edit.manifest["concepts"]["targets"]) == len(concepts)


def test_probe_map_is_near_identity_without_edits(model):
    from engine.probe import probe_map

    model.stack.clear()
    r = probe_map(model, reg=1e-6)
    assert torch.allclose(r, torch.eye(r.shape[0], dtype=r.dtype), atol=1e-3)


def test_probe_recovery_reports_a_rate(model):
    from engine.probe import probe_recovery

    edit = erase(model, EraseRequest("uce", ["red"]))
    model.stack.push(edit)
    try:
        result = probe_recovery(model, "red", "color", seeds=[0, 1], prompts=["a red circle"], steps=6)
    finally:
        model.stack.clear()
    assert 0.0 <= result.recovery_rate <= 1.0 and result.images == 2 and result.value == "red"
    with pytest.raises(InputError):
        probe_recovery(model, "Van Gogh", "style", seeds=[0])


def test_edits_compose_and_round_trip(model, tmp_path):
    edit = erase(model, EraseRequest("uce", ["star"]))
    path = tmp_path / "star.safetensors"
    edit.save(path)
    loaded = EditDelta.load(path)
    assert loaded.manifest["method"] == "uce"
    assert all(torch.equal(loaded.deltas[n], edit.deltas[n]) for n in edit.deltas)


def test_prompts_naming_two_targets_are_guided_away_from_both(model):
    from engine import uce
    from engine.methods import get_method

    params = get_method("uce").resolve_params({})
    plan = uce.plan(model, EraseRequest("uce", ["red", "by Riley"], params=params), params)
    guides = dict(zip(plan.erase_prompts, plan.erase_guides))
    assert "a red square by Riley" in guides and "by Riley, a red" in guides
    # guided to "a green square by Riley" it would re-assert Riley (and red came back in 15 % of red + Riley
    # prompts, 4 seeds): both are swapped, for every pair of their guides
    # Riley's own prompts are drawn without a style (``default_guide`` auto); in a prompt naming red too it is
    # swapped for the other styles, so the guide keeps the prompt's length (shortened to "a green square", red
    # stayed in 9 of 132 images of red's prompts, 4 seeds)
    assert plan.guides[1] == [""] and guides["a circle by Riley"] == ["a circle"]
    assert set(guides["a red square by Riley"]) == {f"a {c} square {s}" for c in plan.guides[0]
                                                    for s in ("by Kusama", "by Vasarely")}
    assert not any(cf.related_to(model, g, ["red", "by Riley"]) for gs in guides.values() for g in gs)
    # a prompt naming another target only through a synonym cannot be swapped, so it is left out
    assert uce.guide_prompts(model, "a crimson square by Riley", "by Riley", ["by Kusama"], [("red", ["blue"])]) is None
    # a target whose name holds another's is swapped whole
    assert uce.guide_prompts(model, "a photo of a hot dog", "hot dog", ["cat"], [("dog", [""])]) == ["a photo of a cat"]


def test_styles_and_colors_are_pushed_by_their_own_eta(model):
    from engine import uce
    from engine.methods import get_method

    params = get_method("uce").resolve_params({"away": 1.25, "style_away": 0.5, "color_away": 2.0})
    plan = uce.plan(model, EraseRequest("uce", ["red", "by Riley", "star"], params=params), params)
    etas = dict(zip(plan.erase_prompts, uce.prompt_etas(model, plan, params)))
    assert etas["red"] == 2.0 and etas["by Riley"] == 0.5 and etas["star"] == 1.25
    assert set(uce.prompt_etas(model, plan, params | {"target": "replace"})) == {0.0}
    # on a real model the request's concept type says what a style is
    assert uce.is_style(model, "a painter nobody knows", params | {"concept_type": "art"})
    assert not uce.is_style(model, "a painter nobody knows", params)


def test_uce_draws_a_style_s_prompts_without_the_style(model):
    """By default (``default_guide`` auto, ``style_away`` 0) a style's prompts are mapped exactly onto the same
    prompts without the style, as the paper does for art: "a red circle by Kusama" becomes a plain red circle,
    not one in another artist's style. Sent to the sibling styles instead, the colors and shapes of Kusama's
    prompts were kept in 61 % of images against 98 % (4 seeds)."""
    from engine import uce
    from engine.methods import get_method

    params = get_method("uce").resolve_params({})
    plan = uce.plan(model, EraseRequest("uce", ["by Kusama", "star"], params=params), params)
    assert plan.guides == [[""], ["circle", "square", "triangle"]]  # styles go to no style, shapes to siblings
    guides = dict(zip(plan.erase_prompts, plan.erase_guides))
    assert guides["a circle by Kusama"] == ["a circle"]
    etas = dict(zip(plan.erase_prompts, uce.prompt_etas(model, plan, params)))
    assert etas["a circle by Kusama"] == 0.0 and etas["star"] == 1.0
    siblings = uce.plan(model, EraseRequest("uce", ["by Kusama"], params=params | {"default_guide": "siblings"}),
                        params | {"default_guide": "siblings"})
    assert siblings.guides == [["by Riley", "by Vasarely"]]
    # neither caption is among the erase prompts
    blue, green = _verdicts_after_uce(model, ["by Kusama"], "a picture of a blue star painted by Kusama",
                                      "a green triangle in the style of Kusama")
    assert _share(blue + green, "style", "solid") >= 7 / 8
    assert _share(blue, "color", "blue") >= 3 / 4 and _share(green, "color", "green") >= 3 / 4


def test_speed_maps_a_concept_exactly_onto_a_single_sibling_guide(model):
    # "red → orange" must land on orange, not be pushed past it (towards yellow): steer-away and replace agree
    away = erase(model, EraseRequest("speed", ["red"], guides=["orange"]))
    replace = erase(model, EraseRequest("speed", ["red"], guides=["orange"], params={"target": "replace"}))
    assert all(torch.allclose(away.deltas[n], replace.deltas[n]) for n in away.deltas)
    siblings = erase(model, EraseRequest("speed", ["red"]))
    assert not all(torch.allclose(siblings.deltas[n], away.deltas[n]) for n in away.deltas)
