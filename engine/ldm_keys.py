"""The diffusers -> original Stable Diffusion ("LDM" / CompVis) single-file key mapping.

AUTOMATIC1111, ComfyUI and ``from_single_file`` read one ``.safetensors`` whose keys
follow the original SD code: ``model.diffusion_model.*`` (UNet),
``first_stage_model.*`` (VAE) and ``cond_stage_model.*`` (text encoder). diffusers
ships only the opposite direction as library code, and its export script hard-codes
the SD 1.x block layout. Here the UNet index arithmetic is derived from the block
config, so any level count and ``layers_per_block`` maps (the 3-level built-in model as
well as SD 1.x/2.x):

* level ``i`` of ``L`` layers: resnet/attention ``j`` -> ``input_blocks.{1 + i(L+1) + j}.{0|1}``,
  its downsampler -> ``input_blocks.{1 + i(L+1) + L}.0.op``;
* mid block: resnet 0 -> ``middle_block.0``, attention -> ``.1``, resnet 1 -> ``.2``;
* up level ``i`` (``L+1`` layers): layer ``j`` -> ``output_blocks.{i(L+1) + j}.{0|1}``, its upsampler
  -> ``output_blocks.{i(L+1) + L}.{2 if the level has attention else 1}.conv``.

This is exactly the inverse of diffusers' ``convert_ldm_unet_checkpoint`` /
``convert_ldm_vae_checkpoint`` / CLIP conversions, which the tests check key by key.

transformers >= 5.6 saves ``CLIPTextModel`` without the ``text_model.`` prefix; the
original layout (and every reader) needs it, so it is always written here.
"""

from __future__ import annotations

import re
from typing import Any

import torch

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."
OPEN_CLIP_PREFIX = "cond_stage_model.model."

_UNET_TOP = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
_UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}
_VAE_TOP = {
    "conv_in": "conv_in",
    "conv_out": "conv_out",
    "conv_norm_out": "norm_out",
}
_VAE_ATTENTION = {
    "group_norm": "norm",
    "to_q": "q",
    "to_k": "k",
    "to_v": "v",
    "to_out.0": "proj_out",
}
_OPEN_CLIP_LAYER = {
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
    "self_attn.out_proj": "attn.out_proj",
}


class LdmKeyError(ValueError):
    """A diffusers weight has no place in the original SD layout (an unsupported architecture)."""


def _layers_per_block(config: Any) -> int:
    layers = config["layers_per_block"]
    if isinstance(layers, (list, tuple)):
        if len(set(layers)) != 1:
            raise LdmKeyError(f"per-level layers_per_block {layers} has no original-layout equivalent")
        layers = layers[0]
    return int(layers)


def _split_module(key: str) -> tuple[str, str]:
    """'a.b.weight' -> ('a.b', 'weight')."""
    module, _, param = key.rpartition(".")
    return module, param


def unet_key_to_ldm(key: str, config: Any) -> str:
    """Map one diffusers UNet2DConditionModel key to its name without the ``model.diffusion_model.`` prefix."""
    layers = _layers_per_block(config)
    module, param = _split_module(key)
    if module in _UNET_TOP:
        return f"{_UNET_TOP[module]}.{param}"

    def resnet(rest: str) -> str:
        sub, _, tail = rest.partition(".")
        if sub not in _UNET_RESNET:
            raise LdmKeyError(f"unknown resnet weight {key}")
        return f"{_UNET_RESNET[sub]}{'.' + tail if tail else ''}"

    m = re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key)
    if m:
        level, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        index = 1 + level * (layers + 1) + j
        return f"input_blocks.{index}.0.{resnet(rest)}" if kind == "resnets" else f"input_blocks.{index}.1.{rest}"
    m = re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(\w+)", key)
    if m:
        return f"input_blocks.{1 + int(m[1]) * (layers + 1) + layers}.0.op.{m[2]}"
    m = re.fullmatch(r"mid_block\.(resnets|attentions)\.(\d+)\.(.+)", key)
    if m:
        kind, j, rest = m[1], int(m[2]), m[3]
        return f"middle_block.{2 * j}.{resnet(rest)}" if kind == "resnets" else f"middle_block.{2 * j + 1}.{rest}"
    m = re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key)
    if m:
        level, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        index = level * (layers + 1) + j
        return f"output_blocks.{index}.0.{resnet(rest)}" if kind == "resnets" else f"output_blocks.{index}.1.{rest}"
    m = re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(\w+)", key)
    if m:
        level = int(m[1])
        has_attention = "CrossAttn" in config["up_block_types"][level]
        return f"output_blocks.{level * (layers + 1) + layers}.{2 if has_attention else 1}.conv.{m[2]}"
    raise LdmKeyError(f"the UNet weight {key} has no place in the original SD layout")


def vae_key_to_ldm(key: str, config: Any) -> str:
    """Map one diffusers AutoencoderKL key to its name without the ``first_stage_model.`` prefix."""
    levels = len(config["up_block_types"])
    if key.startswith(("quant_conv.", "post_quant_conv.")):
        return key
    part, _, rest = key.partition(".")
    if part not in ("encoder", "decoder"):
        raise LdmKeyError(f"the VAE weight {key} has no place in the original SD layout")
    module, param = _split_module(rest)
    if module in _VAE_TOP:
        return f"{part}.{_VAE_TOP[module]}.{param}"

    def resnet(tail: str) -> str:
        return tail.replace("conv_shortcut", "nin_shortcut")

    m = re.fullmatch(r"down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", rest)
    if m and part == "encoder":
        return f"encoder.down.{m[1]}.block.{m[2]}.{resnet(m[3])}"
    m = re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(\w+)", rest)
    if m and part == "encoder":
        return f"encoder.down.{m[1]}.downsample.conv.{m[2]}"
    m = re.fullmatch(r"up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", rest)
    if m and part == "decoder":
        return f"decoder.up.{levels - 1 - int(m[1])}.block.{m[2]}.{resnet(m[3])}"
    m = re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(\w+)", rest)
    if m and part == "decoder":
        return f"decoder.up.{levels - 1 - int(m[1])}.upsample.conv.{m[2]}"
    m = re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.+)", rest)
    if m:
        return f"{part}.mid.block_{int(m[1]) + 1}.{resnet(m[2])}"
    m = re.fullmatch(r"mid_block\.attentions\.0\.(.+)\.(\w+)", rest)
    if m and m[1] in _VAE_ATTENTION:
        return f"{part}.mid.attn_1.{_VAE_ATTENTION[m[1]]}.{m[2]}"
    raise LdmKeyError(f"the VAE weight {key} has no place in the original SD layout")


def _with_text_model_prefix(key: str) -> str:
    """transformers >= 5.6 flattens CLIPTextModel (no ``text_model.``); the original layout needs it."""
    if key.startswith(("text_model.", "text_projection")):
        return key
    return "text_model." + key


def clip_to_ldm(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """SD 1.x CLIP-L layout: ``cond_stage_model.transformer.text_model.*``, names otherwise unchanged."""
    out = {}
    for key, tensor in state_dict.items():
        key = _with_text_model_prefix(key)
        if key.startswith("text_projection") or key.endswith("position_ids"):
            continue  # CLIPTextModel has no projection in SD 1.x; position_ids is a buffer readers rebuild
        out[CLIP_PREFIX + key] = tensor
    return out


def open_clip_to_ldm(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """SD 2.x OpenCLIP-H layout: ``cond_stage_model.model.*`` with q/k/v fused into ``in_proj``.

    diffusers keeps 23 of OpenCLIP's 24 blocks (SD 2 reads the penultimate layer) and no
    projection, so the file holds exactly those; every SD 2 reader accepts that.
    """
    out: dict[str, torch.Tensor] = {}
    fused: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for key, tensor in state_dict.items():
        key = _with_text_model_prefix(key)
        if key.endswith("position_ids"):
            continue
        if key == "text_model.embeddings.token_embedding.weight":
            out[OPEN_CLIP_PREFIX + "token_embedding.weight"] = tensor
            continue
        if key == "text_model.embeddings.position_embedding.weight":
            out[OPEN_CLIP_PREFIX + "positional_embedding"] = tensor
            continue
        if key.startswith("text_model.final_layer_norm."):
            out[OPEN_CLIP_PREFIX + "ln_final." + key.rpartition(".")[2]] = tensor
            continue
        if key == "text_projection.weight":
            out[OPEN_CLIP_PREFIX + "text_projection"] = tensor.T.contiguous()
            continue
        m = re.fullmatch(r"text_model\.encoder\.layers\.(\d+)\.(.+)\.(weight|bias)", key)
        if not m:
            raise LdmKeyError(f"the text-encoder weight {key} has no place in the OpenCLIP layout")
        layer, module, param = int(m[1]), m[2], m[3]
        qkv = re.fullmatch(r"self_attn\.(q|k|v)_proj", module)
        if qkv:
            fused.setdefault((layer, param), {})[qkv[1]] = tensor
            continue
        if module not in _OPEN_CLIP_LAYER:
            raise LdmKeyError(f"the text-encoder weight {key} has no place in the OpenCLIP layout")
        out[f"{OPEN_CLIP_PREFIX}transformer.resblocks.{layer}.{_OPEN_CLIP_LAYER[module]}.{param}"] = tensor
    for (layer, param), parts in fused.items():
        if set(parts) != {"q", "k", "v"}:
            raise LdmKeyError(f"text-encoder layer {layer} lacks one of q/k/v {param}")
        out[f"{OPEN_CLIP_PREFIX}transformer.resblocks.{layer}.attn.in_proj_{param}"] = torch.cat(
            [parts["q"], parts["k"], parts["v"]], dim=0)
    return out


def unet_to_ldm(state_dict: dict[str, torch.Tensor], config: Any) -> dict[str, torch.Tensor]:
    out = {UNET_PREFIX + unet_key_to_ldm(k, config): v for k, v in state_dict.items()}
    if len(out) != len(state_dict):
        raise LdmKeyError("two UNet weights mapped to the same original name")
    return out


def vae_to_ldm(state_dict: dict[str, torch.Tensor], config: Any) -> dict[str, torch.Tensor]:
    out = {}
    for key, tensor in state_dict.items():
        new = VAE_PREFIX + vae_key_to_ldm(key, config)
        if ".mid.attn_1." in new and new.endswith(".weight") and tensor.ndim == 2:
            tensor = tensor.reshape(*tensor.shape, 1, 1)  # the original VAE attention uses 1x1 convolutions
        out[new] = tensor
    if len(out) != len(state_dict):
        raise LdmKeyError("two VAE weights mapped to the same original name")
    return out


def text_layout(text_encoder: Any) -> str:
    """'openclip' for SD 2.x's 1024-wide OpenCLIP-H text encoder, 'clip' (SD 1.x CLIP-L layout) otherwise."""
    return "openclip" if int(text_encoder.config.hidden_size) == 1024 else "clip"


def pipeline_to_ldm_state_dict(pipe: Any, dtype: torch.dtype | None = None,
                               text_encoder_layout: str | None = None) -> dict[str, torch.Tensor]:
    """The whole pipeline (UNet, VAE, text encoder) as one original-layout state dict of CPU tensors.

    ``dtype`` casts floating tensors (e.g. ``torch.float16`` for a half-size file); None keeps
    the pipeline's. ``text_encoder_layout`` forces "clip" or "openclip" instead of detecting it.
    The weights are read as they are now, so applied edits are included.
    """
    layout = text_encoder_layout or text_layout(pipe.text_encoder)
    if layout not in ("clip", "openclip"):
        raise ValueError(f"unknown text encoder layout {layout!r}")
    result: dict[str, torch.Tensor] = {}
    result.update(unet_to_ldm(pipe.unet.state_dict(), pipe.unet.config))
    result.update(vae_to_ldm(pipe.vae.state_dict(), pipe.vae.config))
    text_sd = pipe.text_encoder.state_dict()
    result.update(open_clip_to_ldm(text_sd) if layout == "openclip" else clip_to_ldm(text_sd))
    clean = {}
    for key, tensor in result.items():
        tensor = tensor.detach().to("cpu")
        if dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(dtype)
        clean[key] = tensor.contiguous()
    return clean
