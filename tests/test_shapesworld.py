"""The world definition and the built-in model's tokenizer agree with world.json."""

import json

import numpy as np
import pytest

from engine.shapesworld import SHAPES, WORLD_JSON, load_world, render, sample_example, vocabulary_words

MODEL_DIR = WORLD_JSON.parent


def test_world_json_vocabulary():
    world = load_world()
    assert set(world["shapes"]) == set(SHAPES)
    assert {"red", "green", "blue", "yellow", "purple", "orange"} == set(world["colors"])
    assert all(len(spec["synonyms"]) >= 1 for spec in world["colors"].values())
    assert len(world["colors"]["red"]["synonyms"]) >= 2
    assert all(len(spec["phrasings"]) >= 2 for spec in world["styles"].values())
    assert sum(len(t) for t in world["templates"].values()) >= 6


def test_render_is_deterministic_and_in_frame():
    a = [render(sample_example(np.random.default_rng(7))[0], np.random.default_rng(8)) for _ in range(2)]
    assert np.array_equal(a[0], a[1])
    assert a[0].shape == (64, 64, 3) and a[0].dtype == np.uint8
    # Border pixels are background: the object is fully inside the frame.
    border = np.concatenate([a[0][0], a[0][-1], a[0][:, 0], a[0][:, -1]]).astype(int)
    assert (np.abs(border - 245) < 25).all()


def test_captions_include_empty_and_bare_ones():
    rng = np.random.default_rng(0)
    captions = [sample_example(rng)[1] for _ in range(2000)]
    assert 0.07 < captions.count("") / len(captions) < 0.13
    assert any(c in ("a circle", "a disk") for c in captions)


def test_model_folder_loads_with_plain_diffusers_and_tokenizer_covers_world_words():
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(str(MODEL_DIR / "tokenizer"), local_files_only=True)
    assert tokenizer.model_max_length == 77
    for word in vocabulary_words():
        assert len(tokenizer(word, add_special_tokens=False).input_ids) == 1, word
    config = json.loads((MODEL_DIR / "text_encoder" / "config.json").read_text())
    assert config["bos_token_id"] == tokenizer.bos_token_id
    assert config["eos_token_id"] == tokenizer.eos_token_id
    assert config["max_position_embeddings"] == 77
    assert (MODEL_DIR / "tokenizer" / "vocab.json").is_file() and (MODEL_DIR / "tokenizer" / "merges.txt").is_file()


@pytest.mark.slow
def test_model_folder_is_a_standard_stable_diffusion_pipeline():
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(MODEL_DIR), local_files_only=True)
    unet = pipe.unet.config
    assert unet.down_block_types[-1] == "DownBlock2D"
    assert all(t == "CrossAttnDownBlock2D" for t in unet.down_block_types[:-1])
    assert unet.up_block_types[0] == "UpBlock2D"
    size = sum(p.stat().st_size for p in MODEL_DIR.rglob("*") if p.is_file())
    assert size <= 50 * 1024 * 1024
