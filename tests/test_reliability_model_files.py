"""Hostile and broken model files: one sentence from the CLI (exit 2), a banner in the studio, and the
model that was already loaded stays loaded, bit for bit, and usable.

The engine-level messages for most of these files are already checked in tests/test_loading.py
(test_bad_inputs_give_one_plain_sentence, test_malicious_ckpt_is_refused_without_running); this file
drives the same files through the two front ends a user has, and adds the cases it lacks (a .ckpt of an
unknown architecture, an SDXL diffusers folder, a path with spaces and non-ASCII characters).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import weights_digest
from safetensors.torch import save_file
from test_gui_flow import idle, open_window, studio_home  # noqa: F401  (studio_home is a fixture)
from test_loading import _Marker, _one_sentence, _safetensors_with, _tiny_state, _write

from engine.ldm_keys import pipeline_to_ldm_state_dict
from engine.safetensors_header import MANIFEST_KEY

ROOT = Path(__file__).resolve().parent.parent


def build_hostile_files(folder: Path, tiny_sd1_dir: Path) -> dict[str, tuple[Path, str]]:
    """Each hostile file or folder, with a phrase its one-sentence refusal must contain."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(8)
    tiny = _tiny_state(tiny_sd1_dir)  # a real SD1-layout checkpoint, only with tiny widths
    real = _safetensors_with(folder, "real.safetensors", tiny)
    whole = real.read_bytes()
    real.unlink()
    header_len = int.from_bytes(whole[:8], "little")
    marker = folder / "pwned.txt"
    evil = _Marker()
    evil.path = str(marker)
    evil_ckpt = folder / "evil.ckpt"
    torch.save({"state_dict": {"model.diffusion_model.out.2.weight": torch.zeros(2)}, "callback": evil},
               str(evil_ckpt))
    unknown_ckpt = folder / "unknown architecture.ckpt"
    torch.save({"state_dict": tiny, "global_step": 3}, str(unknown_ckpt))
    x = torch.zeros(1)
    sdxl = {"conditioner.embedders.0.transformer.text_model.final_layer_norm.weight": x,
            "conditioner.embedders.1.model.ln_final.weight": x.clone(), "model.diffusion_model.out.2.weight": x.clone()}
    sdxl_folder = folder / "sdxl-folder"
    sdxl_folder.mkdir()
    (sdxl_folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionXLPipeline"}))
    no_index = folder / "no-index"
    (no_index / "unet").mkdir(parents=True)
    (no_index / "unet" / "config.json").write_text("{}")
    edit_file = folder / "red edit.safetensors"  # what `erase --out` writes, given where a model belongs
    save_file({"unet.conv_in.bias": torch.zeros(2)}, str(edit_file), metadata={MANIFEST_KEY: json.dumps({})})
    return {
        "an edit file, not a model": (edit_file, "is an Erasure Studio edit, not a model"),
        "zero bytes": (_write(folder / "empty.safetensors", b""), "empty"),
        "random bytes": (_write(folder / "random.safetensors", rng.bytes(20000)), "not a model file"),
        "header claims more data": (_write(folder / "claims.safetensors", whole[:50000]), "incomplete"),
        "truncated data": (_write(folder / "truncated.safetensors", whole[: 8 + header_len + 100]), "incomplete"),
        "header not JSON": (_write(folder / "nonjson.safetensors",
                                   (64).to_bytes(8, "little") + b"{" + rng.bytes(63) + rng.bytes(500)),
                            "not a model file"),
        "pickle that runs code": (evil_ckpt, "could run code"),
        "ckpt of an unknown architecture": (unknown_ckpt, "matches no Stable Diffusion"),
        "SDXL file": (_safetensors_with(folder, "sdxl.safetensors", sdxl), "SDXL"),
        "SDXL folder": (sdxl_folder, "SDXL"),
        "folder without model_index.json": (no_index, "no model_index.json"),
    }


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory, tiny_sd1_dir: Path) -> dict[str, tuple[Path, str]]:
    return build_hostile_files(tmp_path_factory.mktemp("hostile") / "my files ü", tiny_sd1_dir)


def _marker_of(hostile: dict[str, tuple[Path, str]]) -> Path:
    return hostile["pickle that runs code"][0].with_name("pwned.txt")


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def test_engine_refuses_each_file_in_one_sentence(hostile) -> None:
    """The cases test_loading does not cover, at the engine: unknown-architecture .ckpt, SDXL folder."""
    from engine.jobs import ModelLoadError
    from engine.model import load_model

    for name in ("an edit file, not a model", "ckpt of an unknown architecture", "SDXL folder", "header not JSON", "truncated data"):
        path, expected = hostile[name]
        with pytest.raises(ModelLoadError) as info:
            load_model(path, device="cpu")
        assert expected in info.value.user_message and _one_sentence(info.value.user_message), name
    assert not _marker_of(hostile).exists()


def test_cli_prints_one_sentence_and_exits_2(hostile, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from main import main

    for name, (path, expected) in hostile.items():
        out = tmp_path / name.replace(" ", "-")
        code = main(["generate", "--model", str(path), "--prompt", "a red circle", "--steps", "2", "--device", "cpu",
                     "--out", str(out)])
        err = capsys.readouterr().err
        errors = _error_lines(err)
        assert code == 2, (name, err)
        assert len(errors) == 1 and expected in errors[0], (name, err)
        assert _one_sentence(errors[0].removeprefix("error: ")), errors[0]
        assert "Traceback" not in err
        assert not out.exists()
    assert not _marker_of(hostile).exists()


def test_cli_refuses_the_code_running_pickle_in_a_fresh_process(hostile, tmp_path: Path) -> None:
    """The real exit status of `python main.py`, and the pickle's payload never ran in that process either."""
    path, expected = hostile["pickle that runs code"]
    result = subprocess.run([sys.executable, "main.py", "generate", "--model", str(path), "--prompt", "x",
                             "--out", str(tmp_path / "out"), "--device", "cpu"], cwd=ROOT, capture_output=True,
                            text=True, timeout=240, check=False, env={**os.environ, "PYTHONPATH": str(ROOT)})
    errors = _error_lines(result.stderr)
    assert result.returncode == 2, result.stderr[-2000:]
    assert len(errors) == 1 and expected in errors[0]
    assert not _marker_of(hostile).exists()


# ---------------------------------------------------------------- paths with spaces and non-ASCII characters
@pytest.fixture(scope="module")
def odd_paths(tmp_path_factory: pytest.TempPathFactory, builtin_model) -> dict[str, Path]:
    from safetensors.torch import save_file

    from engine.model import BUILTIN_PATH

    base = tmp_path_factory.mktemp("odd") / "Mes modèles ü" / "形状 world"
    base.mkdir(parents=True)
    file = base / "shapes wörld 模型.safetensors"
    save_file(pipeline_to_ldm_state_dict(builtin_model.pipe), str(file))
    folder = base / "dossier à espaces"
    shutil.copytree(BUILTIN_PATH, folder)
    return {"file": file, "folder": folder}


def test_cli_works_with_spaces_and_non_ascii_paths(odd_paths, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from main import main

    for kind, path in odd_paths.items():
        out = tmp_path / f"images {kind} ñ 图"
        code = main(["generate", "--model", str(path), "--prompt", "a red circle", "--seeds", "0-1", "--steps", "3",
                     "--device", "cpu", "--out", str(out)])
        assert code == 0, capsys.readouterr().err
        assert sorted(p.name for p in out.iterdir()) == ["0.png", "1.png", "grid.png"]


def test_studio_shows_a_banner_keeps_the_loaded_model_and_opens_odd_paths(qtbot, studio_home,  # noqa: F811
                                                                         hostile, odd_paths) -> None:
    window = open_window(qtbot)
    try:
        s = window.state
        loaded = window.controller.worker.context.model
        digest = weights_digest(loaded)
        for name, (path, expected) in hostile.items():
            s.set_error(None)
            window.model_panel.request_load(str(path))
            idle(qtbot, window)
            assert s.error is not None and s.error.level == "error", name
            assert expected in s.error.message and _one_sentence(s.error.message), (name, s.error.message)
            assert window.banner.isVisible(), name
            assert s.model is not None and s.model.source == "builtin" and not s.model_loading, name
            assert window.controller.worker.context.model is loaded, name
        assert not _marker_of(hostile).exists()
        assert weights_digest(loaded) == digest
        # still usable: a preview for a seed never rendered before arrives, without an error
        s.set_error(None)
        window.controller.set_seeds([0, 1, 9])
        idle(qtbot, window)
        assert s.error is None
        assert all((prompt, 9) in s.before and (prompt, 9) in s.after for prompt in s.doc.prompts)

        # a folder with spaces and non-ASCII characters loads like any other
        window.model_panel.request_load(str(odd_paths["folder"]))
        idle(qtbot, window)
        assert s.error is None or s.error.level != "error", s.error
        assert s.model.source == str(odd_paths["folder"]) and s.model.architecture == "shapesworld"
        assert window.controller.worker.context.model is not loaded
        assert s.before and all(image is not None for image in s.before.values())
    finally:
        window.close()
