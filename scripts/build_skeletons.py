"""Write the config-only diffusers skeletons in assets/skeletons (no weights).

A single-file SD checkpoint holds weights only; diffusers needs the matching configs
(``config=`` of ``from_single_file``) and would otherwise fetch them from the Hub. This
script writes them once, offline:

* ``sd1``   - SD 1.x (UNet 320/640/1280/1280, CLIP ViT-L/14 text encoder, 512 px, epsilon)
* ``sd2``   - SD 2.x base (OpenCLIP ViT-H/14 text encoder, 512 px, epsilon)
* ``sd2-v`` - SD 2.x 768 (same weights layout, 768 px, v-prediction)
* ``clip-tokenizer`` - the real CLIP BPE vocabulary (vocab.json, merges.txt), shared by all three;
  each skeleton's ``tokenizer/`` holds only its tokenizer_config.json (SD 1 pads with
  <|endoftext|>, SD 2 with "!").

The vocabulary is rebuilt exactly as CLIP's ``SimpleTokenizer`` does from
``bpe_simple_vocab_16e6.txt.gz``, which the open_clip_torch wheel ships:

    pip download --no-deps open_clip_torch -d /tmp/oc
    python scripts/build_skeletons.py /tmp/oc/open_clip_torch-*.whl
"""

from __future__ import annotations

import gzip
import json
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "assets" / "skeletons"
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from engine.bpe import bytes_to_unicode

BPE_MEMBER = "open_clip/bpe_simple_vocab_16e6.txt.gz"


def clip_vocab(bpe_text: str) -> tuple[dict[str, int], list[tuple[str, str]]]:
    merges = [tuple(line.split()) for line in bpe_text.split("\n")[1:49152 - 256 - 2 + 1]]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab.extend("".join(m) for m in merges)
    vocab.extend(["<|startoftext|>", "<|endoftext|>"])
    assert len(vocab) == 49408, len(vocab)
    return {token: i for i, token in enumerate(vocab)}, merges  # type: ignore[return-value]


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


SCHEDULER = {
    "_class_name": "DDIMScheduler",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "trained_betas": None,
}

MODEL_INDEX = {
    "_class_name": "StableDiffusionPipeline",
    "feature_extractor": [None, None],
    "image_encoder": [None, None],
    "requires_safety_checker": False,
    "safety_checker": [None, None],
    "scheduler": ["diffusers", "DDIMScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}


def unet_config(cross: int, heads: int | list[int], linear: bool, sample_size: int, upcast: bool) -> dict:
    return {
        "_class_name": "UNet2DConditionModel",
        "act_fn": "silu",
        "attention_head_dim": heads,
        "block_out_channels": [320, 640, 1280, 1280],
        "center_input_sample": False,
        "cross_attention_dim": cross,
        "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
        "downsample_padding": 1,
        "dual_cross_attention": False,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "in_channels": 4,
        "layers_per_block": 2,
        "mid_block_scale_factor": 1,
        "norm_eps": 1e-05,
        "norm_num_groups": 32,
        "out_channels": 4,
        "sample_size": sample_size,
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
        "upcast_attention": upcast,
        "use_linear_projection": linear,
    }


def vae_config(sample_size: int) -> dict:
    return {
        "_class_name": "AutoencoderKL",
        "act_fn": "silu",
        "block_out_channels": [128, 256, 512, 512],
        "down_block_types": ["DownEncoderBlock2D"] * 4,
        "in_channels": 3,
        "latent_channels": 4,
        "layers_per_block": 2,
        "norm_num_groups": 32,
        "out_channels": 3,
        "sample_size": sample_size,
        "scaling_factor": 0.18215,
        "up_block_types": ["UpDecoderBlock2D"] * 4,
    }


def text_config(hidden: int, layers: int, heads: int, intermediate: int, act: str, projection: int,
                pad_id: int) -> dict:
    return {
        "architectures": ["CLIPTextModel"],
        "attention_dropout": 0.0,
        "bos_token_id": 49406,
        "eos_token_id": 49407,
        "hidden_act": act,
        "hidden_size": hidden,
        "initializer_factor": 1.0,
        "initializer_range": 0.02,
        "intermediate_size": intermediate,
        "layer_norm_eps": 1e-05,
        "max_position_embeddings": 77,
        "model_type": "clip_text_model",
        "num_attention_heads": heads,
        "num_hidden_layers": layers,
        "pad_token_id": pad_id,
        "projection_dim": projection,
        "vocab_size": 49408,
    }


def tokenizer_config(pad: str) -> dict:
    return {
        "add_prefix_space": False,
        "bos_token": "<|startoftext|>",
        "do_lower_case": True,
        "eos_token": "<|endoftext|>",
        "errors": "replace",
        "model_max_length": 77,
        "pad_token": pad,
        "tokenizer_class": "CLIPTokenizer",
        "unk_token": "<|endoftext|>",
    }


def write_skeleton(name: str, unet: dict, vae: dict, text: dict, pad: str, prediction: str) -> None:
    folder = ROOT / name
    write_json(folder / "model_index.json", MODEL_INDEX)
    write_json(folder / "unet" / "config.json", unet)
    write_json(folder / "vae" / "config.json", vae)
    write_json(folder / "text_encoder" / "config.json", text)
    write_json(folder / "scheduler" / "scheduler_config.json", {**SCHEDULER, "prediction_type": prediction})
    write_json(folder / "tokenizer" / "tokenizer_config.json", tokenizer_config(pad))


def main(wheel: str) -> None:
    with zipfile.ZipFile(wheel) as zf:
        bpe_text = gzip.decompress(zf.read(BPE_MEMBER)).decode("utf-8")
    vocab, merges = clip_vocab(bpe_text)
    shared = ROOT / "clip-tokenizer"
    shared.mkdir(parents=True, exist_ok=True)
    (shared / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (shared / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    write_skeleton("sd1", unet_config(768, 8, False, 64, False), vae_config(512),
                   text_config(768, 12, 12, 3072, "quick_gelu", 768, 49407), "<|endoftext|>", "epsilon")
    sd2_heads = [5, 10, 20, 20]
    sd2_text = text_config(1024, 23, 16, 4096, "gelu", 512, 0)
    write_skeleton("sd2", unet_config(1024, sd2_heads, True, 64, True), vae_config(512), sd2_text, "!", "epsilon")
    write_skeleton("sd2-v", unet_config(1024, sd2_heads, True, 96, True), vae_config(768), sd2_text, "!",
                   "v_prediction")
    print(f"wrote skeletons to {ROOT}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
