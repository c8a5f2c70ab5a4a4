"""Crash safety: a process killed with SIGKILL (no cleanup of any kind runs) loses nothing it had saved.

* An export killed halfway through writing leaves the previous export at the target, byte for byte and
  still loadable (tests/test_export_kill.py checks the case with no previous export, the sweep of the
  temporaries, and a kill between the two renames of a folder replacement).
* The studio autosaves by itself; after the studio process is killed, the next start offers to restore
  the last session, and restoring brings back the concepts and the edit stack.
"""

from __future__ import annotations

import hashlib
import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_export_kill import _kill_halfway
from test_gui_flow import WAIT_MS, idle, open_window, studio_home  # noqa: F401  (studio_home is a fixture)

from engine.atomic import TEMP_MARK, remove_stale_temporaries

ROOT = Path(__file__).resolve().parent.parent


def tree_digest(path: Path) -> str:
    """SHA-256 over a file, or over every file (relative name and bytes) under a folder."""
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        digest.update(str(file.relative_to(path.parent)).encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()


@pytest.mark.slow
@pytest.mark.parametrize("fmt,name", [("single-file", "model.safetensors"), ("diffusers", "model-folder")])
def test_sigkill_while_writing_keeps_the_previous_export(fmt: str, name: str, builtin_model, tmp_path: Path) -> None:
    from engine.export import ExportRequest, export
    from engine.model import load_model

    target = tmp_path / name
    export(builtin_model, ExportRequest(fmt, target))  # the previous export: the unedited model
    before = tree_digest(target)

    pid = _kill_halfway(fmt, target)  # the child exports an edited model to the same target

    assert tree_digest(target) == before  # not a byte of the previous export changed
    stale = [p.name for p in tmp_path.iterdir() if p.name.startswith(TEMP_MARK)]
    assert stale == [f"{TEMP_MARK}{pid}-{name}"]  # the half-written new one is only a temporary
    remove_stale_temporaries(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [name] and tree_digest(target) == before
    assert load_model(target, device="cpu").architecture == "shapesworld"


# ---------------------------------------------------------------- the studio's autosave
STUDIO_CHILD = r"""
import json, os, sys, time
os.environ["QT_QPA_PLATFORM"] = "offscreen"
from PySide6.QtWidgets import QApplication
app = QApplication([])
from app.main_window import MainWindow
from app.session import autosave_path, lock_path

def wait_for(condition, what, timeout=240):
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            sys.exit(f"timed out waiting for {what}")
        app.processEvents()
        time.sleep(0.02)

def autosaved_stack():
    try:
        return json.loads(autosave_path(window.controller.data).read_text())["document"]["stack"]
    except (OSError, ValueError, KeyError):
        return []

window = MainWindow()
window.show()
window.start("builtin")
wait_for(lambda: window.state.model is not None and window.state.engine_ready, "the model")
window.controller.set_preview_settings(steps=8)  # short previews, as in the in-process GUI tests
window.concept_editor.add_concept("red", "color")
window.controller.set_method("uce")
window.controller.set_param("vocabulary_sample", 20)
window.erase()
wait_for(lambda: len(window.state.doc.stack) == 1, "the erasure")
wait_for(lambda: len(autosaved_stack()) == 1, "the autosave")  # written by the studio's own timer
assert lock_path(window.controller.data).read_text().strip() == str(os.getpid())
print("AUTOSAVED", flush=True)
time.sleep(600)  # killed here, window open, as by a crash or a power cut
"""


def _run_studio_and_kill(home: Path) -> int:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ERASURE_STUDIO_HOME": str(home)}
    errors = home.parent / "studio-child.stderr"  # a file, not a pipe: a full pipe would stall the child
    with open(errors, "w") as err:
        proc = subprocess.Popen([sys.executable, "-c", STUDIO_CHILD], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                stderr=err, text=True)
    line = ""
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            ready, _, _ = select.select([proc.stdout], [], [], 1.0)
            if ready:
                line = proc.stdout.readline()
                if line.strip() == "AUTOSAVED":
                    break
        assert line.strip() == "AUTOSAVED", f"the studio did not autosave ({line!r}): {errors.read_text()[-2000:]}"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()  # reaped: its pid no longer belongs to a running process
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    return proc.pid


@pytest.mark.slow
def test_after_the_studio_is_killed_the_next_start_offers_to_restore(qtbot, studio_home) -> None:  # noqa: F811
    from app.main_window import RESTORE_ACTION
    from app.session import autosave_path, lock_path

    pid = _run_studio_and_kill(studio_home)
    assert lock_path(studio_home).read_text().strip() == str(pid)  # nothing cleaned up after the kill
    saved = json.loads(autosave_path(studio_home).read_text())
    assert [c["text"] for c in saved["document"]["concepts"]] == ["red"]

    window = open_window(qtbot)
    try:
        s = window.state
        assert s.error is not None and s.error.action == RESTORE_ACTION and window.banner.isVisible()
        assert s.doc.stack == []  # nothing is restored without asking
        window.banner.action_button.click()
        qtbot.waitUntil(lambda: len(s.doc.stack) == 1, timeout=WAIT_MS)
        idle(qtbot, window)
        assert [c.text for c in s.doc.concepts] == ["red"] and s.doc.stack[0].method == "uce"
        assert s.error is None or s.error.level != "error", s.error
        assert lock_path(studio_home).read_text().strip() == str(os.getpid())  # this run holds the lock now
    finally:
        window.close()
