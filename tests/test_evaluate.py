"""Evaluation on the built-in model: suite construction, concept resolution, and a real (small) run."""

import pytest

from engine.evaluate import EvalRequest, build_suite, case_mentions, compact_suite, evaluate, resolve_concept
from engine.jobs import InputError


def test_concepts_resolve_with_synonyms_and_phrasings():
    red = resolve_concept("Crimson")
    assert (red.kind, red.key, red.canonical) == ("color", "red", "red")
    assert "scarlet" in red.variants
    kusama = resolve_concept("in the style of Kusama")
    assert (kusama.kind, kusama.key, kusama.canonical) == ("style", "kusama", "by Kusama")
    assert resolve_concept("pentagram").key == "star"
    with pytest.raises(InputError):
        resolve_concept("a cat")


def test_compact_suite_has_targets_variants_and_others():
    cases = compact_suite(["red"], others=3)
    red = resolve_concept("red")
    kinds = [case_mentions(c, red) for c in cases]
    assert "canonical" in kinds and "variant" in kinds and kinds.count(None) == 3


def test_suite_covers_every_combination_and_variant():
    cases = build_suite()
    assert len({(c.color, c.shape, c.style) for c in cases if c.group == "combo"}) == 6 * 4 * 4
    red = resolve_concept("red")
    assert any(case_mentions(c, red) == "variant" for c in cases)
    assert {c.group for c in cases} == {"combo", "color-synonym", "shape-synonym", "style-phrasing", "bare"}


def test_evaluate_reports_specificity_and_restores_the_stack(builtin_model):
    import torch

    from engine.edits import EditDelta

    model = builtin_model
    name = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_v.weight"
    before = model.stack.original(name).clone()
    edit = EditDelta.create(model.pipe, {name: torch.zeros_like(before)}, "test", {"targets": ["red"]}, {})
    model.stack.push(edit, 1.0)
    try:
        cases = compact_suite(["red"], others=2)[::4]
        report = evaluate(model, EvalRequest(seeds=[0], steps=4, erased=["red"], cases=cases, use_cache=False))
    finally:
        model.stack.remove(-1)
    entry = report.erased["red"]
    # A zero delta changes nothing: the edited and unedited runs agree exactly.
    assert entry["efficacy"] == entry["efficacy_unedited"]
    assert report.specificity == 1.0
    assert set(report.specificity_by_kind) <= {"color", "shape", "style"}
    assert all(v == 1.0 for v in report.specificity_by_kind.values())
    # what the erased concept's prompts were drawn as instead, for its canonical word and its synonyms
    for key in ("target_outcomes", "generality_outcomes"):
        assert entry[key] and abs(sum(entry[key].values()) - 1.0) < 0.01
    assert torch.equal(model.pipe.unet.get_parameter(name[5:]), before)
