"""Export: every format reloads with the real readers and reproduces the edited model.

Edits are made directly (small random deltas on cross-attention weights, built with
``EditDelta.create``) so these tests do not depend on any erasure method.
"""

from __future__ import annotations

import copy
import errno
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.atomic import TEMP_MARK
from engine.edits import EditDelta
from engine.export import ExportRequest, export
from engine.export.lora import KOHYA_PREFIXES
from engine.generate import initial_latents, make_scheduler
from engine.jobs import Cancelled, CancelToken, EditMismatchError, InputError, ResourceError
from engine.model import BUILTIN_PATH, LoadedModel, load_model, own_weights

PROMPT = "a red circle"
SEEDS = [0, 1]  # two seeds: a batch, as the studio samples
STEPS = 3


# ---------------------------------------------------------------- helpers


def make_edit(pipe, seed: int = 0, scale: float = 0.05, text_encoder: bool = False, count: int = 4,
              metrics: dict | None = None) -> EditDelta:
    """Random deltas on the first ``count`` cross-attention to_k/to_v weights (and one text-encoder projection)."""
    g = torch.Generator().manual_seed(seed)
    names = [n for n, _ in pipe.unet.named_parameters() if "attn2.to_k" in n or "attn2.to_v" in n][:count]
    deltas = {f"unet.{n}": scale * torch.randn(pipe.unet.get_parameter(n).shape, generator=g) for n in names}
    if text_encoder:
        name = "encoder.layers.1.self_attn.q_proj.weight"
        deltas[f"text_encoder.{name}"] = scale * torch.randn(pipe.text_encoder.get_parameter(name).shape, generator=g)
    edit = EditDelta.create(pipe, deltas, "test-method", {"targets": ["red"], "guides": [""]},
                            {"lambda": 0.5, "seed": seed})
    if metrics:
        edit.manifest["metrics"] = metrics
    return edit


def images(pipe) -> np.ndarray:
    """Float images from engine.generate's seeded latents (DDIM, few steps)."""
    pipe.scheduler = make_scheduler(pipe, "ddim")
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    latents = initial_latents(pipe, SEEDS, size, size)
    with torch.inference_mode():
        return pipe([PROMPT] * len(SEEDS), latents=latents, num_inference_steps=STEPS, guidance_scale=5.0,
                    output_type="np").images


def leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.startswith(TEMP_MARK)]


def header(path: Path) -> dict:
    """The safetensors JSON header (dtypes and shapes) without loading tensors."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        return json.loads(f.read(n))


@pytest.fixture
def edited(builtin_model):
    """The shared built-in model with one test edit at strength 0.8; the stack is cleared afterwards."""
    edit = make_edit(builtin_model.pipe, metrics={"efficacy": 0.125, "generality": 0.25, "specificity": 0.97})
    builtin_model.stack.push(edit, 0.8)
    yield builtin_model
    builtin_model.stack.clear()


@pytest.fixture
def fresh_builtin():
    """A private copy of the built-in model, for tests that load LoRAs into it or compare with a clean base."""
    return load_model("builtin", device="cpu", dtype=torch.float32)


# ---------------------------------------------------------------- diffusers folder


def test_diffusers_folder_gives_identical_images_and_a_model_card(edited, tmp_path: Path) -> None:
    from diffusers import StableDiffusionPipeline

    out = tmp_path / "erased"
    result = export(edited, ExportRequest("diffusers", out, "fp32"))
    assert result.path == out.resolve() and out.is_dir() and result.bytes > 10_000_000
    assert "equal the edited model" in result.check
    loaded = StableDiffusionPipeline.from_pretrained(str(out), local_files_only=True)
    loaded.set_progress_bar_config(disable=True)
    assert np.abs(images(loaded) - images(edited.pipe)).max() == 0.0

    te_keys = header(out / "text_encoder" / "model.safetensors").keys() - {"__metadata__"}
    assert te_keys and all(k.startswith("text_model.") for k in te_keys)
    assert (out / "tokenizer" / "vocab.json").is_file() and (out / "tokenizer" / "merges.txt").is_file()
    card = (out / "README.md").read_text()
    for fact in ("test-method", "red", "strength 0.8", "ShapesWorld", "lambda=0.5", "efficacy", "0.125",
                 "specificity", "0.97", "library_name: diffusers"):
        assert fact in card, fact
    assert leftovers(tmp_path) == []
    # The studio recognises its own export as the built-in world (world.json travels along).
    assert load_model(str(out), device="cpu").architecture == "shapesworld"


@pytest.mark.slow
def test_fp16_diffusers_folder_loads_with_a_plain_call(edited, tmp_path: Path) -> None:
    from diffusers import StableDiffusionPipeline

    out = tmp_path / "half"
    result = export(edited, ExportRequest("diffusers", out, "fp16"))
    dtypes = {v["dtype"] for k, v in header(out / "unet" / "diffusion_pytorch_model.safetensors").items()
              if k != "__metadata__"}
    assert dtypes == {"F16"}
    loaded = StableDiffusionPipeline.from_pretrained(str(out), local_files_only=True)
    loaded.set_progress_bar_config(disable=True)
    assert loaded.unet.dtype == loaded.text_encoder.dtype  # no precision mix that would crash sampling
    # Exactly the edited model with its weights rounded to fp16 (a copy; the shared model stays as it is).
    rounded = copy.deepcopy(edited.pipe)
    with torch.no_grad():
        for module in (rounded.unet, rounded.vae, rounded.text_encoder):
            for param in module.parameters():
                param.copy_(param.half().float())
    assert np.abs(images(loaded) - images(rounded)).max() == 0.0
    assert result.bytes < 0.6 * 21_000_000


def test_exporting_over_an_earlier_export_replaces_it(edited, tmp_path: Path) -> None:
    out = tmp_path / "again"
    export(edited, ExportRequest("diffusers", out, "fp16"))
    (out / "stale.txt").write_text("from before")
    export(edited, ExportRequest("diffusers", out, "fp32"))
    assert not (out / "stale.txt").exists()
    assert leftovers(tmp_path) == []


# ---------------------------------------------------------------- single file


def test_single_file_gives_identical_images_for_the_builtin_model(edited, tmp_path: Path) -> None:
    from diffusers import StableDiffusionPipeline

    out = tmp_path / "erased.safetensors"
    result = export(edited, ExportRequest("single-file", out, "fp32"))
    assert "from_single_file" in result.check
    loaded = StableDiffusionPipeline.from_single_file(str(out), config=str(BUILTIN_PATH), local_files_only=True)
    loaded.set_progress_bar_config(disable=True)
    assert np.abs(images(loaded) - images(edited.pipe)).max() == 0.0
    meta = header(out)["__metadata__"]
    assert json.loads(meta["erasure_studio_source"])["method"] == "test-method"

    half = export(edited, ExportRequest("single-file", tmp_path / "half.safetensors", "fp16"))
    assert {v["dtype"] for k, v in header(half.path).items() if k != "__metadata__"} == {"F16"}
    assert leftovers(tmp_path) == []


@pytest.mark.slow
def test_single_file_of_an_sd1_shaped_model_has_only_sd15_keys(tiny_sd1_pipeline, tiny_sd1_dir: Path,
                                                               tmp_path: Path) -> None:
    from diffusers import StableDiffusionPipeline

    # The SD 1.5 layout written out by rule, kept in the loading tests (686 UNet, 248 VAE, 196 CLIP keys).
    from test_loading import sd15_clip_keys, sd15_unet_keys, sd15_vae_keys

    model = LoadedModel(pipe=tiny_sd1_pipeline, source=str(tiny_sd1_dir), architecture="sd1", device="cpu",
                        dtype=torch.float32)
    model.stack.push(make_edit(tiny_sd1_pipeline, count=32, text_encoder=True), 1.0)
    out = tmp_path / "tiny.safetensors"
    export(model, ExportRequest("single-file", out, "fp32"))
    shapes = {k: v["shape"] for k, v in header(out).items() if k != "__metadata__"}
    layers = tiny_sd1_pipeline.text_encoder.config.num_hidden_layers
    assert set(shapes) == sd15_unet_keys() | sd15_vae_keys() | sd15_clip_keys(layers)
    assert set(shapes) <= sd15_unet_keys() | sd15_vae_keys() | sd15_clip_keys(12)
    # Shapes follow SD 1.5's, scaled: cross-attention reads the text width, VAE attention is a 1×1 conv.
    context = tiny_sd1_pipeline.unet.config.cross_attention_dim
    assert shapes["model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight"][1] == context
    assert shapes["first_stage_model.decoder.mid.attn_1.q.weight"][2:] == [1, 1]
    assert shapes["cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"] == [49408, 16]

    loaded = StableDiffusionPipeline.from_single_file(str(out), config=str(tiny_sd1_dir), local_files_only=True)
    loaded.set_progress_bar_config(disable=True)
    for pipe in (loaded, tiny_sd1_pipeline):
        own_weights(pipe)  # the same weights at other byte offsets can differ in the last bit on some CPUs
    assert np.abs(images(loaded) - images(tiny_sd1_pipeline)).max() == 0.0


# ---------------------------------------------------------------- LoRA


def test_full_rank_lora_reproduces_the_dense_edit(fresh_builtin, tmp_path: Path) -> None:
    model = fresh_builtin
    model.stack.push(make_edit(model.pipe, seed=3, text_encoder=True), 1.0)
    dense = images(model.pipe)
    out = tmp_path / "full.safetensors"
    result = export(model, ExportRequest("lora", out, "fp32", rank=10_000))
    assert result.details["error_overall"] < 1e-5
    meta = header(out)["__metadata__"]
    assert meta["ss_network_module"] == "networks.lora" and meta["ss_base_model_version"] == "sd_v1"
    assert {"ss_network_dim", "ss_network_alpha"} <= set(meta)
    keys = set(header(out)) - {"__metadata__"}
    assert all(k.startswith(KOHYA_PREFIXES) for k in keys)
    assert any(k.startswith("lora_te_text_model_encoder_layers_1_self_attn_q_proj") for k in keys)

    model.stack.clear()
    base = images(model.pipe)
    model.pipe.load_lora_weights(str(out), adapter_name="erase")
    with_lora = images(model.pipe)
    assert np.abs(dense - base).max() > 0.01  # the edit is visible at all
    assert np.abs(with_lora - dense).max() < 1e-3


def test_lora_error_at_default_energy_matches_a_recomputation_from_the_file(edited, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    out = tmp_path / "energy.safetensors"
    result = export(edited, ExportRequest("lora", out, "fp16"))
    tensors = load_file(str(out))
    entry = edited.stack.entries[0]
    total_delta = total_error = 0.0
    worst = 0.0
    for name, delta in entry.edit.deltas.items():
        key = "lora_unet_" + name.removeprefix("unet.").removesuffix(".weight").replace(".", "_")
        down, up = tensors[f"{key}.lora_down.weight"].float(), tensors[f"{key}.lora_up.weight"].float()
        rank = down.shape[0]
        assert down.shape == (rank, delta.shape[1]) and up.shape == (delta.shape[0], rank)
        assert result.details["ranks"][key] == rank
        dense = entry.strength * delta
        error = float(torch.linalg.norm(dense - float(tensors[f"{key}.alpha"]) / rank * up @ down))
        total_delta += float(torch.linalg.norm(dense)) ** 2
        total_error += error ** 2
        worst = max(worst, error / float(torch.linalg.norm(dense)))
        # The rank is the smallest that keeps 99.9 % of the energy.
        s2 = torch.linalg.svdvals(dense).double() ** 2
        kept = torch.cumsum(s2, 0) / s2.sum()
        assert kept[rank - 1] >= 0.999 - 1e-9 and (rank == 1 or kept[rank - 2] < 0.999)
    assert math.isclose(result.details["error_overall"], math.sqrt(total_error / total_delta), rel_tol=1e-4)
    assert math.isclose(result.details["error_worst"], worst, rel_tol=1e-4)
    assert 0 < result.details["error_overall"] < 0.05


def test_lora_refuses_deltas_it_cannot_hold(edited, tmp_path: Path) -> None:
    pipe = edited.pipe
    name = "down_blocks.0.attentions.0.norm.bias"
    edit = EditDelta.create(pipe, {f"unet.{name}": 0.01 * torch.ones_like(pipe.unet.get_parameter(name))},
                            "test-method", {"targets": ["red"]}, {})
    edited.stack.push(edit, 1.0)
    with pytest.raises(Exception, match="cannot hold"):
        export(edited, ExportRequest("lora", tmp_path / "x.safetensors"))
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- edit file


def test_edit_file_reapplied_to_a_fresh_base_gives_identical_images(edited, fresh_builtin, tmp_path: Path) -> None:
    edited.stack.set_strength(0, 1.0)
    out = tmp_path / "combined.safetensors"
    result = export(edited, ExportRequest("edit", out))
    assert "bit for bit" in result.check
    fresh_builtin.stack.push(EditDelta.load(out), 1.0)
    assert np.abs(images(fresh_builtin.pipe) - images(edited.pipe)).max() == 0.0


def test_stacked_edits_export_as_one_combined_edit(edited, fresh_builtin, tmp_path: Path) -> None:
    # Made on the clean copy: an edit's fingerprint is of the unedited weights.
    second = make_edit(fresh_builtin.pipe, seed=7, count=6)
    second.manifest["concepts"] = {"targets": ["blue"]}
    edited.stack.push(second, 0.5)
    edited.stack.push(make_edit(fresh_builtin.pipe, seed=9), 1.0, enabled=False)  # disabled: not exported
    out = tmp_path / "stack.safetensors"
    result = export(edited, ExportRequest("edit", out))
    edit = EditDelta.load(out)
    assert edit.manifest["method"] == "combined"
    assert edit.manifest["concepts"]["targets"] == ["red", "blue"]
    assert [p["strength"] for p in edit.manifest["combined_from"]] == [0.8, 0.5]
    assert len(edit.deltas) == 6
    name = next(iter(edit.deltas))
    expected = 0.8 * edited.stack.entries[0].edit.deltas[name] + 0.5 * second.deltas[name]
    assert torch.allclose(edit.deltas[name], expected, atol=1e-7)
    fresh_builtin.stack.push(edit, 1.0)
    assert result.details["max_difference"] < 1e-7  # at most float32 rounding of the strengths
    assert np.abs(images(fresh_builtin.pipe) - images(edited.pipe)).max() < 1e-4


def test_edit_file_is_refused_by_another_model(edited, tiny_sd1_pipeline, fresh_builtin, tmp_path: Path) -> None:
    out = tmp_path / "edit.safetensors"
    export(edited, ExportRequest("edit", out))
    other = LoadedModel(pipe=tiny_sd1_pipeline, source="tiny", architecture="sd1", device="cpu", dtype=torch.float32)
    with pytest.raises(EditMismatchError, match="different|does not fit"):
        other.stack.push(EditDelta.load(out))
    # Same shapes, other weights: the fingerprint tells them apart.
    with torch.no_grad():
        fresh_builtin.pipe.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn2.to_k.weight.mul_(1.01)
    with pytest.raises(EditMismatchError, match="different base model"):
        fresh_builtin.stack.push(EditDelta.load(out))
    assert len(fresh_builtin.stack) == 0


# ---------------------------------------------------------------- SLD, cancel, errors


def _sld_entry() -> EditDelta:
    return EditDelta({}, {"method": "sld", "concepts": {"targets": ["red"]}, "params": {}, "fingerprint": "",
                          "inference": {"scale": 7.0}})


def test_sld_entries_are_skipped_with_a_warning_or_refused(edited, tmp_path: Path) -> None:
    edited.stack.push(_sld_entry(), 1.0)
    with pytest.raises(InputError, match="SLD"):
        export(edited, ExportRequest("edit", tmp_path / "refused.safetensors", sld_policy="refuse"))
    assert list(tmp_path.iterdir()) == []
    result = export(edited, ExportRequest("edit", tmp_path / "skipped.safetensors", sld_policy="skip"))
    assert result.warnings and "sld" in result.warnings[0].lower()
    assert EditDelta.load(result.path).manifest["method"] == "test-method"
    card_result = export(edited, ExportRequest("diffusers", tmp_path / "folder"))
    assert "Left out" in (card_result.path / "README.md").read_text()


@pytest.mark.parametrize("fmt,name", [("diffusers", "d"), ("single-file", "s.safetensors"),
                                      ("lora", "l.safetensors"), ("edit", "e.safetensors")])
@pytest.mark.parametrize("stage", ["export", "verify"])
def test_cancel_anywhere_leaves_nothing(edited, tmp_path: Path, fmt: str, name: str, stage: str) -> None:
    token = CancelToken()
    seen = []

    def progress(p) -> None:
        seen.append(p.stage)
        if p.stage == stage and p.step >= max(1, p.total // 2):
            token.cancel()

    before = [p.detach().clone() for p in edited.pipe.unet.parameters()]
    with pytest.raises(Cancelled):
        export(edited, ExportRequest(fmt, tmp_path / name), progress, token)
    assert stage in seen
    assert list(tmp_path.iterdir()) == []
    assert all(torch.equal(a, b) for a, b in zip(before, edited.pipe.unet.parameters()))


def test_a_full_disk_leaves_nothing(edited, tmp_path: Path, monkeypatch) -> None:
    import shutil as shutil_module

    from engine.export import writer

    # Visibly too little space: refused before writing.
    usage = shutil_module.disk_usage(tmp_path)
    monkeypatch.setattr(writer.shutil, "disk_usage", lambda _: usage._replace(free=1_000_000))
    with pytest.raises(ResourceError, match="not enough free disk space"):
        export(edited, ExportRequest("single-file", tmp_path / "big.safetensors"))
    monkeypatch.undo()

    # The disk fills up halfway through writing.
    def progress(p) -> None:
        if p.stage == "export" and p.step == 3:
            raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(ResourceError, match="disk filled up"):
        export(edited, ExportRequest("diffusers", tmp_path / "full"), progress)
    assert list(tmp_path.iterdir()) == []


def test_bad_requests_are_refused_in_one_sentence(edited, tmp_path: Path) -> None:
    (tmp_path / "documents").mkdir()
    (tmp_path / "documents" / "letter.txt").write_text("keep me")
    cases = [
        (ExportRequest("zip", tmp_path / "x"), "Unknown export format"),
        (ExportRequest("lora", tmp_path / "x.bin"), "must end in .safetensors"),
        (ExportRequest("edit", tmp_path / "x.safetensors", rank=0), "rank"),
        (ExportRequest("lora", tmp_path / "x.safetensors", energy=1.5), "energy"),
        (ExportRequest("diffusers", tmp_path / "documents"), "already holds other files"),
        (ExportRequest("diffusers", BUILTIN_PATH), "overwrite the model"),
    ]
    for request, message in cases:
        with pytest.raises(InputError, match=message):
            export(edited, request)
    assert (tmp_path / "documents" / "letter.txt").read_text() == "keep me"
    edited.stack.clear()
    with pytest.raises(InputError, match="no weight edit"):
        export(edited, ExportRequest("lora", tmp_path / "none.safetensors"))


# ---------------------------------------------------------------- CLI


def test_cli_exports_and_reports_errors_in_one_line(tmp_path: Path, capsys) -> None:
    from main import main

    pipe = load_model("builtin", device="cpu").pipe
    edit_path = tmp_path / "edit.safetensors"
    make_edit(pipe).save(edit_path)
    out = tmp_path / "cli.safetensors"
    code = main(["export", "--device", "cpu", "--edit", str(edit_path), "--strength", "0.5", "--format", "lora",
                 "--out", str(out), "--dtype", "fp16", "--rank", "4"])
    captured = capsys.readouterr()
    assert code == 0 and out.is_file()
    assert "check: Reopened the LoRA" in captured.out and "rank 4" in captured.out
    assert header(out)["__metadata__"]["ss_network_dim"] == "4"

    code = main(["export", "--device", "cpu", "--edit", str(tmp_path / "missing.safetensors"), "--format", "edit",
                 "--out", str(tmp_path / "e.safetensors")])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and "does not exist" in errors[0]


def test_an_edit_label_names_five_concepts_and_counts_the_rest(builtin_model) -> None:
    edit = make_edit(builtin_model.pipe)
    assert edit.label == "test-method: red"
    edit.manifest["concepts"]["targets"] = [f"c{i}" for i in range(8)]
    assert edit.label == "test-method: c0, c1, c2, c3, c4 and 3 more"
