"""Concept Ablation (model-based) on the built-in model: red -> blue, inputs, cancel safety."""

from __future__ import annotations

import hashlib

import pytest
import torch

from engine.concept_ablation import fill, pair_anchors, parse_templates
from engine.edits import EditDelta
from engine.generate import GenerationRequest, generate
from engine.jobs import Cancelled, CancelToken, InputError
from engine.judge import judge_images
from engine.methods import EraseRequest, erase, get_method

SEEDS = [0, 1, 2, 3]
FAST = {"iterations": 30, "anchor_images": 8, "sample_steps": 8, "batch_size": 4, "lr": 3e-3}


def weights_hash(model) -> str:
    digest = hashlib.sha256()
    for name, param in model.pipe.unet.state_dict().items():
        digest.update(name.encode())
        digest.update(param.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


@pytest.fixture
def model(builtin_model):
    yield builtin_model
    builtin_model.stack.clear()


def test_registered_with_tooltips():
    spec = get_method("ca")
    assert spec.family == "fine-tune" and spec.uses_anchor and spec.exportable
    assert all(p.tooltip.endswith(".") for p in spec.params)
    assert spec.resolve_params({})["parameter_group"] == "kv"


def test_templates_and_anchors():
    assert parse_templates(" {} ; a picture of {} ;;") == ["{}", "a picture of {}"]
    assert fill("a picture of {}", "") == "a picture of"
    assert fill("{}, a star", "") == "a star"
    assert fill("a {} circle", "blue") == "a blue circle"
    with pytest.raises(InputError, match="exactly one"):
        parse_templates("a picture")
    with pytest.raises(InputError, match="exactly one"):
        parse_templates("{} and {}")
    assert pair_anchors(["red", "green"], []) == ["", ""]
    assert pair_anchors(["red", "green"], ["blue"]) == ["blue", "blue"]
    with pytest.raises(InputError, match="one anchor per target"):
        pair_anchors(["red", "green", "pink"], ["blue", "yellow"])


def test_anchor_equal_to_target_is_refused(model):
    before = weights_hash(model)
    with pytest.raises(InputError, match="anchor"):
        erase(model, EraseRequest("ca", ["red"], anchors=["Red"], params={"iterations": 2}))
    assert weights_hash(model) == before


def test_red_becomes_blue(model, tmp_path):
    before = weights_hash(model)
    request = GenerationRequest("a red square", seeds=SEEDS, steps=12)
    base = [v.color for v in judge_images(generate(model, request))]
    edit = erase(model, EraseRequest("ca", ["red"], anchors=["blue"], params=dict(FAST)))
    assert weights_hash(model) == before
    assert edit.manifest["concepts"] == {"targets": ["red"], "anchors": ["blue"]}
    assert edit.deltas and all(".attn2.to_k." in n or ".attn2.to_v." in n for n in edit.deltas)
    model.stack.push(edit, 1.0)
    after = [v.color for v in judge_images(generate(model, request))]
    assert base.count("red") >= 3
    assert after.count("blue") >= 3 and after.count("red") <= 1, (base, after)
    green = [v.color for v in judge_images(generate(model, GenerationRequest("a green circle", seeds=SEEDS,
                                                                                 steps=12)))]
    assert green.count("green") >= 3

    path = tmp_path / "ca.safetensors"
    edit.save(path)
    loaded = EditDelta.load(path)
    assert loaded.manifest["concepts"] == edit.manifest["concepts"]
    assert all(torch.equal(loaded.deltas[k], edit.deltas[k]) for k in edit.deltas)


def test_all_cross_attention_group_and_cancel(model):
    before = weights_hash(model)
    token = CancelToken()

    def progress(p) -> None:
        if p.step >= 6:  # past the 4 sampling steps: inside training
            token.cancel()

    params = {"iterations": 50, "anchor_images": 2, "sample_steps": 4, "parameter_group": "attn2"}
    with pytest.raises(Cancelled):
        erase(model, EraseRequest("ca", ["red"], anchors=[], params=params), progress=progress, cancel=token)
    assert weights_hash(model) == before
    assert all(p.grad is None for p in model.pipe.unet.parameters())
