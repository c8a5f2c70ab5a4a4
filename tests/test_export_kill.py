"""A killed export leaves nothing at the target, and its temporary is swept on the next start.

The export runs in a real subprocess that is SIGKILLed while it is writing: no Python
cleanup runs, exactly like a crash or a power cut of the process.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from engine.atomic import TEMP_MARK, atomic_path, remove_stale_temporaries

ROOT = Path(__file__).resolve().parent.parent

CHILD = r"""
import sys, time
import torch
import engine
from engine.edits import EditDelta
from engine.export import ExportRequest, export
from engine.model import load_model

fmt, out = sys.argv[1], sys.argv[2]
model = load_model("builtin", device="cpu", dtype=torch.float32)
name = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"
delta = 0.01 * torch.ones_like(model.pipe.unet.get_parameter(name))
model.stack.push(EditDelta.create(model.pipe, {"unet." + name: delta}, "test", {"targets": ["red"]}, {}))

def progress(p):
    if p.stage == "export" and p.total and p.step >= p.total // 2:
        print("HALFWAY", flush=True)
        time.sleep(300)  # killed here, with half the tensors on disk

export(model, ExportRequest(fmt, out), progress)
print("FINISHED", flush=True)
"""


def _kill_halfway(fmt: str, target: Path) -> int:
    """Start an export in a child process, SIGKILL it halfway through writing; returns its pid."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", CHILD, fmt, str(target)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        deadline = time.monotonic() + 240
        line = ""
        while time.monotonic() < deadline:
            ready, _, _ = select.select([proc.stdout], [], [], 1.0)
            if ready:
                line = proc.stdout.readline()
                if line.strip() in ("HALFWAY", "FINISHED") or not line:
                    break
        assert line.strip() == "HALFWAY", f"the child did not reach the middle of writing ({line!r})"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()  # reaped: its pid no longer counts as a live writer
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    return proc.pid


@pytest.mark.parametrize("fmt,name", [("single-file", "model.safetensors"), ("diffusers", "model-folder")])
def test_sigkill_while_writing_leaves_no_target_and_the_next_start_sweeps_the_temporary(
        tmp_path: Path, fmt: str, name: str) -> None:
    target = tmp_path / name
    pid = _kill_halfway(fmt, target)
    assert not target.exists()
    stale = [p for p in tmp_path.iterdir() if p.name.startswith(TEMP_MARK)]
    assert [p.name for p in stale] == [f"{TEMP_MARK}{pid}-{name}"]
    assert stale[0].stat().st_size > 0 or any(stale[0].iterdir())  # half-written, not empty

    assert remove_stale_temporaries(tmp_path) == stale
    assert list(tmp_path.iterdir()) == []


def test_the_export_job_sweeps_stale_temporaries_of_its_folder(builtin_model, tmp_path: Path) -> None:
    from engine.edits import EditDelta
    from engine.export import ExportRequest, export

    pid = _kill_halfway("single-file", tmp_path / "killed.safetensors")
    assert any(p.name.startswith(f"{TEMP_MARK}{pid}-") for p in tmp_path.iterdir())
    name = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_v.weight"
    delta = 0.01 * torch.ones_like(builtin_model.pipe.unet.get_parameter(name))
    builtin_model.stack.push(EditDelta.create(builtin_model.pipe, {"unet." + name: delta}, "test", {}, {}))
    try:
        export(builtin_model, ExportRequest("edit", tmp_path / "next.safetensors"))
    finally:
        builtin_model.stack.clear()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["next.safetensors"]


def test_temporaries_of_running_writers_are_left_alone(tmp_path: Path) -> None:
    live = tmp_path / f"{TEMP_MARK}{os.getpid()}-busy.safetensors"  # ours: still being written
    live.write_bytes(b"partial")
    dead_pid = _dead_pid()
    dead = tmp_path / f"{TEMP_MARK}{dead_pid}-crashed.safetensors"
    dead.write_bytes(b"partial")
    unknown = tmp_path / f"{TEMP_MARK}legacy-name"
    unknown.write_bytes(b"?")
    assert sorted(remove_stale_temporaries(tmp_path)) == sorted([dead, unknown])
    assert live.exists()


def test_a_kill_between_the_two_renames_of_a_folder_replacement_restores_the_previous_version(
        tmp_path: Path) -> None:
    # atomic_path moved the old folder aside, then the process died before the new one arrived.
    aside = tmp_path / f"{TEMP_MARK}old-{_dead_pid()}-export"
    aside.mkdir()
    (aside / "model_index.json").write_text("{}")
    remove_stale_temporaries(tmp_path)
    assert (tmp_path / "export" / "model_index.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["export"]


def test_a_failed_folder_replacement_keeps_the_previous_version(tmp_path: Path) -> None:
    target = tmp_path / "export"
    target.mkdir()
    (target / "weights").write_text("previous")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "weights").write_text("new, half-written")
        raise RuntimeError("failed halfway")
    assert (target / "weights").read_text() == "previous"
    assert [p.name for p in tmp_path.iterdir()] == ["export"]


def _dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid
