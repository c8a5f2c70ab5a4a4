"""`main.py screenshot`: render the studio window in its key states to PNG files.

Drives the real window on the built-in model: starting up, empty, after an erasure (with
metrics), the difference view, while a preview and while a fine-tuning job run, and with
an error banner. Runs under any Qt platform (xvfb-run for real fonts, or offscreen).
Settings and autosaves go to a throw-away data folder, never the user's.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

SIZE = (1500, 940)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("screenshot", help="render the studio window in key states to PNG files")
    p.add_argument("--out", type=Path, default=Path("docs/screenshots"), help="output folder")
    p.add_argument("--no-metrics", action="store_true", help="skip the metrics measurement (faster)")
    p.add_argument("--steps", type=int, default=16, help="preview and measurement sampling steps")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    os.environ["ERASURE_STUDIO_HOME"] = tempfile.mkdtemp(prefix="erasure-studio-screens-")
    from PySide6.QtWidgets import QApplication

    from app.logging_setup import setup_logging
    from app.main_window import MainWindow, load_style

    setup_logging()
    app = QApplication.instance() or QApplication(["erasure-studio"])
    load_style(app)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    def pump(condition: Callable[[], bool], timeout: float = 600.0) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            app.processEvents()
            if condition():
                return True
            time.sleep(0.01)
        return condition()

    def settle(seconds: float = 0.3) -> None:
        pump(lambda: False, seconds)

    def shot(name: str) -> None:
        settle()
        path = out / f"{name}.png"
        window.grab().save(str(path))
        written.append(path)
        print(f"wrote {path}")

    window = MainWindow()
    window.resize(*SIZE)
    window.show()
    c, s = window.controller, window.state
    settle(0.2)
    window.start("builtin")
    pump(lambda: not s.engine_ready and "torch" in s.engine_message.lower() or s.engine_ready, 30)
    shot("00-starting")

    pump(lambda: s.model is not None and s.engine_ready, 600)
    c.set_preview_settings(steps=args.steps)
    c.set_seeds([0, 1])
    pump(lambda: not c.busy)
    shot("01-empty")

    window.concept_editor.add_concept("red", "color")
    if "uce" in s.methods:
        c.set_method("uce")
    pump(lambda: not c.busy)
    c.erase()
    pump(lambda: len(s.doc.stack) == 1 or (s.error is not None and s.error.level == "error"))
    pump(lambda: not c.busy)
    if not args.no_metrics and s.doc.stack:
        c.measure(sweep=True)
        pump(lambda: not c.busy, 1200)
    window.history.list.setCurrentRow(0)
    shot("02-after-erasure")

    window.set_diff_view(True)
    shot("03-difference-view")
    window.set_diff_view(False)

    if s.doc.stack:
        window.method_panel.strength.setValue(0.6)
        pump(lambda: bool(s.intermediate) and s.job is not None and s.job.kind == "preview" and s.job.step > 3, 60)
        shot("04-during-preview")
        pump(lambda: not c.busy)

    esd = next((m for m in ("esd-x", "esd-u") if m in s.methods), None)
    if esd is not None:
        c.set_method(esd)
        c.erase()
        pump(lambda: s.job is not None and s.job.kind == "erase" and s.job.step >= 5, 120)
        shot("05-during-erase")
        c.cancel()
        pump(lambda: not c.busy)
        c.set_method("uce" if "uce" in s.methods else esd)

    broken = Path(os.environ["ERASURE_STUDIO_HOME"]) / "broken.safetensors"
    broken.write_bytes(b"not a checkpoint" * 64)
    window.model_panel.request_load(str(broken))
    pump(lambda: s.error is not None and s.error.level == "error" and not c.busy)
    window.banner.details_button.setChecked(False)
    shot("06-error-banner")

    window.close()
    print(f"{len(written)} screenshot(s) in {out}")
    return 0
