"""SLD: the inference-only edit, its guidance loop, strength, several entries, cancel, round trip."""

from __future__ import annotations

import numpy as np
import pytest

from engine.edits import EditDelta
from engine.generate import GenerationRequest, generate
from engine.jobs import Cancelled, CancelToken, InputError
from engine.judge import judge_images
from engine.methods import EraseRequest, erase, get_method
from engine.sld import PRESETS, SldSettings, generate_with_sld

SEEDS = [0, 1, 2, 3]


def pixels(images) -> list[np.ndarray]:
    return [np.asarray(im).astype(np.int16) for im in images]


@pytest.fixture
def model(builtin_model):
    yield builtin_model
    builtin_model.stack.clear()


def sld_edit(model, concept: str = "red", **params) -> EditDelta:
    return erase(model, EraseRequest("sld", [concept], params=params))


def test_edit_is_inference_only_with_preset_values(model):
    spec = get_method("sld")
    assert spec.family == "inference" and not spec.exportable
    assert all(p.tooltip.endswith(".") for p in spec.params)
    edit = sld_edit(model)
    assert edit.deltas == {} and edit.is_inference_only
    inference = edit.manifest["inference"]
    assert inference["concept"] == "red" and inference["preset"] == "strong"
    assert {k: inference[k] for k in PRESETS["strong"]} == PRESETS["strong"]
    tuned = sld_edit(model, preset="weak", sld_guidance_scale=50.0, warmup_steps=0.0)
    assert tuned.manifest["inference"]["sld_guidance_scale"] == 50.0
    assert tuned.manifest["inference"]["warmup_steps"] == 0.0
    assert tuned.manifest["inference"]["threshold"] == PRESETS["weak"]["threshold"]
    with pytest.raises(InputError, match="preset"):
        sld_edit(model, preset="extreme")


def test_direction_is_measured_from_the_siblings_where_known(model):
    red = sld_edit(model).manifest["inference"]["reference"]
    assert red == ["green", "blue", "yellow", "purple", "orange"]
    both = erase(model, EraseRequest("sld", ["red", "crimson", "blue"])).manifest["inference"]["reference"]
    assert both == ["green", "yellow", "purple", "orange"]
    assert sld_edit(model, "a lighthouse").manifest["inference"]["reference"] == [""]
    assert sld_edit(model, direction="empty").manifest["inference"]["reference"] == [""]
    # edits made before the options existed keep the paper's direction and mask
    inference = dict(sld_edit(model).manifest["inference"])
    assert inference["mask"] == "symmetric" and inference["mask_width"] == 0.3 and inference["gate"] == "siblings"
    assert SldSettings.from_manifest(inference, 1.0).gated
    del inference["reference"], inference["mask"], inference["gate"]
    settings = SldSettings.from_manifest(inference, 1.0)
    assert settings.reference == ("",) and settings.mask == "signed" and settings.gate == "none"
    assert not SldSettings.from_manifest({**inference, "gate": "siblings"}, 1.0).gated  # no siblings: no gate


def test_mask_width_defaults_by_gate(model):
    """The wider mask is the default only where the gate keeps the guidance off images that are not about the concept."""
    assert sld_edit(model, gate="none").manifest["inference"]["mask_width"] == 0.1
    assert sld_edit(model, direction="empty").manifest["inference"]["mask_width"] == 0.1  # no siblings, no gate
    assert sld_edit(model, mask_width=0.2).manifest["inference"]["mask_width"] == 0.2


def test_warmup_is_scaled_to_the_step_count():
    weak = SldSettings("x", **PRESETS["weak"])
    assert weak.warmup_for(50) == 15 and weak.warmup_for(25) == 8 and weak.warmup_for(10) == 3
    assert SldSettings("x", **PRESETS["max"]).warmup_for(25) == 0
    # the gate is decided when STRONG's warm-up ends, and delays guidance for a preset without one
    strong = SldSettings("x", **PRESETS["strong"], reference=("y", "z"), gate="siblings")
    assert strong.first_guided_step(25) == strong.warmup_for(25) == 4 and list(strong.gate_steps(25)) == [4, 5, 6]
    assert SldSettings("x", **PRESETS["max"], reference=("y", "z"), gate="siblings").first_guided_step(25) == 4


def test_strength_zero_is_identical_to_no_sld(model):
    request = GenerationRequest("a red circle", seeds=SEEDS, steps=10)
    plain = pixels(generate(model, request))
    model.stack.push(sld_edit(model), 0.0)
    assert all(np.array_equal(a, b) for a, b in zip(plain, pixels(generate(model, request))))


def test_manual_loop_matches_the_pipeline_when_guidance_is_inactive(model):
    """With the safety term masked everywhere (threshold far below any difference) the hand-written
    loop must reproduce the pipeline's images, so every change SLD makes comes from the guidance."""
    request = GenerationRequest("a blue star", seeds=SEEDS[:2], steps=10)
    plain = pixels(generate(model, request))
    model.stack.push(sld_edit(model, mask="signed", threshold=0.0, momentum_scale=0.0), 1.0)
    model.stack.entries[-1].edit.manifest["inference"]["threshold"] = -1e9  # mask every element
    masked = pixels(generate(model, request))
    assert all(np.abs(a - b).max() <= 2 for a, b in zip(plain, masked))


def test_strong_sld_steers_away_from_red_but_keeps_blue(model):
    red = GenerationRequest("a red circle", seeds=SEEDS, steps=15)
    blue = GenerationRequest("a blue square", seeds=SEEDS, steps=15)
    base_red = [v.color for v in judge_images(generate(model, red))].count("red")
    base_blue = [v.color for v in judge_images(generate(model, blue))]
    model.stack.push(sld_edit(model, preset="strong"), 1.0)
    after_red = [v.color for v in judge_images(generate(model, red))].count("red")
    after_blue = [v.color for v in judge_images(generate(model, blue))]
    assert base_red >= 3 and after_red <= base_red - 2, (base_red, after_red)
    assert sum(a == b for a, b in zip(after_blue, base_blue)) >= 3


def test_symmetric_mask_spares_an_unrelated_prompt(model):
    """The paper's signed mask guides unrelated prompts wherever the concept's prediction is the larger, which
    adds a one-sided half of the concept's direction to them (here it wipes the image); the symmetric mask
    does not."""
    request = GenerationRequest("a yellow triangle by Riley", seeds=SEEDS, steps=15)

    def verdicts() -> list[tuple[str, str, str]]:
        return [(v.color, v.shape, v.style) for v in judge_images(generate(model, request))]

    base = verdicts()
    model.stack.push(sld_edit(model, gate="none"), 1.0)  # the mask alone, without the gate
    symmetric = verdicts()
    model.stack.clear()
    model.stack.push(sld_edit(model, mask="signed", gate="none"), 1.0)
    signed = verdicts()
    kept = [sum(a == b for a, b in zip(after, base)) for after in (symmetric, signed)]
    assert kept[0] >= 3 and kept[0] > kept[1], (base, symmetric, signed)


def test_gate_keeps_a_sibling_the_mask_alone_steers(model):
    """Orange's prediction is element-wise as close to red's as red prompts' own, so the mask alone guides it too
    (drawn yellow); the gate sees that it leans to orange, not red, and leaves it alone. Red is still steered."""
    orange = GenerationRequest("an image of a orange circle", seeds=SEEDS, steps=15)
    red = GenerationRequest("a red circle", seeds=SEEDS, steps=15)

    def colors(request: GenerationRequest) -> list[str]:
        return [v.color for v in judge_images(generate(model, request))]

    base = colors(orange)
    model.stack.push(sld_edit(model, gate="none"), 1.0)
    ungated = colors(orange)
    model.stack.clear()
    model.stack.push(sld_edit(model), 1.0)
    gated = colors(orange)
    kept = [sum(a == b for a, b in zip(after, base)) for after in (gated, ungated)]
    assert base.count("orange") >= 3 and kept[0] >= 3 and kept[0] > kept[1], (base, gated, ungated)
    assert colors(red).count("red") <= 1


def test_several_entries_combine_and_strength_scales(model):
    request = GenerationRequest("a red circle", seeds=SEEDS[:2], steps=10)
    model.stack.push(sld_edit(model, "red", preset="medium"), 1.0)
    one = pixels(generate(model, request))
    model.stack.set_strength(0, 2.0)
    doubled = pixels(generate(model, request))
    assert any(not np.array_equal(a, b) for a, b in zip(one, doubled))
    model.stack.set_strength(0, 1.0)
    model.stack.push(sld_edit(model, "circle", preset="medium"), 1.0)
    both = pixels(generate(model, request))
    assert any(not np.array_equal(a, b) for a, b in zip(one, both))
    assert len(model.stack.inference_entries()) == 2


def test_cancel_stops_sld_sampling(model):
    model.stack.push(sld_edit(model), 1.0)
    token = CancelToken()
    steps: list[int] = []

    def progress(p) -> None:
        steps.append(p.step)
        if p.step >= 2:
            token.cancel()

    with pytest.raises(Cancelled):
        generate(model, GenerationRequest("a red circle", seeds=SEEDS[:1], steps=20), progress, token)
    assert max(steps) <= 3


def test_round_trip_through_a_file(model, tmp_path):
    edit = sld_edit(model, preset="max")
    path = tmp_path / "sld.safetensors"
    edit.save(path)
    loaded = EditDelta.load(path)
    assert loaded.is_inference_only and loaded.manifest["inference"] == edit.manifest["inference"]
    request = GenerationRequest("a red circle", seeds=SEEDS[:2], steps=8)
    model.stack.push(edit, 1.0)
    first = pixels(generate(model, request))
    model.stack.clear()
    model.stack.push(loaded, 1.0)
    assert all(np.array_equal(a, b) for a, b in zip(first, pixels(generate(model, request))))


def test_generate_with_sld_without_entries_is_the_pipeline(model):
    from engine.generate import initial_latents

    pipe = model.pipe
    common = {"prompt": ["a green star"], "negative_prompt": None, "num_inference_steps": 5, "guidance_scale": 5.0,
                  "height": 64, "width": 64, "latents": initial_latents(pipe, [7], 64, 64), "output_type": "pil"}
    calls: list[int] = []

    def on_step(p, i, t, kwargs):
        calls.append(i)
        return kwargs

    images = generate_with_sld(pipe, [], common, on_step)
    assert len(images) == 1 and calls == list(range(5))


def test_eval_probe_is_not_run_on_an_sld_only_stack(model):
    """The probe inverts weight edits; for SLD, which changes no weights, eval says so instead of a rate."""
    from engine.probe import probe_skip_reason

    assert probe_skip_reason(model.stack) is None  # unedited: the probe's rate is the plain accuracy
    model.stack.push(sld_edit(model))
    assert "steer sampling (SLD)" in probe_skip_reason(model.stack)
    model.stack.set_strength(0, 0.0)
    assert probe_skip_reason(model.stack) is None
