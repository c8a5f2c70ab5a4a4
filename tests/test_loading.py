"""Model loading: the LDM single-file key map, single-file checkpoints, clear errors, offline only."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.ldm_keys import pipeline_to_ldm_state_dict

# ---------------------------------------------------------------- the SD 1.5 original layout, written out by rule
RES = ["in_layers.0", "in_layers.2", "emb_layers.1", "out_layers.0", "out_layers.3"]
ATTN = ["norm", "proj_in", "proj_out"] + [f"transformer_blocks.0.{m}" for m in (
    "attn1.to_out.0", "ff.net.0.proj", "ff.net.2", "attn2.to_out.0", "norm1", "norm2", "norm3")]
ATTN_NOBIAS = [f"transformer_blocks.0.attn{a}.to_{p}" for a in (1, 2) for p in "qkv"]


def _wb(modules: list[str]) -> set[str]:
    return {f"{m}.{p}" for m in modules for p in ("weight", "bias")}


def sd15_unet_keys() -> set[str]:
    """SD 1.5's 686 UNet keys: input_blocks.0..11, middle_block.0..2, output_blocks.0..11, out, time_embed."""
    mods: list[str] = ["time_embed.0", "time_embed.2", "input_blocks.0.0", "out.0", "out.2"]
    keys: set[str] = set()

    def res(prefix: str, skip: bool) -> None:
        mods.extend(f"{prefix}.{m}" for m in RES + (["skip_connection"] if skip else []))

    def attn(prefix: str) -> None:
        mods.extend(f"{prefix}.{m}" for m in ATTN)
        keys.update(f"{prefix}.{m}.weight" for m in ATTN_NOBIAS)

    for i in (1, 2, 4, 5, 7, 8, 10, 11):
        res(f"input_blocks.{i}.0", skip=i in (4, 7))
        if i < 10:
            attn(f"input_blocks.{i}.1")
    mods.extend(f"input_blocks.{i}.0.op" for i in (3, 6, 9))
    res("middle_block.0", False)
    attn("middle_block.1")
    res("middle_block.2", False)
    for i in range(12):
        res(f"output_blocks.{i}.0", True)
        if i >= 3:
            attn(f"output_blocks.{i}.1")
    mods.extend(["output_blocks.2.1.conv", "output_blocks.5.2.conv", "output_blocks.8.2.conv"])
    keys |= _wb(mods)
    return {"model.diffusion_model." + k for k in keys}


def sd15_vae_keys() -> set[str]:
    """SD 1.5's 248 VAE keys (encoder.down.i.block.j, decoder.up.i.block.j, mid.block_1/attn_1/block_2, ...)."""
    vres = ["norm1", "conv1", "norm2", "conv2"]
    mods = ["quant_conv", "post_quant_conv"]
    for part in ("encoder", "decoder"):
        mods += [f"{part}.conv_in", f"{part}.norm_out", f"{part}.conv_out"]
        mods += [f"{part}.mid.block_{b}.{m}" for b in (1, 2) for m in vres]
        mods += [f"{part}.mid.attn_1.{m}" for m in ("norm", "q", "k", "v", "proj_out")]
    for i in range(4):
        for j in range(2):
            mods += [f"encoder.down.{i}.block.{j}.{m}" for m in vres]
        for j in range(3):
            mods += [f"decoder.up.{i}.block.{j}.{m}" for m in vres]
    mods += [f"encoder.down.{i}.downsample.conv" for i in range(3)]
    mods += [f"decoder.up.{i}.upsample.conv" for i in (1, 2, 3)]
    mods += ["encoder.down.1.block.0.nin_shortcut", "encoder.down.2.block.0.nin_shortcut",
             "decoder.up.0.block.0.nin_shortcut", "decoder.up.1.block.0.nin_shortcut"]
    return {"first_stage_model." + k for k in _wb(mods)}


def sd15_clip_keys(layers: int) -> set[str]:
    """CLIP-L under cond_stage_model.transformer.text_model (SD 1.5 has 12 layers; the tiny one has 2)."""
    mods = ["final_layer_norm"]
    for n in range(layers):
        mods += [f"encoder.layers.{n}.{m}" for m in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                                    "self_attn.out_proj", "layer_norm1", "layer_norm2", "mlp.fc1",
                                                    "mlp.fc2")]
    keys = _wb(mods) | {"embeddings.token_embedding.weight", "embeddings.position_embedding.weight"}
    return {"cond_stage_model.transformer.text_model." + k for k in keys}


def test_sd15_rule_has_the_real_key_counts() -> None:
    # v1-5-pruned-emaonly.safetensors: 686 UNet, 248 VAE and 196 CLIP weights (+ the position_ids buffer).
    assert (len(sd15_unet_keys()), len(sd15_vae_keys()), len(sd15_clip_keys(12))) == (686, 248, 196)


def test_tiny_sd1_maps_to_exactly_the_sd15_names(tiny_sd1_pipeline) -> None:
    ldm = pipeline_to_ldm_state_dict(tiny_sd1_pipeline)
    expected = sd15_unet_keys() | sd15_vae_keys() | sd15_clip_keys(2)
    assert set(ldm) == expected
    assert ldm["first_stage_model.encoder.mid.attn_1.q.weight"].ndim == 4  # 1x1 conv in the original VAE
    assert all(t.device.type == "cpu" and t.is_contiguous() for t in ldm.values())


def _assert_inverse(pipe, ldm: dict[str, torch.Tensor]) -> None:
    """diffusers' own LDM->diffusers conversion must give back every original tensor exactly."""
    from diffusers.loaders.single_file_utils import (
        convert_ldm_clip_checkpoint,
        convert_ldm_unet_checkpoint,
        convert_ldm_vae_checkpoint,
    )

    for converted, module in ((convert_ldm_unet_checkpoint(ldm, pipe.unet.config), pipe.unet),
                              (convert_ldm_vae_checkpoint(ldm, pipe.vae.config), pipe.vae)):
        reference = module.state_dict()
        assert set(converted) == set(reference)
        assert all(torch.equal(converted[k], reference[k]) for k in reference)
    text = {k.removeprefix("text_model."): v for k, v in convert_ldm_clip_checkpoint(ldm).items()}
    reference = pipe.text_encoder.state_dict()
    assert set(text) == {k for k in reference if not k.endswith("position_ids")}
    assert all(torch.equal(text[k], reference[k]) for k in text)


def test_ldm_map_is_inverted_exactly_by_diffusers(tiny_sd1_pipeline, builtin_model) -> None:
    for pipe in (tiny_sd1_pipeline, builtin_model.pipe):
        _assert_inverse(pipe, pipeline_to_ldm_state_dict(pipe))


def test_openclip_layout_round_trips() -> None:
    """SD 2's text encoder (1024 wide) is written in the OpenCLIP layout with fused in_proj."""
    from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint
    from transformers import CLIPTextConfig, CLIPTextModel

    from engine.ldm_keys import open_clip_to_ldm

    torch.manual_seed(0)
    model = CLIPTextModel(CLIPTextConfig(vocab_size=64, hidden_size=1024, intermediate_size=32,
                                         num_attention_heads=16, num_hidden_layers=2, max_position_embeddings=77,
                                         hidden_act="gelu"))
    ldm = open_clip_to_ldm(model.state_dict())
    assert "cond_stage_model.model.transformer.resblocks.1.attn.in_proj_weight" in ldm
    assert "cond_stage_model.model.positional_embedding" in ldm
    assert ldm["cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight"].shape == (3072, 1024)
    back = {k.removeprefix("text_model."): v for k, v in convert_open_clip_checkpoint(model, ldm).items()}
    reference = model.state_dict()
    assert set(back) == set(reference)
    assert all(torch.equal(back[k], reference[k]) for k in reference)


# ---------------------------------------------------------------- single files load offline, same images
def _images(pipe, steps: int = 2) -> torch.Tensor:
    generator = torch.Generator("cpu").manual_seed(0)
    out = pipe(["a red circle", "a cat"], num_inference_steps=steps, guidance_scale=5.0, generator=generator,
               output_type="pt").images
    return out


def _save_safetensors(pipe, path: Path) -> Path:
    from safetensors.torch import save_file

    save_file(pipeline_to_ldm_state_dict(pipe), str(path))
    return path


@pytest.mark.parametrize("which", ["tiny", "builtin"])
def test_from_single_file_reproduces_the_folder(which: str, tiny_sd1_dir: Path, tmp_path: Path) -> None:
    from diffusers import StableDiffusionPipeline

    from engine.model import BUILTIN_PATH, own_weights

    folder = tiny_sd1_dir if which == "tiny" else BUILTIN_PATH
    kwargs = {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}
    reference = StableDiffusionPipeline.from_pretrained(str(folder), local_files_only=True, **kwargs)
    file = _save_safetensors(reference, tmp_path / f"{which} model ü.safetensors")
    loaded = StableDiffusionPipeline.from_single_file(str(file), config=str(folder), local_files_only=True, **kwargs)
    for pipe in (reference, loaded):
        own_weights(pipe)  # the same weights at other byte offsets can differ in the last bit on some CPUs
        pipe.set_progress_bar_config(disable=True)
    assert torch.equal(_images(reference), _images(loaded))


# ---------------------------------------------------------------- load_model on single files
def _generate(model, steps: int = 3):
    from engine.generate import GenerationRequest, generate

    images = generate(model, GenerationRequest(prompt="a red circle", seeds=[0, 1], steps=steps))
    return [np.asarray(im) for im in images]


def _same_images(a, b) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def test_single_file_sd1_safetensors_and_ckpt_match_the_folder(tiny_sd1_dir: Path, tmp_path: Path) -> None:
    from engine.model import load_model

    folder_model = load_model(tiny_sd1_dir, device="cpu")
    expected = _generate(folder_model)
    state = pipeline_to_ldm_state_dict(folder_model.pipe)
    odd = tmp_path / "my models" / "tiny ü 模型.safetensors"
    odd.parent.mkdir()
    from safetensors.torch import save_file

    save_file(state, str(odd))
    ckpt = tmp_path / "tiny.ckpt"
    torch.save({"state_dict": state, "global_step": 7, "epoch": 1}, str(ckpt))
    for file in (odd, ckpt):
        model = load_model(file, device="cpu", config=tiny_sd1_dir)
        assert model.architecture == "sd1"
        assert _same_images(expected, _generate(model))


def test_builtin_as_single_file_is_recognised(builtin_model, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from engine.model import load_model

    file = tmp_path / "shapesworld.safetensors"
    save_file(pipeline_to_ldm_state_dict(builtin_model.pipe), str(file))
    model = load_model(file, device="cpu")
    assert model.architecture == "shapesworld"
    assert _same_images(_generate(builtin_model), _generate(model))


class _Marker:
    """Unpickling this would create a file: proof that a pickle ran code."""

    path = ""

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("style", ["torch-zip", "legacy-pickle"])
def test_malicious_ckpt_is_refused_without_running(style: str, tmp_path: Path) -> None:
    from engine.jobs import ModelLoadError
    from engine.model import load_model

    marker = tmp_path / "pwned.txt"
    evil = _Marker()
    evil.path = str(marker)
    payload = {"state_dict": {"model.diffusion_model.out.2.weight": torch.zeros(2)}, "callback": evil}
    file = tmp_path / "evil.ckpt"
    if style == "torch-zip":
        torch.save(payload, str(file))
    else:
        with open(file, "wb") as f:
            pickle.dump(payload, f)
    assert not marker.exists()
    with pytest.raises(ModelLoadError) as info:
        load_model(file, device="cpu")
    assert "Python objects" in info.value.user_message
    assert not marker.exists()


# ---------------------------------------------------------------- clear errors
def _one_sentence(text: str) -> bool:
    return "\n" not in text and text.endswith(".") and len(text) < 200


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _safetensors_with(tmp_path: Path, name: str, tensors: dict[str, torch.Tensor]) -> Path:
    from safetensors.torch import save_file

    file = tmp_path / name
    save_file(tensors, str(file))
    return file


def test_bad_inputs_give_one_plain_sentence(tmp_path: Path, tiny_sd1_dir: Path) -> None:
    from engine.jobs import ModelLoadError
    from engine.model import load_model

    rng = np.random.default_rng(0)
    real = _safetensors_with(tmp_path, "real.safetensors", {"model.diffusion_model.x": torch.zeros(1000)})
    whole = real.read_bytes()
    ckpt = tmp_path / "real.ckpt"
    torch.save({"state_dict": {"a": torch.zeros(1000)}}, str(ckpt))
    x = torch.zeros(1)
    sdxl = {"conditioner.embedders.1.model.ln_final.weight": x, "model.diffusion_model.out.2.weight": x.clone()}
    cases = {
        "There is no model": tmp_path / "missing.safetensors",
        "empty": _write(tmp_path / "empty.safetensors", b""),
        "not a model file": _write(tmp_path / "random.safetensors", rng.bytes(5000)),
        "not a model file ": _write(tmp_path / "random.ckpt", rng.bytes(5000)),
        "not a model file  ": _write(tmp_path / "nonjson.safetensors", (20).to_bytes(8, "little") + b"{not json at all!!!}"),
        "incomplete": _write(tmp_path / "claims.safetensors", (10**6).to_bytes(8, "little") + b'{"a": 1}'),
        "incomplete ": _write(tmp_path / "truncated.safetensors", whole[: len(whole) - 2000]),
        "incomplete or damaged": _write(tmp_path / "truncated.ckpt", ckpt.read_bytes()[:300]),
        "no model_index.json": tmp_path,
        "SDXL checkpoint; SDXL is not supported yet": _safetensors_with(tmp_path, "xl.safetensors", sdxl),
        "LoRA": _safetensors_with(tmp_path, "lora.safetensors", {"lora_unet_down_blocks_0.lora_down.weight": x}),
        "unusual size": _safetensors_with(tmp_path, "tiny.safetensors", _tiny_state(tiny_sd1_dir)),
        "not a Stable Diffusion checkpoint": _safetensors_with(tmp_path, "other.safetensors", {"foo.weight": x}),
        "choose a .safetensors": _write(tmp_path / "notes.txt", b"hello"),
    }
    for expected, path in cases.items():
        with pytest.raises(ModelLoadError) as info:
            load_model(path, device="cpu")
        message = info.value.user_message
        assert expected.strip() in message, (path.name, message)
        assert _one_sentence(message), message


def _tiny_state(folder: Path) -> dict[str, torch.Tensor]:
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(folder), local_files_only=True, safety_checker=None,
                                                   feature_extractor=None, requires_safety_checker=False)
    return pipeline_to_ldm_state_dict(pipe)


def test_sd2_file_names_and_yaml_decide_v_prediction(tmp_path: Path) -> None:
    from engine.model import _v_prediction_hint

    assert _v_prediction_hint(tmp_path / "v2-1_768-ema-pruned.safetensors", {})[0] is True
    assert _v_prediction_hint(tmp_path / "sd21-vpred.ckpt", {})[0] is True
    assert _v_prediction_hint(tmp_path / "v2-1_512-ema-pruned.safetensors", {})[0] is False
    assert _v_prediction_hint(tmp_path / "mystery.safetensors", {"v_pred": torch.zeros(1)})[0] is True
    assert _v_prediction_hint(tmp_path / "mystery.safetensors", {})[0] is None
    (tmp_path / "mystery.yaml").write_text('model:\n  params:\n    parameterization: "v"\n')
    assert _v_prediction_hint(tmp_path / "mystery.safetensors", {})[0] is True


# ---------------------------------------------------------------- the bundled skeletons are real SD shapes
@pytest.mark.parametrize("name", ["sd1", "sd2", "sd2-v"])
def test_skeletons_have_real_sd_sizes_and_layout(name: str) -> None:
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from engine.ldm_keys import clip_to_ldm, open_clip_to_ldm, unet_to_ldm, vae_to_ldm
    from engine.model import SKELETONS

    folder = SKELETONS / name
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(str(folder / "unet")))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(str(folder / "vae")))
        text = CLIPTextModel(CLIPTextConfig.from_pretrained(str(folder / "text_encoder")))

    def count(m) -> int:
        return sum(p.numel() for p in m.parameters())

    sd2 = name != "sd1"
    # Parameter counts of the published SD 1.5 / SD 2.x diffusers weights.
    assert count(unet) == (865_910_724 if sd2 else 859_520_964)
    assert count(vae) == 83_653_863
    assert count(text) == (340_387_840 if sd2 else 123_060_480)
    assert set(unet_to_ldm(unet.state_dict(), unet.config)) == sd15_unet_keys()
    assert set(vae_to_ldm(vae.state_dict(), vae.config)) == sd15_vae_keys()
    text_keys = set((open_clip_to_ldm if sd2 else clip_to_ldm)(text.state_dict()))
    if sd2:
        assert "cond_stage_model.model.transformer.resblocks.22.attn.in_proj_weight" in text_keys
    else:
        assert text_keys == sd15_clip_keys(12)


def _tiny_sd2_pipeline():
    """SD 2.x-shaped tiny pipeline: 1024-wide text encoder (OpenCLIP layout), linear projections, v-prediction."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from engine.model import BUILTIN_PATH

    torch.manual_seed(1)
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16, 32, 32), layers_per_block=2, sample_size=8, cross_attention_dim=1024,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, attention_head_dim=(1, 2, 4, 4),
        use_linear_projection=True, norm_num_groups=4)
    vae = AutoencoderKL(block_out_channels=(8, 16, 32, 32), down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, norm_num_groups=4)
    tokenizer = CLIPTokenizer.from_pretrained(str(BUILTIN_PATH / "tokenizer"))
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=1024, intermediate_size=64, num_attention_heads=16,
        num_hidden_layers=2, max_position_embeddings=77, hidden_act="gelu", bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1, prediction_type="v_prediction")
    return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


def test_single_file_sd2_openclip_layout_matches_the_folder(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from engine.jobs import ModelLoadError
    from engine.model import load_model

    folder = tmp_path / "tiny-sd2"
    _tiny_sd2_pipeline().save_pretrained(str(folder))
    folder_model = load_model(folder, device="cpu")
    assert folder_model.architecture == "sd2-v"
    state = pipeline_to_ldm_state_dict(folder_model.pipe)
    assert "cond_stage_model.model.transformer.resblocks.1.attn.in_proj_weight" in state
    assert not any(k.startswith("cond_stage_model.transformer.") for k in state)
    file = tmp_path / "tiny-sd2.safetensors"
    save_file(state, str(file))
    model = load_model(file, device="cpu", config=folder)
    assert model.architecture == "sd2-v"
    assert _same_images(_generate(folder_model, steps=2), _generate(model, steps=2))
    with pytest.raises(ModelLoadError) as info:  # detected as SD 2.x, but too small for the real SD 2 skeleton
        load_model(file, device="cpu")
    assert "do not fit" in info.value.user_message and _one_sentence(info.value.user_message)
