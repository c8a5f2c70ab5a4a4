"""Exporting the combined edit as a kohya-format LoRA.

Each changed Linear (or Conv2d) weight's delta ``D`` is factored by truncated SVD,
``up = U_r·√S_r``, ``down = √S_r·Vh_r``; loaders add ``(alpha / r)·up @ down``, so ``up`` is
stored times ``r / alpha`` (nothing when all ranks are equal and ``alpha = r``). By Eckart–Young this is
the best rank-r approximation; the rank is the smallest that keeps ``energy`` of
``Σ S²`` (or the user's fixed rank). The reported reconstruction error is computed from
the factors exactly as they are stored (after fp16 rounding, if asked), so recomputing
it from the file gives the same numbers.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from engine.jobs import ExportError

UNET_PREFIX = "lora_unet_"
TE_PREFIX = "lora_te_"
KOHYA_PREFIXES = (UNET_PREFIX, TE_PREFIX)
# What A1111's version filter and kohya's tools read (kohya's values; SD2 also sets ss_v2).
BASE_MODEL_VERSIONS = {"sd1": "sd_v1", "shapesworld": "sd_v1", "sd2": "sd_v2", "sd2-v": "sd_v2"}


@dataclass
class LoraLayer:
    """One factored weight: kohya module name, factors as stored, and how well they reproduce the delta."""

    param: str  # "unet.<module>.weight"
    key: str  # "lora_unet_<module with _>"
    up: torch.Tensor  # [out, r] (or [out, r, 1, 1] for a convolution)
    down: torch.Tensor  # [r, in] (or [r, in, kh, kw])
    rank: int
    delta_norm: float
    error_norm: float
    alpha: float = 0.0  # 0: same as the rank

    @property
    def relative_error(self) -> float:
        return self.error_norm / self.delta_norm if self.delta_norm > 0 else 0.0


def kohya_name(param: str) -> str:
    """``unet.a.b.weight`` -> ``lora_unet_a_b``; text-encoder names get ``text_model`` like kohya writes them."""
    component, _, rest = param.partition(".")
    module = rest.removesuffix(".weight")
    if component == "unet":
        return UNET_PREFIX + module.replace(".", "_")
    if not module.startswith("text_model."):
        module = "text_model." + module  # transformers >= 5.6 flattened CLIPTextModel; kohya names keep the prefix
    return TE_PREFIX + module.replace(".", "_")


def check_lora_compatible(pipe: Any, names: list[str]) -> None:
    """Refuse deltas that a LoRA cannot hold (biases, norms, embeddings) instead of dropping them silently."""
    unsupported = []
    for name in names:
        component, _, rest = name.partition(".")
        module_name, _, leaf = rest.rpartition(".")
        module = getattr(pipe, component).get_submodule(module_name) if module_name else None
        if leaf != "weight" or not isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            unsupported.append(name)
    if unsupported:
        raise ExportError(
            f"This edit changes {len(unsupported)} weight(s) that a LoRA cannot hold (biases, norms or embeddings); "
            "export it as a diffusers folder, single file or edit file instead.", detail=", ".join(unsupported[:5]))


def choose_rank(singular: torch.Tensor, rank: int | None, energy: float) -> int:
    """The user's rank (capped at full rank), or the smallest rank whose Σ S² share reaches ``energy``."""
    full = int(singular.numel())
    if rank is not None:
        return max(1, min(rank, full))
    squares = singular.double() ** 2
    total = float(squares.sum())
    if total == 0.0 or energy >= 1.0:
        return full
    cumulative = torch.cumsum(squares, 0) / total
    return max(1, min(full, int(torch.searchsorted(cumulative, torch.tensor(energy, dtype=torch.float64))) + 1))


# Below this many elements an SVD runs on one thread: MKL's threaded SVD of a cross-attention-sized
# matrix took 0.9 s instead of 5 ms on a busy 2-core machine (its threads wait on each other).
SINGLE_THREAD_ELEMENTS = 1 << 20


@contextlib.contextmanager
def _threads_for(numel: int) -> Iterator[None]:
    previous = torch.get_num_threads()
    if numel < SINGLE_THREAD_ELEMENTS and previous > 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if torch.get_num_threads() != previous:
            torch.set_num_threads(previous)


def truncated_svd(delta: torch.Tensor, rank: int | None, energy: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Float32 ``(U_r·√S_r, √S_r·Vh_r)`` of the delta flattened to [out, in·kh·kw]."""
    matrix = delta.to(torch.float32).reshape(delta.shape[0], -1)
    with _threads_for(matrix.numel()):
        u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    r = choose_rank(s, rank, energy)
    root = s[:r].sqrt()
    return u[:, :r] * root, root[:, None] * vh[:r]


def store(param: str, delta: torch.Tensor, up: torch.Tensor, down: torch.Tensor, alpha: float,
          dtype: torch.dtype) -> LoraLayer:
    """The factors as written: ``up`` pre-multiplied by ``r / alpha`` so that a loader's ``alpha / r``
    scale gives back ``up @ down``; the error is measured from exactly these stored values."""
    r = down.shape[0]
    up_stored = (up * (r / alpha)).to(dtype).contiguous() if r != alpha else up.to(dtype).contiguous()
    down_stored = down.to(dtype).contiguous()
    matrix = delta.to(torch.float32).reshape(delta.shape[0], -1)
    layer = LoraLayer(param, kohya_name(param), up_stored, down_stored, r, float(torch.linalg.norm(matrix)),
                      reconstruction_error(matrix, up_stored, down_stored, alpha / r), alpha)
    if delta.dim() == 4:  # kohya's conv LoRA: down is a kh×kw convolution, up a 1×1
        layer.down = down_stored.reshape(r, *delta.shape[1:])
        layer.up = up_stored.reshape(delta.shape[0], r, 1, 1)
    return layer


def reconstruction_error(matrix: torch.Tensor, up: torch.Tensor, down: torch.Tensor, scale: float = 1.0) -> float:
    """‖D − scale·up·down‖_F, with the factors as stored (fp16 included), computed in float32."""
    with _threads_for(matrix.numel()):
        approx = up.to(torch.float32).reshape(up.shape[0], -1) @ down.to(torch.float32).reshape(down.shape[0], -1)
        return float(torch.linalg.norm(matrix.to(torch.float32).reshape(matrix.shape[0], -1) - scale * approx))


def factor_all(deltas: dict[str, torch.Tensor], rank: int | None, energy: float, dtype: torch.dtype,
               on_layer: Callable[[str], None] | None = None) -> list[LoraLayer]:
    """Factor every changed weight. One ``alpha`` (the largest rank) serves all layers: diffusers drops
    per-layer alphas of text-encoder layers in transformers >= 5.6 (its ``alpha_pattern`` keeps the old
    ``text_model.`` names), so differing alphas would scale those layers wrongly there."""
    factors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for name in sorted(deltas):
        if on_layer is not None:
            on_layer(name)
        if bool(torch.any(deltas[name] != 0)):  # an unchanged weight needs no LoRA layer
            factors[name] = truncated_svd(deltas[name], rank, energy)
    alpha = float(max((down.shape[0] for _, down in factors.values()), default=1))
    return [store(name, deltas[name], up, down, alpha, dtype) for name, (up, down) in factors.items()]


def pad_for_diffusers(layers: list[LoraLayer], dtype: torch.dtype) -> list[LoraLayer]:
    """Add an all-zero rank-1 layer on one text-encoder ``out_proj`` when the LoRA has text-encoder
    attention layers but no ``out_proj``: diffusers (0.42) recognises the converted kohya text-encoder
    keys only by an ``out_proj`` among them and otherwise refuses the file. A zero layer changes no
    weight in any loader."""
    te_attention = [layer for layer in layers if layer.key.startswith(TE_PREFIX) and "_self_attn_" in layer.key]
    if not te_attention or any(layer.key.endswith("_self_attn_out_proj") for layer in te_attention):
        return layers
    first = te_attention[0]
    param = first.param.rsplit(".self_attn.", 1)[0] + ".self_attn.out_proj.weight"
    width = first.down.shape[1]  # q/k/v/out projections are all hidden × hidden
    pad = LoraLayer(param, kohya_name(param), torch.zeros(width, 1, dtype=dtype), torch.zeros(1, width, dtype=dtype),
                    1, 0.0, 0.0, first.alpha)
    return [*layers, pad]


def lora_items(layers: list[LoraLayer], dtype: torch.dtype) -> list[tuple[str, torch.Tensor]]:
    items: list[tuple[str, torch.Tensor]] = []
    for layer in layers:
        items += [(f"{layer.key}.lora_down.weight", layer.down), (f"{layer.key}.lora_up.weight", layer.up),
                  (f"{layer.key}.alpha", torch.tensor(layer.alpha or float(layer.rank), dtype=dtype))]
    return items


def lora_metadata(layers: list[LoraLayer], architecture: str) -> dict[str, str]:
    ranks = {layer.rank for layer in layers}
    dim = str(ranks.pop()) if len(ranks) == 1 else "Dynamic"  # what kohya's resize script writes
    alphas = {layer.alpha or float(layer.rank) for layer in layers}
    alpha = f"{alphas.pop():g}" if len(alphas) == 1 else "Dynamic"
    version = BASE_MODEL_VERSIONS.get(architecture, "sd_v1")
    return {"ss_network_module": "networks.lora", "ss_network_dim": dim, "ss_network_alpha": alpha,
            "ss_base_model_version": version, "ss_v2": str(version == "sd_v2"),
            "ss_training_comment": "Exported by Erasure Studio: truncated SVD of a concept-erasure edit"}


def summarize(layers: list[LoraLayer]) -> dict[str, Any]:
    """Overall and worst relative Frobenius error, and the rank of each layer."""
    total_delta = math.sqrt(sum(layer.delta_norm ** 2 for layer in layers))
    total_error = math.sqrt(sum(layer.error_norm ** 2 for layer in layers))
    worst = max(layers, key=lambda layer: layer.relative_error) if layers else None
    return {
        "layers": len(layers),
        "ranks": {layer.key: layer.rank for layer in layers},
        "layer_errors": {layer.key: layer.relative_error for layer in layers},
        "error_overall": total_error / total_delta if total_delta > 0 else 0.0,
        "error_worst": worst.relative_error if worst else 0.0,
        "worst_layer": worst.key if worst else "",
    }


def errors_from_file(path: Any, deltas: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Reopen a written LoRA and recompute each layer's error against the dense deltas."""
    from safetensors import safe_open

    by_key = {kohya_name(name): name for name in deltas}
    layers: list[LoraLayer] = []
    with safe_open(str(path), framework="pt") as f:
        keys = set(f.keys())
        stray = [k for k in keys if not k.startswith(KOHYA_PREFIXES)]
        if stray:
            raise ExportError("The written LoRA has keys no LoRA loader understands.", ", ".join(stray[:5]))
        for key in sorted({k.split(".", 1)[0] for k in keys}):
            down, up = f.get_tensor(f"{key}.lora_down.weight"), f.get_tensor(f"{key}.lora_up.weight")
            alpha = float(f.get_tensor(f"{key}.alpha")) if f"{key}.alpha" in keys else down.shape[0]
            if key not in by_key:
                if bool(up.any()) and bool(down.any()):
                    raise ExportError("The written LoRA changes a layer the edit does not.", key)
                by_key[key] = key  # a zero layer added for diffusers' sake (pad_for_diffusers)
                deltas = {**deltas, key: torch.zeros(up.shape[0], down.reshape(down.shape[0], -1).shape[1])}
            d = deltas[by_key[key]].to(torch.float32)
            matrix = d.reshape(d.shape[0], -1)
            error = reconstruction_error(matrix, up, down, alpha / down.shape[0])
            layers.append(LoraLayer(by_key[key], key, up, down, down.shape[0], float(torch.linalg.norm(matrix)),
                                    error, alpha))
    return summarize(layers)
