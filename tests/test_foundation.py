"""Issue 2's foundation: reproducible CLI output, engine without Qt, offline, cancellable, documented setup."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.jobs import Cancelled, CancelToken, Progress

ROOT = Path(__file__).resolve().parent.parent


def _run(args: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONHASHSEED": "random"}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)


def test_generate_cli_twice_writes_byte_identical_pngs(tmp_path: Path) -> None:
    outs = [tmp_path / "a", tmp_path / "b"]
    for out in outs:
        result = _run(["main.py", "generate", "--model", "builtin", "--prompt", "a red circle", "--seeds", "0-1",
                       "--steps", "4", "--device", "cpu", "--out", str(out)])
        assert result.returncode == 0, result.stderr[-2000:]
    names = sorted(p.name for p in outs[0].iterdir())
    assert names == ["0.png", "1.png", "grid.png"]
    for name in names:
        assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes(), name


def test_generate_cli_writes_a_png_file_when_out_names_one(tmp_path: Path) -> None:
    from main import main

    common = ["generate", "--model", "builtin", "--device", "cpu", "--prompt", "a red circle", "--steps", "2"]
    # the same seeds in each pair of runs: a batch of two may round a pixel differently from one image alone
    assert main([*common, "--seeds", "0", "--out", str(tmp_path / "alone")]) == 0
    assert main([*common, "--seeds", "0", "--out", str(tmp_path / "one.png")]) == 0
    assert main([*common, "--seeds", "0-1", "--out", str(tmp_path / "folder")]) == 0
    assert main([*common, "--seeds", "0-1", "--out", str(tmp_path / "sub" / "two.png")]) == 0
    assert (tmp_path / "one.png").is_file()
    assert (tmp_path / "one.png").read_bytes() == (tmp_path / "alone" / "0.png").read_bytes()
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["two-0.png", "two-1.png", "two.png"]
    assert (tmp_path / "sub" / "two.png").read_bytes() == (tmp_path / "folder" / "grid.png").read_bytes()
    assert (tmp_path / "sub" / "two-1.png").read_bytes() == (tmp_path / "folder" / "1.png").read_bytes()


def test_cli_errors_print_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from main import main

    code = main(["generate", "--model", str(tmp_path / "nothing here.safetensors"), "--prompt", "x",
                 "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("error: There is no model")
    assert not (tmp_path / "out").exists()


def test_help_lists_the_generate_subcommand() -> None:
    from main import build_parser

    assert "generate" in build_parser().format_help()


def test_engine_does_not_import_qt() -> None:
    """Every engine module imports without PySide6 (checked in a fresh interpreter)."""
    code = ("import pkgutil, importlib, sys, engine\n"
            "names = [m.name for m in pkgutil.iter_modules(engine.__path__)]\n"
            "for n in ['model', 'generate'] + names: importlib.import_module('engine.' + n)\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('PySide6', 'shiboken6', 'superqt'))\n"
            "print('QT:' + ','.join(bad))\n")
    result = _run(["-c", code])
    assert result.returncode == 0, result.stderr[-2000:]
    assert "QT:\n" in result.stdout or result.stdout.strip().endswith("QT:"), result.stdout


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every attempt to open a network connection is recorded and refused."""
    attempts: list[str] = []

    def refuse(*args, **kwargs):
        attempts.append(repr(args[:2]))
        raise OSError("network access is blocked in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    return attempts


def test_loading_and_generating_open_no_connection(no_network: list[str], tiny_sd1_dir: Path,
                                                   tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from engine.generate import GenerationRequest, generate
    from engine.ldm_keys import pipeline_to_ldm_state_dict
    from engine.model import load_model

    builtin = load_model("builtin", device="cpu")
    images = generate(builtin, GenerationRequest(prompt="a blue square", seeds=[3], steps=2))
    assert images[0].size == (64, 64)
    file = tmp_path / "tiny.safetensors"
    save_file(pipeline_to_ldm_state_dict(load_model(tiny_sd1_dir, device="cpu").pipe), str(file))
    tiny = load_model(file, device="cpu", config=tiny_sd1_dir)
    generate(tiny, GenerationRequest(prompt="a cat", seeds=[0], steps=2, scheduler="dpm++"))
    sd = pipeline_to_ldm_state_dict(builtin.pipe)
    save_file(sd, str(tmp_path / "sw.safetensors"))
    load_model(tmp_path / "sw.safetensors", device="cpu")  # skeleton/config choice without a config argument
    assert no_network == []


def test_cancel_at_step_2_of_50_returns_fast_and_leaves_the_model_unchanged(builtin_model) -> None:
    from engine.generate import GenerationRequest, generate

    before = {k: v.clone() for k, v in builtin_model.pipe.unet.state_dict().items()}
    before.update({"te." + k: v.clone() for k, v in builtin_model.pipe.text_encoder.state_dict().items()})
    token = CancelToken()
    steps: list[int] = []
    cancelled_at: list[float] = []

    def progress(p: Progress) -> None:
        steps.append(p.step)
        if p.step == 2 and not token.cancelled:
            cancelled_at.append(time.perf_counter())
            token.cancel()

    with pytest.raises(Cancelled):
        generate(builtin_model, GenerationRequest(prompt="a green triangle", seeds=[0], steps=50),
                 progress=progress, cancel=token)
    elapsed = time.perf_counter() - cancelled_at[0]
    assert elapsed < 1.0, f"took {elapsed:.2f} s after the cancel"
    assert max(steps) <= 3
    after = {k: v for k, v in builtin_model.pipe.unet.state_dict().items()}
    after.update({"te." + k: v for k, v in builtin_model.pipe.text_encoder.state_dict().items()})
    assert all(torch.equal(before[k], after[k]) for k in before)
    # and it still generates exactly as a never-cancelled model does
    again = generate(builtin_model, GenerationRequest(prompt="a green triangle", seeds=[0], steps=3))
    assert np.asarray(again[0]).std() > 0


def test_cancel_from_another_thread(builtin_model) -> None:
    """The GUI cancels from its own thread while the engine thread samples."""
    from engine.generate import GenerationRequest, generate

    token = CancelToken()
    started = threading.Event()

    def progress(p: Progress) -> None:
        if p.step >= 1:
            started.set()

    result: list[BaseException] = []

    def job() -> None:
        try:
            generate(builtin_model, GenerationRequest(prompt="a circle", seeds=[0], steps=200), progress, token)
        except Exception as exc:  # noqa: BLE001  (the test inspects what the job raised)
            result.append(exc)

    thread = threading.Thread(target=job)
    thread.start()
    assert started.wait(60)
    token.cancel()
    thread.join(60)
    assert not thread.is_alive()
    assert result and isinstance(result[0], Cancelled)


# ---------------------------------------------------------------- setup, README, CI
def test_readme_starts_with_the_two_setup_commands() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    first_section = text.split("\n## ", 2)[1]
    blocks = re.findall(r"```(?:sh|bash)?\n(.*?)```", first_section, flags=re.DOTALL)
    commands = [line for line in blocks[0].splitlines() if line.strip()]
    assert commands == ["bash scripts/run-studio.sh", "bash scripts/run-tests.sh"]
    for command in commands:
        assert (ROOT / command.split()[1]).is_file()
    assert "python main.py --help" in text
    assert "ERASURE_STUDIO_HOME" in text


def test_ci_runs_the_readme_test_command() -> None:
    ci = ROOT / ".ci" / "run"
    assert os.access(ci, os.X_OK)
    assert "scripts/run-tests.sh" in ci.read_text(encoding="utf-8")
    runner = (ROOT / "scripts" / "run-tests.sh").read_text(encoding="utf-8")
    assert "QT_QPA_PLATFORM=offscreen" in runner and "-m pytest" in runner and '"$status" -eq 5' in runner


def test_setup_is_a_no_op_when_nothing_changed() -> None:
    """The second run of the setup script installs nothing (it finds its stamp) and is quick."""
    if Path(sys.prefix).resolve() != (ROOT / ".venv").resolve():
        pytest.skip("runs only inside the project's own .venv")
    for _ in range(2):
        result = subprocess.run(["bash", str(ROOT / "scripts" / "setup-env.sh"), "--test"], capture_output=True,
                                text=True, timeout=900, check=False)
        assert result.returncode == 0, result.stderr[-2000:]
    assert "Installing" not in result.stderr


def test_ruff_is_clean() -> None:
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "."], cwd=ROOT, capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 0, result.stdout[-3000:]
