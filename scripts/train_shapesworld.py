"""Train the built-in ShapesWorld model from scratch and save it as a diffusers pipeline.

Stages: tokenizer (byte-level BPE over the world's words), dataset rendering, VAE,
then UNet + text encoder together (EMA weights are what gets saved). Deterministic
given ``--seed`` up to GPU kernel non-determinism.

Resumable: each stage writes to ``--work``; a finished VAE is reused, and the UNet stage
restarts from the last saved checkpoint (``unet_ckpt.pt``) when one exists.

Measured wall time of the committed model (80,000 images, VAE 1,200 steps, UNet + text encoder 4,715 steps,
batch 256, in two runs, the second resumed from the first's checkpoint; log in docs/shapesworld-training-log.txt):
  one NVIDIA H200: about 12 minutes in all (rendering 9 s, VAE 64 s, UNet 9-10 it/s: 259 s + 193 s, saving 1 s).
  this 2-core CPU (torch 2.13.0+cpu): one UNet step at batch 32 takes about a second, so the same run would take
  about 10 hours at batch 256; not practical. Use --init to continue from the committed model where a GPU is lent.

Usage:
  python scripts/train_shapesworld.py --work /tmp/sw --out assets/models/shapesworld --device cuda
  # continue training the committed model on a GPU:
  python scripts/train_shapesworld.py --work /tmp/sw --out /tmp/sw_out --device cuda \
      --init assets/models/shapesworld --lr 2e-4 --time-budget 420 --eval
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import shutil
import sys
import time
from collections import Counter
from multiprocessing import Pool
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import torch

from engine.bpe import bytes_to_unicode
from engine.shapesworld import WORLD_JSON, render, sample_example, vocabulary_words

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
MAX_LENGTH = 77

UNET_CONFIG = {
    "sample_size": 16, "in_channels": 4, "out_channels": 4, "block_out_channels": (48, 96, 96), "layers_per_block": 1,
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "cross_attention_dim": 128, "attention_head_dim": 8, "norm_num_groups": 16,
}
VAE_CONFIG = {
    "in_channels": 3, "out_channels": 3, "sample_size": 64, "latent_channels": 4, "block_out_channels": (32, 64, 64),
    "layers_per_block": 2, "norm_num_groups": 16,
    "down_block_types": ("DownEncoderBlock2D",) * 3, "up_block_types": ("UpDecoderBlock2D",) * 3,
}
TEXT_CONFIG = {
    "hidden_size": 128, "intermediate_size": 512, "num_hidden_layers": 3, "num_attention_heads": 4,
    "max_position_embeddings": MAX_LENGTH, "hidden_act": "quick_gelu", "projection_dim": 128,
}
SCHEDULER_CONFIG = {
    "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000,
    "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1, "prediction_type": "epsilon",
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------- tokenizer
def build_tokenizer(folder: Path) -> None:
    """Write vocab.json + merges.txt so that every world word is one token, CLIP style."""
    byte_chars = list(bytes_to_unicode().values())
    vocab = byte_chars + [c + "</w>" for c in byte_chars]
    words = {w: 1 for w in vocabulary_words()}
    splits = {w: [*w[:-1], w[-1] + "</w>"] for w in words}
    merges: list[tuple[str, str]] = []
    while True:
        pairs = Counter()
        for w, parts in splits.items():
            for a, b in itertools.pairwise(parts):
                pairs[(a, b)] += words[w]
        if not pairs:
            break
        (a, b), _ = max(pairs.items(), key=lambda kv: (kv[1], kv[0]))
        merges.append((a, b))
        vocab.append(a + b)
        for w, parts in splits.items():
            merged, i = [], 0
            while i < len(parts):
                if i + 1 < len(parts) and parts[i] == a and parts[i + 1] == b:
                    merged.append(a + b)
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            splits[w] = merged
    vocab += [BOS, EOS]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False, indent=0))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    (folder / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS}, indent=2))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "CLIPTokenizer", "model_max_length": MAX_LENGTH, "do_lower_case": True,
        "bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS,
        "add_prefix_space": False, "errors": "replace"}, indent=2))


def load_tokenizer(folder: Path):
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(str(folder), model_max_length=MAX_LENGTH, local_files_only=True)
    for w in vocabulary_words():
        ids = tok(w, add_special_tokens=False).input_ids
        assert len(ids) == 1, f"tokenizer splits {w!r} into {ids}"
    return tok


# ---------------------------------------------------------------- data
def _render_chunk(args: tuple[int, int]) -> tuple[np.ndarray, list[str]]:
    seed, count = args
    rng = np.random.default_rng(seed)
    images, captions = np.empty((count, 64, 64, 3), np.uint8), []
    for i in range(count):
        scene, caption = sample_example(rng)
        images[i] = render(scene, rng)
        captions.append(caption)
    return images, captions


def render_dataset(n: int, seed: int, workers: int) -> tuple[np.ndarray, list[str]]:
    chunk = 2000
    jobs = [(seed * 100_003 + i, min(chunk, n - i * chunk)) for i in range(math.ceil(n / chunk))]
    with Pool(workers) as pool:
        parts = pool.map(_render_chunk, jobs)
    return np.concatenate([p[0] for p in parts]), [c for p in parts for c in p[1]]


def to_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


# ---------------------------------------------------------------- VAE
def train_vae(images: np.ndarray, steps: int, batch: int, device: str, seed: int):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    vae = AutoencoderKL(**VAE_CONFIG).to(device)
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, total_steps=steps, pct_start=0.05)
    data = to_tensor(images).to(device)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    t0 = time.time()
    for step in range(steps):
        idx = torch.randint(0, len(data), (batch,), generator=gen).to(device)
        x = data[idx]
        with torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16, enabled=device != "cpu"):
            posterior = vae.encode(x).latent_dist
            recon = vae.decode(posterior.sample()).sample
        mse = torch.nn.functional.mse_loss(recon.float(), x)
        kl = posterior.kl().mean()
        loss = mse + 1e-6 * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 250 == 0 or step == steps - 1:
            log(f"vae step {step}/{steps} mse {mse.item():.5f} kl {kl.item():.1f} ({time.time() - t0:.0f}s)")
    vae.eval()
    return vae


@torch.no_grad()
def encode_dataset(vae, images: np.ndarray, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    means, stds = [], []
    for i in range(0, len(images), 1000):
        dist = vae.encode(to_tensor(images[i : i + 1000]).to(device)).latent_dist
        means.append(dist.mean.float())
        stds.append(dist.std.float())
    return torch.cat(means), torch.cat(stds)


# ---------------------------------------------------------------- UNet + text encoder
def train_unet(latent_mean, latent_std, scaling, ids, vocab_size, bos_id, eos_id, args, work: Path):
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    device = args.device
    torch.manual_seed(args.seed + 1)
    unet = UNet2DConditionModel(**UNET_CONFIG).to(device)
    text_config = CLIPTextConfig(vocab_size=vocab_size, bos_token_id=bos_id, eos_token_id=eos_id, pad_token_id=eos_id,
                                 **TEXT_CONFIG)
    text_encoder = CLIPTextModel(text_config).to(device)
    params = list(unet.parameters()) + list(text_encoder.parameters())
    ema = [p.detach().clone() for p in params]
    start = 0
    ckpt_path = work / "unet_ckpt.pt"
    if ckpt_path.exists():
        state = torch.load(ckpt_path, map_location=device, weights_only=True)
        for p, v in zip(params, state["params"]):
            p.data.copy_(v)
        for e, v in zip(ema, state["ema"]):
            e.copy_(v)
        start = int(state["step"])
        log(f"resumed UNet training at step {start}")
    elif args.init is not None:
        # Continue from a saved pipeline (e.g. the committed model): its weights become both the trained
        # parameters and the EMA; the step count (and so the LR schedule) starts over.
        unet.load_state_dict(UNet2DConditionModel.from_pretrained(str(args.init), subfolder="unet").state_dict())
        text_encoder.load_state_dict(
            CLIPTextModel.from_pretrained(str(args.init), subfolder="text_encoder").state_dict())
        for e, p in zip(ema, params, strict=True):
            e.copy_(p.detach())
        log(f"initialised UNet and text encoder from {args.init}")
    log(f"UNet {sum(p.numel() for p in unet.parameters()) / 1e6:.2f} M params, "
        f"text encoder {sum(p.numel() for p in text_encoder.parameters()) / 1e6:.2f} M")

    noise_sched = DDPMScheduler(**{k: v for k, v in SCHEDULER_CONFIG.items() if k not in ("set_alpha_to_one",)})
    alphas = noise_sched.alphas_cumprod.to(device)
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    total = args.unet_steps
    gen = torch.Generator(device="cpu").manual_seed(args.seed + 2)
    ids = ids.to(device)
    t_start = time.time()
    step = start
    while step < total:
        if step == start + 100 and args.time_budget:
            rate = 100 / (time.time() - t_start)
            total = min(args.unet_steps, start + int(rate * args.time_budget))
            log(f"{rate:.1f} it/s: training to step {total}")
        warm = min(1.0, (step + 1) / 300)
        lr = args.lr * warm * (0.5 * (1 + math.cos(math.pi * min(1.0, step / max(total, 1)))) * 0.95 + 0.05)
        for group in opt.param_groups:
            group["lr"] = lr
        idx = torch.randint(0, len(ids), (args.batch,), generator=gen).to(device)
        z = (latent_mean[idx] + latent_std[idx] * torch.randn_like(latent_std[idx])) * scaling
        noise = torch.randn_like(z)
        t = torch.randint(0, 1000, (args.batch,), device=device)
        a = alphas[t].view(-1, 1, 1, 1)
        noisy = a.sqrt() * z + (1 - a).sqrt() * noise
        with torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16, enabled=device != "cpu"):
            context = text_encoder(ids[idx])[0]
            pred = unet(noisy, t, context).sample
        loss = torch.nn.functional.mse_loss(pred.float(), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(args.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(ema, [p.detach() for p in params], 1 - decay)
        step += 1
        if step % 250 == 0 or step == total:
            log(f"unet step {step}/{total} loss {loss.item():.4f} lr {lr:.2e} ({time.time() - t_start:.0f}s)")
        if step % 1000 == 0 or step == total:
            torch.save({"params": [p.detach() for p in params], "ema": ema, "step": step}, ckpt_path)
    with torch.no_grad():
        for p, e in zip(params, ema):
            p.copy_(e)
    return unet.eval(), text_encoder.eval()


def save_pipeline(out: Path, vae, unet, text_encoder, tokenizer_dir: Path) -> None:
    from diffusers import DDIMScheduler, StableDiffusionPipeline
    from safetensors.torch import load_file, save_file
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(str(tokenizer_dir), model_max_length=MAX_LENGTH)
    pipe = StableDiffusionPipeline(vae=vae.float().cpu(), text_encoder=text_encoder.float().cpu(), tokenizer=tokenizer,
                                   unet=unet.float().cpu(), scheduler=DDIMScheduler(**SCHEDULER_CONFIG),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.save_pretrained(tmp, safe_serialization=True)
    # Older transformers expect the "text_model." prefix; current ones accept both.
    te_file = tmp / "text_encoder" / "model.safetensors"
    state = load_file(te_file)
    save_file({(k if k.startswith("text_model.") else "text_model." + k): v.contiguous() for k, v in state.items()},
              te_file, metadata={"format": "pt"})
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(tokenizer_dir / name, tmp / "tokenizer" / name)
    shutil.copy(WORLD_JSON, tmp / "world.json")
    if out.exists():
        for child in out.iterdir():
            if child.name != "world.json":
                shutil.rmtree(child) if child.is_dir() else child.unlink()
    out.mkdir(parents=True, exist_ok=True)
    for child in tmp.iterdir():
        shutil.move(str(child), out / child.name)
    tmp.rmdir()


@torch.no_grad()
def quick_eval(out: Path, device: str, guidance: float) -> dict:
    """Color/shape/style accuracy on 16 seeds per prompt, with the project's judge."""
    from diffusers import StableDiffusionPipeline

    from engine.judge import judge_image
    from engine.shapesworld import SHAPES, load_world

    pipe = StableDiffusionPipeline.from_pretrained(str(out), local_files_only=True).to(device)
    pipe.set_progress_bar_config(disable=True)
    world = load_world()
    cases = []
    for c, spec in world["colors"].items():
        for word in [c, *spec["synonyms"]]:
            for s in SHAPES:
                cases.append((f"a {word} {s}", c, s, "solid"))
    for st, spec in world["styles"].items():
        for phr in spec["phrasings"]:
            for s in SHAPES:
                cases.append((f"a red {s} {phr}", "red", s, st))
    for s, spec in world["shapes"].items():
        for word in spec["synonyms"]:
            cases.append((f"a blue {word}", "blue", s, "solid"))
    stats: dict[str, list[int]] = {}
    for prompt, c, s, st in cases:
        gens = [torch.Generator("cpu").manual_seed(i) for i in range(16)]
        images = pipe([prompt] * 16, num_inference_steps=25, guidance_scale=guidance, generator=gens,
                      output_type="np").images
        for im in images:
            v = judge_image((im * 255).round().astype(np.uint8))
            for key, ok in (("color:" + c, v.color == c), ("shape:" + s, v.shape == s), ("style:" + st, v.style == st),
                            ("prompt:" + prompt, v.color == c and v.shape == s and v.style == st)):
                stats.setdefault(key, [0, 0])
                stats[key][0] += int(ok)
                stats[key][1] += 1
    images = pipe(["a circle"] * 32, num_inference_steps=25, guidance_scale=guidance,
                  generator=[torch.Generator("cpu").manual_seed(i) for i in range(32)], output_type="np").images
    spread = Counter(judge_image((im * 255).round().astype(np.uint8)).color for im in images)
    result = {k: round(a / n, 3) for k, (a, n) in sorted(stats.items())}
    result["a circle colors"] = dict(spread)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--vae-steps", type=int, default=1500)
    parser.add_argument("--vae-batch", type=int, default=256)
    parser.add_argument("--unet-steps", type=int, default=12_000)
    parser.add_argument("--time-budget", type=float, default=330.0, help="seconds for the UNet stage (0: no limit)")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--lr", type=float, default=4e-4)
    parser.add_argument("--ema", type=float, default=0.999)
    parser.add_argument("--guidance", type=float, default=5.0)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--eval", action="store_true")
    parser.add_argument("--init", type=Path, default=None,
                        help="continue training from a saved pipeline folder (its VAE is kept as it is)")
    args = parser.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    args.work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()

    tok_dir = args.work / "tokenizer"
    build_tokenizer(tok_dir)
    tokenizer = load_tokenizer(tok_dir)
    log(f"tokenizer: {len(tokenizer)} tokens")

    images, captions = render_dataset(args.images, args.seed, args.workers)
    log(f"rendered {len(images)} images ({time.time() - t0:.0f}s); e.g. {captions[:3]}")
    ids = tokenizer(captions, padding="max_length", max_length=MAX_LENGTH, truncation=True,
                    return_tensors="pt").input_ids

    from diffusers import AutoencoderKL

    vae_dir = args.work / "vae"
    if args.init is not None and not (vae_dir / "config.json").exists():
        AutoencoderKL.from_pretrained(str(args.init), subfolder="vae", local_files_only=True).save_pretrained(vae_dir)
    if (vae_dir / "config.json").exists():
        vae = AutoencoderKL.from_pretrained(str(vae_dir), local_files_only=True).to(args.device).eval()
        log("reusing trained VAE")
    else:
        vae = train_vae(images, args.vae_steps, args.vae_batch, args.device, args.seed)
        vae.save_pretrained(vae_dir)
    mean, std = encode_dataset(vae, images, args.device)
    scaling = float(1.0 / mean.std())
    vae.register_to_config(scaling_factor=scaling)
    with torch.no_grad():
        recon = vae.decode(mean[:512]).sample.float()
        mse = torch.nn.functional.mse_loss(recon, to_tensor(images[:512]).to(args.device)).item()
    log(f"latent std {mean.std().item():.3f} -> scaling {scaling:.3f}; reconstruction mse {mse:.5f}")

    unet, text_encoder = train_unet(mean, std, scaling, ids, len(tokenizer), tokenizer.bos_token_id,
                                    tokenizer.eos_token_id, args, args.work)
    save_pipeline(args.out, vae, unet, text_encoder, tok_dir)
    log(f"saved pipeline to {args.out} ({time.time() - t0:.0f}s in all)")
    if args.eval:
        result = quick_eval(args.out, args.device, args.guidance)
        (args.work / "quick_eval.json").write_text(json.dumps(result, indent=1))
        worst = sorted(((v, k) for k, v in result.items() if isinstance(v, float)))[:12]
        log(f"quick eval worst: {worst}")
        log(f"'a circle' colors: {result['a circle colors']}")


if __name__ == "__main__":
    main()
