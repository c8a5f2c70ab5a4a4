"""ESD on the built-in model: parameter sets, erasure, cancel safety, edit round trip.

Short runs only (tens of iterations, few sampling steps, 4 seeds); the full-size numbers are
measured by the evaluation command, not here.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from engine import closed_form as cf
from engine.closed_form import encode_prompts
from engine.edits import EditDelta
from engine.esd import project_text_deltas, projection_factor, trainable_names, trajectory_prompts
from engine.generate import GenerationRequest, generate
from engine.jobs import Cancelled, CancelToken, Progress
from engine.judge import judge_images
from engine.methods import EraseRequest, all_methods, erase

SEEDS = [0, 1, 2, 3]
# Small but real: 20 iterations from 8 sampling runs of 20 DDIM steps.
FAST = {"iterations": 30, "ddim_steps": 20, "trajectories": 8, "batch_size": 2, "lr": 3e-3, "negative_guidance": 4.0}


def weights_hash(model) -> str:
    digest = hashlib.sha256()
    for component in (model.pipe.unet, model.pipe.text_encoder):
        for name, param in component.state_dict().items():
            digest.update(name.encode())
            digest.update(param.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def colors(model, prompt: str) -> list[str]:
    images = generate(model, GenerationRequest(prompt, seeds=SEEDS, steps=12))
    return [v.color for v in judge_images(images)]


def pixels(images) -> list[np.ndarray]:
    return [np.asarray(im) for im in images]


@pytest.fixture
def model(builtin_model):
    yield builtin_model
    builtin_model.stack.clear()


def test_variants_registered_with_tooltips():
    methods = all_methods()
    for name in ("esd-x", "esd-x-strict", "esd-u"):
        spec = methods[name]
        assert spec.family == "fine-tune" and spec.exportable
        names = [p.name for p in spec.params]
        assert {"iterations", "lr", "negative_guidance", "start_guidance", "ddim_steps"} <= set(names)
        for p in spec.params:
            assert p.tooltip.endswith(".") and p.tooltip.count(". ") == 0, p.name
        assert spec.resolve_params({})["negative_guidance"] == 2.0


def test_parameter_sets(builtin_model):
    unet = builtin_model.pipe.unet
    x, strict, u = (trainable_names(unet, v, train_output=False) for v in ("esd-x", "esd-x-strict", "esd-u"))
    all_attn2 = {n for n, _ in unet.named_parameters() if ".attn2." in n}
    assert set(trainable_names(unet, "esd-x")) == all_attn2, "the paper's esd-x: every attn2 weight"
    assert set(x) == {n for n in all_attn2 if ".to_out." not in n}
    assert strict and all(".attn2.to_k." in n or ".attn2.to_v." in n for n in strict)
    assert set(strict) < set(x)
    assert u and not any("attn2" in n for n in u)
    assert "conv_in.weight" in u and not any("norm" in n.split(".")[-2] for n in u)


def test_esd_x_erases_red_and_leaves_model_untouched(model, tmp_path):
    before_hash = weights_hash(model)
    base_red = colors(model, "a red circle").count("red")
    base_blue = colors(model, "a blue square")
    reports: list[Progress] = []
    edit = erase(model, EraseRequest("esd-x", ["red"], params=dict(FAST)), progress=reports.append)
    assert weights_hash(model) == before_hash, "running a method must not write the model's weights"
    assert {r.stage for r in reports} == {"esd-x"}
    steps = [r.step for r in reports]
    assert steps == sorted(steps) and steps[-1] == reports[-1].total
    assert any(r.eta_s is not None for r in reports)

    assert edit.method == "esd-x" and edit.manifest["concepts"]["targets"] == ["red"]
    assert set(edit.deltas) == {f"unet.{n}" for n in trainable_names(model.pipe.unet, "esd-x", train_output=False)}
    assert all(d.dtype == torch.float32 for d in edit.deltas.values())
    assert any(float(d.abs().max()) > 0 for d in edit.deltas.values())

    model.stack.push(edit, 1.0)
    after_red = colors(model, "a red circle").count("red")
    after_blue = colors(model, "a blue square")
    assert base_red >= 3 and after_red <= base_red - 2, (base_red, after_red)
    assert sum(c == b for c, b in zip(after_blue, base_blue)) >= 3, "an unrelated color must survive"
    edited = pixels(generate(model, GenerationRequest("a red star", seeds=SEEDS[:2], steps=8)))

    # Round trip through a file gives the same images.
    path = tmp_path / "esd.safetensors"
    edit.save(path)
    model.stack.remove(-1)
    assert weights_hash(model) == before_hash
    model.stack.push(EditDelta.load(path), 1.0)
    again = pixels(generate(model, GenerationRequest("a red star", seeds=SEEDS[:2], steps=8)))
    assert all(np.array_equal(a, b) for a, b in zip(edited, again))
    model.stack.remove(-1)
    assert weights_hash(model) == before_hash


def test_preserve_projection_keeps_the_concept_and_spares_its_siblings(builtin_model):
    """A key/value change is kept on red's tokens and taken off orange's and blue's; other layers are untouched."""
    factor = projection_factor(builtin_model, ["red"], [], 0.1)
    delta = torch.randn(64, factor.shape[0], generator=torch.Generator().manual_seed(0))
    names = ("unet.down.attn2.to_k.weight", "unet.down.attn2.to_q.weight")
    projected = project_text_deltas(dict.fromkeys(names, delta), factor)
    assert torch.equal(projected[names[1]], delta)
    enc = encode_prompts(builtin_model.pipe, ["a red circle", "a crimson star by Kusama", "a orange star by Kusama",
                                              "a orange circle", "a blue square"])
    kept = []
    for i in range(5):
        token = enc.embeds[i, enc.subject_index(i)]
        kept.append(float((projected[names[0]] @ token).norm() / (delta @ token).norm()))
    assert min(kept[:2]) > 0.4, kept  # red and its synonym keep most of the change
    assert max(kept[2:4]) < 0.25 and kept[4] < 0.1, kept  # its nearest sibling and a far one lose most of it


def test_preserve_projection_keeps_the_change_on_extra_concept_prompts(builtin_model):
    """With ``caption_forms`` the forms trained on count as the concept's tokens too: the change on red inside a
    styled caption is then kept, where the plain projection takes most of it off."""
    forms = [caption for caption, _ in cf.caption_forms(builtin_model, "red")]
    plain = projection_factor(builtin_model, ["red"], [], 0.1)
    with_forms = projection_factor(builtin_model, ["red"], [], 0.1, forms)
    delta = torch.randn(64, plain.shape[0], generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    enc = encode_prompts(builtin_model.pipe, ["by Vasarely, a scarlet circle"])
    token = enc.embeds[0, 5].to(torch.float64)  # "scarlet": BOS by vasarely , a scarlet
    kept = [float((delta @ f @ token).norm() / (delta @ token).norm()) for f in (plain, with_forms)]
    assert kept[1] > 0.6 and kept[1] > kept[0] + 0.2, kept


def test_trajectories_keep_half_for_the_bare_concept_with_caption_forms():
    """Without forms the targets take turns (the paper); with them every other trajectory is a form, in turn."""
    assert trajectory_prompts(5, 2, 0) == [0, 1, 0, 1, 0]
    assert trajectory_prompts(8, 1, 44) == [0, 1, 0, 2, 0, 3, 0, 4]
    assert trajectory_prompts(8, 2, 3) == [0, 2, 1, 3, 0, 4, 1, 2]


def test_caption_forms_pair_each_caption_with_itself_without_the_color(builtin_model):
    """ESD-x's ``caption_forms``: every color caption form, pushed away from the same caption without the color."""
    forms = cf.caption_forms(builtin_model, "red")
    assert len(forms) == 44 and ("a red circle", "a circle") in forms
    assert ("by Riley, a red star", "by Riley, a star") in forms
    assert all("red" in caption and "red" not in without for caption, without in forms)
    assert cf.caption_forms(builtin_model, "star") == [] and cf.caption_forms(builtin_model, "by Kusama") == []
    params = {"iterations": 4, "ddim_steps": 6, "trajectories": 4, "batch_size": 2, "caption_forms": True}
    edit = erase(builtin_model, EraseRequest("esd-x", ["red"], params=params))
    assert edit.manifest["params"]["caption_forms"] is True
    assert all(torch.isfinite(d).all() for d in edit.deltas.values())


@pytest.mark.parametrize("variant,cancel_at", [("esd-x", 3), ("esd-u", 25)])
def test_cancel_leaves_model_bit_identical(model, variant, cancel_at):
    """Cancel during sampling (step 3) and during training (after the sampling steps)."""
    before = weights_hash(model)
    token = CancelToken()
    seen: list[int] = []

    def progress(p: Progress) -> None:
        seen.append(p.step)
        if p.step >= cancel_at:
            token.cancel()

    params = {"iterations": 30, "ddim_steps": 20, "trajectories": 4}
    with pytest.raises(Cancelled):
        erase(model, EraseRequest(variant, ["red"], params=params), progress=progress, cancel=token)
    assert max(seen) <= cancel_at + 1, "cancel must stop the method within one step"
    assert weights_hash(model) == before
    assert all(p.grad is None for p in model.pipe.unet.parameters())
    assert len(model.stack) == 0


def test_bad_parameters_are_refused(model):
    from engine.jobs import InputError

    with pytest.raises(InputError, match="iterations"):
        erase(model, EraseRequest("esd-x", ["red"], params={"iterations": 0}))
    with pytest.raises(InputError, match="concept"):
        erase(model, EraseRequest("esd-x", ["  "]))


def test_esd_runs_on_sd1_shaped_pipeline(tiny_sd1_pipeline):
    from engine.model import LoadedModel

    tiny = LoadedModel(pipe=tiny_sd1_pipeline, source="tiny", architecture="sd1", device="cpu",
                       dtype=torch.float32)
    # With a preserve prompt, so the extra frozen/student pass of the preservation loss runs too.
    edit = erase(tiny, EraseRequest("esd-x-strict", ["a cat"], preserve=["a dog"],
                                    params={"iterations": 3, "ddim_steps": 4, "trajectories": 2}))
    assert edit.deltas and all(".attn2.to_k." in n or ".attn2.to_v." in n for n in edit.deltas)
    tiny.stack.push(edit)
    tiny.stack.remove(-1)
