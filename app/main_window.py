"""The studio window: assembles the panels, menus and shortcuts and binds them to the state.

No logic lives here beyond translating between widgets and the controller. The window is
shown before the engine starts, so it appears before torch is imported.
"""

from __future__ import annotations

import re
import sys
import textwrap
from pathlib import Path
from typing import Any

from PySide6.QtCore import QEvent, QSize, Qt, QTimer, QUrl
from PySide6.QtGui import QAction, QDesktopServices, QIcon, QKeySequence
from PySide6.QtWidgets import (
    QApplication,
    QDockWidget,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QMainWindow,
    QMessageBox,
    QPushButton,
    QScrollArea,
    QVBoxLayout,
    QWidget,
)

from app import session as sessions
from app.controller import Controller, stack_signature
from app.engine_jobs import MetricsResult
from app.logging_setup import install_excepthooks, log, log_path, remove_callback, setup_logging
from app.prompts import presets
from app.qt_images import difference, pil_to_qimage
from app.settings import Settings
from app.state import ErrorInfo, StackItem, StudioState
from widgets.concept_editor import ConceptEditor, concept_key
from widgets.error_banner import ErrorBanner
from widgets.history_panel import HistoryPanel
from widgets.image_grid import BeforeAfterGrid
from widgets.image_viewer import ImageViewer
from widgets.method_panel import MethodPanel
from widgets.metrics_chart import MetricsChart, MetricsData
from widgets.model_panel import ModelPanel
from widgets.prompt_panel import PromptPanel

ASSETS = Path(__file__).resolve().parent.parent / "assets"
APP_NAME = "Erasure Studio"
RESTORE_ACTION = "Restore last session"
CPU_ACTION = "Switch to CPU"


def icon(name: str) -> QIcon:
    return QIcon(str(ASSETS / "icons" / f"{name}.svg"))


class MainWindow(QMainWindow):
    def __init__(self, settings: Settings | None = None) -> None:
        super().__init__()
        self.setWindowTitle(APP_NAME)
        self.setWindowIcon(icon("app"))
        self.setAcceptDrops(True)
        self.setDockNestingEnabled(True)
        self.state = StudioState()
        self.settings = settings or Settings()
        self.controller = Controller(self.state, self.settings, self)
        doc = self.state.doc
        doc.preview.size = self.settings.preview_size
        doc.preview.steps = self.settings.preview_steps
        self._qimages: dict[int, tuple[Any, Any]] = {}
        self._diffs: dict[tuple[int, int], tuple[Any, Any, Any]] = {}
        self.diff_view = False

        self._build_central()
        self._build_docks()
        self._build_menus()
        self._build_status()
        self._bind()
        self._restore_geometry()
        self._refresh_all()

        data = self.controller.data
        self._recovered: Path | None = None
        if sessions.previous_run_crashed(data):
            self._recovered = sessions.stash_autosave(data)
            self.state.set_error(ErrorInfo("The studio did not close normally last time; your work was autosaved.",
                                           level="warning", action=RESTORE_ACTION))
        sessions.take_lock(data)
        from engine.atomic import remove_stale_temporaries

        for folder in (sessions.autosave_path(data).parent, data / "sessions"):
            remove_stale_temporaries(folder)
        install_excepthooks(self._uncaught)

    # ------------------------------------------------------------------ construction
    def _build_central(self) -> None:
        self.banner = ErrorBanner()
        self.prompt_panel = PromptPanel()
        self.grid = BeforeAfterGrid()
        self.grid.placeholder = "Starting the engine…"
        self.scroll = QScrollArea()
        self.scroll.setWidget(self.grid)
        self.scroll.setWidgetResizable(True)
        self.scroll.setObjectName("gridScroll")
        self.scroll.viewport().installEventFilter(self)
        central = QWidget()
        layout = QVBoxLayout(central)
        layout.setContentsMargins(8, 8, 8, 4)
        layout.addWidget(self.banner)
        title = QLabel("Before / after")
        title.setObjectName("sectionTitle")
        layout.addWidget(title)
        layout.addWidget(self.prompt_panel)
        layout.addWidget(self.scroll, 1)
        self.setCentralWidget(central)

    def eventFilter(self, watched, event) -> bool:
        if watched is self.scroll.viewport() and event.type() == QEvent.Type.Resize:
            self.grid.set_fit_width(event.size().width())
        return super().eventFilter(watched, event)

    def _dock(self, title: str, widget: QWidget, area: Qt.DockWidgetArea, name: str,
              scroll: bool = True) -> QDockWidget:
        dock = QDockWidget(title, self)
        dock.setObjectName(name)
        holder = QWidget()
        layout = QVBoxLayout(holder)
        layout.setContentsMargins(8, 4, 8, 8)
        layout.addWidget(widget)
        if scroll:
            area_widget = QScrollArea()
            area_widget.setWidget(holder)
            area_widget.setWidgetResizable(True)
            area_widget.setFrameShape(QScrollArea.Shape.NoFrame)
            area_widget.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
            dock.setWidget(area_widget)
        else:
            dock.setWidget(holder)
        dock.setFeatures(QDockWidget.DockWidgetFeature.DockWidgetMovable |
                         QDockWidget.DockWidgetFeature.DockWidgetClosable |
                         QDockWidget.DockWidgetFeature.DockWidgetFloatable)
        self.addDockWidget(area, dock)
        return dock

    def _build_docks(self) -> None:
        left, right = Qt.DockWidgetArea.LeftDockWidgetArea, Qt.DockWidgetArea.RightDockWidgetArea
        self.model_panel = ModelPanel()
        self.concept_editor = ConceptEditor()
        self.method_panel = MethodPanel()
        self.history = HistoryPanel()
        self.metrics = MetricsChart()
        self.metrics.empty_text = "Press Measure to judge the selected edit (built-in model)."
        self.measure_button = QPushButton("Measure")
        self.measure_button.setToolTip("Judge efficacy, generality and specificity of the current edits, and how "
                                       "often the adversarial-embedding probe brings the concept back (built-in "
                                       "model; takes a few seconds per strength)")
        self.sweep_button = QPushButton("Sweep strength")
        self.sweep_button.setToolTip("Also measure at strengths 0, 0.5, 1 and 1.5 for the curve")
        self.metrics_note = QLabel()
        self.metrics_note.setObjectName("muted")
        self.metrics_note.setWordWrap(True)
        metrics_box = QWidget()
        mlayout = QVBoxLayout(metrics_box)
        mlayout.setContentsMargins(0, 0, 0, 0)
        mlayout.addWidget(self.metrics, 1)
        mlayout.addWidget(self.metrics_note)
        buttons = QHBoxLayout()
        buttons.addWidget(self.measure_button)
        buttons.addWidget(self.sweep_button)
        mlayout.addLayout(buttons)

        self.model_dock = self._dock("Model", self.model_panel, left, "modelDock")
        self.concept_dock = self._dock("Concepts", self.concept_editor, left, "conceptDock")
        self.method_dock = self._dock("Method", self.method_panel, left, "methodDock", scroll=False)
        self.history_dock = self._dock("Edit history", self.history, right, "historyDock")
        self.metrics_dock = self._dock("Metrics", metrics_box, right, "metricsDock")
        self.resizeDocks([self.model_dock, self.history_dock], [380, 300], Qt.Orientation.Horizontal)
        self.resizeDocks([self.model_dock, self.concept_dock, self.method_dock], [150, 250, 480],
                         Qt.Orientation.Vertical)
        self.resizeDocks([self.history_dock, self.metrics_dock], [250, 420], Qt.Orientation.Vertical)

    def _action(self, menu, text: str, slot, shortcut: Any = None, tip: str = "") -> QAction:
        action = QAction(text, self)
        if shortcut is not None:
            if isinstance(shortcut, (list, tuple)):
                action.setShortcuts([QKeySequence(s) for s in shortcut])
            else:
                action.setShortcut(QKeySequence(shortcut))
        if tip:
            action.setStatusTip(tip)
        action.triggered.connect(slot)
        menu.addAction(action)
        return action

    def _build_menus(self) -> None:
        bar = self.menuBar()
        file = bar.addMenu("&File")
        self._action(file, "Load built-in model", lambda: self.model_panel.request_load("builtin"))
        self._action(file, "Open model folder…", self.model_panel.choose_folder)
        self._action(file, "Open checkpoint file…", self.model_panel.choose_file, "Ctrl+Shift+O")
        self.recent_menu = file.addMenu("Recent models")
        file.addSeparator()
        self._action(file, "Open session…", self.open_session_dialog, QKeySequence.StandardKey.Open)
        self._action(file, "Save session", self.save_session, QKeySequence.StandardKey.Save)
        self._action(file, "Save session as…", self.save_session_as, "Ctrl+Shift+S")
        file.addSeparator()
        self._action(file, "Import edit file…", self.import_edits_dialog, "Ctrl+I",
                     "Add an Erasure Studio edit (.safetensors, from 'main.py erase --out' or an export) to the "
                     "stack; it must have been made for the loaded model.")
        self.export_action = self._action(file, "Export edited model…", self.export_dialog, "Ctrl+E")
        file.addSeparator()
        self._action(file, "Quit", self.close, QKeySequence.StandardKey.Quit)

        edit = bar.addMenu("&Edit")
        self.undo_action = self._action(edit, "Undo", self.controller.undo, "Ctrl+Z")
        self.redo_action = self._action(edit, "Redo", self.controller.redo, ["Ctrl+Shift+Z", "Ctrl+Y"])
        edit.addSeparator()
        self.erase_action = self._action(edit, "Erase", self.erase, ["Ctrl+Return", "Ctrl+Enter"])
        self.cancel_action = self._action(edit, "Cancel job", self.controller.cancel, "Esc")

        view = bar.addMenu("&View")
        for dock in (self.model_dock, self.concept_dock, self.method_dock, self.history_dock, self.metrics_dock):
            view.addAction(dock.toggleViewAction())
        view.addSeparator()
        self.diff_action = self._action(view, "Difference view", self.prompt_panel.diff.toggle, "Ctrl+D")
        self._action(view, "Larger previews", lambda: self._zoom(32), "Ctrl++")
        self._action(view, "Smaller previews", lambda: self._zoom(-32), "Ctrl+-")

        help_ = bar.addMenu("&Help")
        self._action(help_, "About Erasure Studio", self.about)
        self._action(help_, "Where are the logs?", self.show_logs)

    def _build_status(self) -> None:
        self.engine_label = QLabel()
        self.job_label = QLabel()
        self.statusBar().addWidget(self.engine_label)
        self.statusBar().addPermanentWidget(self.job_label)

    def _bind(self) -> None:
        s, c = self.state, self.controller
        s.doc_changed.connect(self._on_doc)
        s.engine_changed.connect(self._on_engine)
        s.model_changed.connect(self._on_model)
        s.images_changed.connect(self._on_images)
        s.job_changed.connect(self._on_job)
        s.error_changed.connect(self._on_error)
        s.metrics_changed.connect(self._on_metrics)
        s.history_changed.connect(self._on_history)

        self.model_panel.load_requested.connect(self._load_model)
        self.concept_editor.concepts_edited.connect(c.set_concepts)
        self.concept_editor.import_requested.connect(self.import_concepts_dialog)
        self.concept_editor.preserve_import_requested.connect(self.import_preserve_dialog)
        self.concept_editor.preserve_edited.connect(c.set_preserve)
        self.method_panel.method_selected.connect(c.set_method)
        self.method_panel.param_changed.connect(c.set_param)
        self.method_panel.strength_changed.connect(lambda v: c.set_strength(v))
        self.method_panel.erase_requested.connect(self.erase)
        self.method_panel.cancel_requested.connect(c.cancel)
        self.history.enabled_changed.connect(c.set_enabled)
        self.history.strength_changed.connect(lambda i, v: c.set_strength(v, i))
        self.history.remove_requested.connect(c.remove_edit)
        self.history.save_requested.connect(self.save_edit_dialog)
        self.history.move_requested.connect(c.move_edit)
        self.history.selection_changed.connect(c.select_edit)
        self.prompt_panel.prompts_edited.connect(c.set_prompts)
        self.prompt_panel.prompts_reset.connect(c.reset_prompts)
        self.prompt_panel.seeds_edited.connect(c.set_seeds)
        self.prompt_panel.steps_changed.connect(lambda v: c.set_preview_settings(steps=v))
        self.prompt_panel.size_changed.connect(lambda v: c.set_preview_settings(size=v))
        self.prompt_panel.diff_toggled.connect(self.set_diff_view)
        self.grid.cell_clicked.connect(self.enlarge)
        self.banner.action_clicked.connect(self._banner_action)
        self.banner.dismissed.connect(lambda: s.set_error(None))
        self.measure_button.clicked.connect(lambda: c.measure(False))
        self.sweep_button.clicked.connect(lambda: c.measure(True))

    def _restore_geometry(self) -> None:
        geometry = self.settings.geometry
        if geometry is not None:
            self.restoreGeometry(geometry)
        else:
            self.resize(1500, 940)
        state = self.settings.window_state
        if state is not None:
            self.restoreState(state)
        self.model_panel.set_recent(self.settings.recent_models, self.settings.last_model)
        self.model_panel.set_choice(self.settings.device, self.settings.precision)
        self._fill_recent_menu()

    def start(self, model: str | None = None) -> None:
        """Start the engine thread and load ``model`` (default: the last model)."""
        source = model or self.settings.last_model or "builtin"
        if source != "builtin" and not Path(source).exists():
            source = "builtin"
        self.controller.start_engine(source, self.model_panel.device.currentData(),
                                     self.model_panel.precision.currentData())

    # ------------------------------------------------------------------ state -> views
    def _refresh_all(self) -> None:
        self._on_doc({"concepts", "preserve", "method", "params", "stack", "selected", "prompts", "seeds",
                      "preview"})
        self._on_engine()
        self._on_model()
        self._on_job()
        self._on_history()
        self._on_error()
        self._on_metrics()

    def _current_spec(self) -> Any:
        return self.state.methods.get(self.state.doc.method)

    def _on_doc(self, changed: set[str]) -> None:
        doc = self.state.doc
        if changed & {"concepts"}:
            self.concept_editor.set_concepts([c.__dict__.copy() for c in doc.concepts])
        if "preserve" in changed:
            self.concept_editor.set_preserve(doc.preserve)
        if changed & {"method", "params"}:
            spec = self._current_spec()
            values = doc.params.get(doc.method, {})
            if "method" in changed:
                self.method_panel.show_method(doc.method, values)
            else:
                self.method_panel.set_values(values)
            if spec is not None:
                self.concept_editor.set_columns_visible(spec.uses_guide, spec.uses_anchor)
                self.concept_editor.set_preserve_enabled(spec.uses_preserve)
        if changed & {"stack", "selected"}:
            items = [(i.label, i.strength, i.enabled, self._edit_note(i)) for i in doc.stack]
            self.history.set_items(items, doc.selected)
            selected = doc.stack[doc.selected] if 0 <= doc.selected < len(doc.stack) else None
            self.method_panel.set_strength(selected.strength if selected else None, selected.label if selected else "")
            self.metrics.set_strength(selected.strength if selected else None)
        if changed & {"prompts", "prompts_custom", "seeds", "preview"}:
            self.prompt_panel.set_values(doc.prompts, doc.prompts_custom, doc.seeds, doc.preview.steps,
                                         doc.preview.size)
        if changed & {"prompts", "seeds"}:
            self._on_images()
        self._update_enabled()

    def _edit_note(self, item: StackItem) -> str:
        """The history row's tooltip: what the edit is (as `main.py info` prints it, SLD marked as not exported)."""
        from engine.safetensors_header import describe_manifest

        edit = self.controller.edits.get(item.edit_id)
        lines = [textwrap.fill(f"{name}: {value}", 90, subsequent_indent="    ")
                 for name, value in describe_manifest(edit.manifest)] if edit else []
        return "\n".join(lines)

    def _on_engine(self) -> None:
        s = self.state
        self.engine_label.setText(s.engine_message if not s.engine_ready else
                                  f"Engine ready · {len(s.methods)} method(s)")
        if s.engine_ready:
            self.method_panel.set_methods(s.methods, s.doc.method)
            self.method_panel.show_method(s.doc.method, s.doc.params.get(s.doc.method, {}))
            spec = self._current_spec()
            if spec is not None:
                self.concept_editor.set_columns_visible(spec.uses_guide, spec.uses_anchor)
            self.model_panel.set_devices(s.cuda_available)
            if not s.methods:
                self.method_panel.description.setText("No erasure methods are installed yet.")
        else:
            self.grid.placeholder = s.engine_message
            self.grid.update()
        self._update_enabled()

    def _on_model(self) -> None:
        s = self.state
        if s.model_loading:
            self.model_panel.show_loading("Loading model…")
            self.grid.placeholder = "Loading the model…"
        elif s.model is not None:
            m = s.model
            name = "Built-in ShapesWorld model" if m.source == "builtin" else Path(m.source).name
            self.model_panel.show_loaded(f"{name}\nArchitecture: {m.architecture} · {m.device} · {m.dtype}")
            self.concept_editor.set_presets(presets(m.is_builtin))
            self.model_panel.set_recent(self.settings.recent_models, m.source)
            self._fill_recent_menu()
            self.grid.placeholder = "Add test prompts to see previews"
            self.setWindowTitle(f"{APP_NAME} — {name}")
        else:
            self.model_panel.show_loaded("No model loaded")
        self.grid.update()
        self._update_enabled()

    def _qimage(self, image: Any) -> Any:
        key = id(image)
        hit = self._qimages.get(key)
        if hit is not None and hit[0] is image:
            return hit[1]
        if len(self._qimages) > 2048:
            self._qimages.clear()
        qimage = pil_to_qimage(image)
        self._qimages[key] = (image, qimage)
        return qimage

    def _diff(self, before: Any, after: Any) -> Any:
        key = (id(before), id(after))
        hit = self._diffs.get(key)
        if hit is not None and hit[0] is before and hit[1] is after:
            return hit[2]
        if len(self._diffs) > 1024:
            self._diffs.clear()
        image = self._qimage(difference(before, after))
        self._diffs[key] = (before, after, image)
        return image

    def _on_images(self) -> None:
        s, doc = self.state, self.state.doc
        before, after, unfinished = {}, {}, set()
        for r, prompt in enumerate(doc.prompts):
            for c, seed in enumerate(doc.seeds):
                b, a = s.before.get((prompt, seed)), s.after.get((prompt, seed))
                if b is not None:
                    before[(r, c)] = self._qimage(b)
                if a is not None:
                    after[(r, c)] = self._diff(b, a) if self.diff_view and b is not None else self._qimage(a)
                if (prompt, seed) in s.intermediate:
                    unfinished.add((r, c))
        self.grid.set_content(doc.prompts, doc.seeds, before, after, unfinished,
                              "difference" if self.diff_view else "after")

    def _on_job(self) -> None:
        job = self.state.job
        if job is None:
            self.method_panel.clear_progress("Idle")
            self.job_label.setText("")
        else:
            text = job.message if job.kind == "preview" and job.message else (job.label or job.kind)
            self.method_panel.show_progress(text, job.step, job.total, job.eta_s)
            self.job_label.setText(text if not job.total else f"{text} · {job.step}/{job.total}")
            if job.kind == "load":
                self.model_panel.show_loading(job.message or "Loading model…", job.step, job.total)
        self._update_enabled()

    def _on_error(self) -> None:
        error = self.state.error
        if error is None:
            self.banner.clear()
        else:
            self.banner.show_message(error.message, error.detail, error.level, error.action)

    def _on_metrics(self) -> None:
        m = self.state.metrics
        doc = self.state.doc
        selected = doc.stack[doc.selected] if 0 <= doc.selected < len(doc.stack) else None
        if isinstance(m, MetricsResult):
            stale = m.stack_sig != stack_signature(doc.stack)
            self.metrics.set_data(MetricsData(m.efficacy, m.generality, m.specificity, m.efficacy_unedited,
                                              m.generality_unedited, m.curve, probe=m.probe_recovery),
                                  selected.strength if selected else None)
            self.metrics_note.setText("Measured for an earlier state of the edits; press Measure again."
                                      if stale else "Efficacy and generality: share of images still showing the "
                                                    "concept (lower is better). Probe: share brought back by the "
                                                    "adversarial text embedding (lower is more robust; weight "
                                                    "edits only). Ticks: unedited model.")
        else:
            self.metrics.set_data(None)
            self.metrics_note.setText("")
        builtin = self.state.model is not None and self.state.model.is_builtin
        self.measure_button.setEnabled(builtin and bool(doc.stack))
        self.sweep_button.setEnabled(builtin and bool(doc.stack))

    def _on_history(self) -> None:
        self.undo_action.setEnabled(self.state.can_undo)
        self.redo_action.setEnabled(self.state.can_redo)

    def _update_enabled(self) -> None:
        s = self.state
        running = self.controller.worker.pending_kinds()
        busy = any(k in ("erase", "evaluate", "export", "load", "open-session", "preview", "engine")
                   for k in running)
        can_erase = (s.engine_ready and s.model is not None and bool(s.methods) and "erase" not in running
                     and not s.model_loading)
        self.method_panel.set_busy(busy, can_erase)
        self.cancel_action.setEnabled(busy)
        self.erase_action.setEnabled(can_erase)
        self._on_metrics_buttons()

    def _on_metrics_buttons(self) -> None:
        builtin = self.state.model is not None and self.state.model.is_builtin
        ok = builtin and bool(self.state.doc.stack)
        self.measure_button.setEnabled(ok)
        self.sweep_button.setEnabled(ok)

    # ------------------------------------------------------------------ actions
    def _load_model(self, source: str, device: str, precision: str) -> None:
        self.settings.device = device
        self.settings.precision = precision
        self.controller.load_model(source, device, precision)

    def erase(self) -> None:
        self.prompt_panel.flush()
        self.controller.erase()

    def set_diff_view(self, on: bool) -> None:
        self.diff_view = bool(on)
        if self.prompt_panel.diff.isChecked() != self.diff_view:
            self.prompt_panel.diff.setChecked(self.diff_view)
        self._on_images()

    def _zoom(self, delta: int) -> None:
        self.grid.set_cell_size(self.grid.cell_size + delta)

    def enlarge(self, row: int, col: int) -> None:
        doc, s = self.state.doc, self.state
        if row >= len(doc.prompts) or col >= len(doc.seeds):
            return
        cell = (doc.prompts[row], doc.seeds[col])
        b, a = s.before.get(cell), s.after.get(cell)
        images = [("before", self._qimage(b) if b is not None else None),
                  ("after", self._qimage(a) if a is not None else None)]
        if b is not None and a is not None:
            images.append(("difference ×4", self._diff(b, a)))
        viewer = ImageViewer(f"“{cell[0]}” · seed {cell[1]}", images, parent=self)
        viewer.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        viewer.show()

    def _fill_recent_menu(self) -> None:
        self.recent_menu.clear()
        for source in self.settings.recent_models:
            action = self.recent_menu.addAction(source)
            action.triggered.connect(lambda _=False, src=source: self.model_panel.request_load(src))
        self.recent_menu.setEnabled(bool(self.settings.recent_models))

    def open_session_dialog(self) -> None:
        from engine.paths import sessions_dir

        path, _ = QFileDialog.getOpenFileName(self, "Open session", str(sessions_dir()),
                                              "Sessions (*.json);;All files (*)")
        if path:
            self.controller.open_session(path)

    def save_session(self) -> None:
        if self.controller.session_path is None:
            self.save_session_as()
        else:
            self.controller.save_session(self.controller.session_path)

    def save_session_as(self) -> None:
        from engine.paths import sessions_dir

        path, _ = QFileDialog.getSaveFileName(self, "Save session", str(sessions_dir() / f"studio{sessions.SUFFIX}"),
                                              "Sessions (*.json)")
        if path:
            self.controller.save_session(path)

    def import_edits_dialog(self) -> None:
        paths, _ = QFileDialog.getOpenFileNames(self, "Import edit files", self.settings.edit_folder,
                                                "Edit files (*.safetensors);;All files (*)")
        if paths:
            self.settings.edit_folder = str(Path(paths[0]).parent)
            self.controller.import_edits(paths)

    def save_edit_dialog(self, index: int) -> None:
        item = self.state.doc.stack[index]
        stem = re.sub(r"\W+", "-", item.label).strip("-")[:40] or "edit"  # "uce: red, blue" -> "uce-red-blue"
        start = str(Path(self.settings.edit_folder or Path.home()) / f"{stem}.safetensors")
        path, _ = QFileDialog.getSaveFileName(self, "Save edit", start, "Edit files (*.safetensors)")
        if path:
            path = path if path.lower().endswith(".safetensors") else path + ".safetensors"
            self.settings.edit_folder = str(Path(path).parent)
            self.controller.save_edit(index, path)

    def import_concepts_dialog(self) -> None:
        path = self._ask_concepts_file("Add concepts from a text file")
        if path:
            self.import_concepts(path)

    def import_preserve_dialog(self) -> None:
        path = self._ask_concepts_file("Add concepts to preserve from a text file")
        if path:
            self.import_preserve(path)

    def _ask_concepts_file(self, title: str) -> str:
        path, _ = QFileDialog.getOpenFileName(self, title, "", "Text files (*.txt);;All files (*)")
        return path

    def import_concepts(self, path: str | Path) -> None:
        """Add the concepts listed in a text file (one per line) to the concept list."""
        texts = self._read_concepts_file(path)
        if not texts:
            return
        builtin = self.state.model is not None and self.state.model.is_builtin
        known = {concept_key(text): kind for group in presets(builtin).values() for text, kind in group}

        def kind_of(text: str) -> str:  # a preset's kind; "by Kusama" is the style preset "Kusama"
            key = concept_key(text)
            return known.get(key) or known.get(key.removeprefix("by "), "object")

        added = self.concept_editor.add_concepts([(t, kind_of(t)) for t in texts])
        self._report_import(added, len(texts), path)

    def import_preserve(self, path: str | Path) -> None:
        """Add the concepts listed in a text file to the preserve list."""
        texts = self._read_concepts_file(path)
        if texts:
            self._report_import(self.concept_editor.add_preserve(texts), len(texts), path)

    def _read_concepts_file(self, path: str | Path) -> list[str]:
        """The file's concepts, or [] after telling the user why there are none."""
        from engine.concept_lists import read_concepts_file
        from engine.jobs import InputError

        try:
            texts = read_concepts_file(path)
        except InputError as exc:
            self.state.set_error(ErrorInfo(exc.user_message, exc.detail))
            return []
        if not texts:
            self.state.set_error(ErrorInfo(f"{Path(path).name} lists no concepts; write one per line.",
                                           level="warning"))
        return texts

    def _report_import(self, added: int, listed: int, path: str | Path) -> None:
        skipped = listed - added
        self.state.set_error(ErrorInfo(f"Added {added} concept(s) from {Path(path).name}"
                                       + (f"; {skipped} already listed." if skipped else "."), level="info"))

    def export_dialog(self) -> None:
        if self.state.model is None or not self.state.doc.stack:
            self.state.set_error(ErrorInfo("Erase a concept first; there is nothing to export yet.", level="info"))
            return
        from widgets.export_dialog import ExportContext, ExportDialog

        doc, model = self.state.doc, self.state.model
        active = [i for i in doc.stack if i.enabled and i.strength > 0]
        source = Path(model.source)
        context = ExportContext(
            model_label="the built-in ShapesWorld model" if model.source == "builtin" else source.name,
            edit_labels=[f"{i.label} ({i.strength:g})" for i in active if not i.inference_only],
            inference_labels=[i.label for i in active if i.inference_only],
            folder=(self.controller.session_path.parent if self.controller.session_path else
                    source.parent if model.source != "builtin" else None))
        dialog = ExportDialog(self, context)
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        job: list[int | None] = [None]

        def start(request: Any) -> None:
            job[0] = self.controller.export(request)

        def progress() -> None:
            status = self.state.job
            if status is not None and status.kind == "export":
                dialog.show_progress(status.step / status.total if status.total else None, status.message)

        def finished(result: Any) -> None:
            dialog.show_result(result.path, result.bytes, result.check, result.details)

        dialog.export_requested.connect(start)
        dialog.cancel_requested.connect(lambda: job[0] is not None and self.controller.worker.cancel_job(job[0]))
        connections = [(self.state.job_changed, progress), (self.controller.export_finished, finished),
                       (self.controller.export_failed, dialog.show_failure)]
        for signal, slot in connections:
            signal.connect(slot)

        def disconnect() -> None:
            for signal, slot in connections:
                signal.disconnect(slot)

        dialog.finished.connect(disconnect)
        self.export_dialog_widget = dialog
        dialog.open()

    def about(self) -> None:
        QMessageBox.about(self, f"About {APP_NAME}",
                          f"<b>{APP_NAME}</b><p>Erase concepts from Stable Diffusion models with closed-form edits, "
                          "fine-tuning or inference-time guidance, compare before and after, and export the edited "
                          "model.</p><p>Runs fully offline.</p>")

    def show_logs(self) -> None:
        path = log_path()
        box = QMessageBox(self)
        box.setWindowTitle("Logs")
        box.setText(f"Logs are written to:\n{path}")
        open_button = box.addButton("Open folder", QMessageBox.ButtonRole.ActionRole)
        box.addButton(QMessageBox.StandardButton.Close)
        box.exec()
        if box.clickedButton() is open_button:
            QDesktopServices.openUrl(QUrl.fromLocalFile(str(path.parent)))

    def _banner_action(self, action: str) -> None:
        self.state.set_error(None)
        if action == RESTORE_ACTION and self._recovered is not None:
            self.controller.open_session(self._recovered)
        elif action == CPU_ACTION and self.state.model is not None:
            self.model_panel.set_choice("cpu", "fp32")
            self._load_model(self.state.model.source, "cpu", "fp32")

    def _uncaught(self, message: str, detail: str) -> None:
        # may be called from the worker thread's excepthook: hop to the GUI thread
        QTimer.singleShot(0, self, lambda: self.state.set_error(ErrorInfo(message, detail)))

    # ------------------------------------------------------------------ drag and drop, closing
    def dragEnterEvent(self, event) -> None:
        if event.mimeData().hasUrls():
            event.acceptProposedAction()

    def dropEvent(self, event) -> None:
        paths = [u.toLocalFile() for u in event.mimeData().urls() if u.isLocalFile()]
        if paths:
            self.open_paths(paths)
            event.acceptProposedAction()

    def open_paths(self, paths: list[str]) -> None:
        """Dropped files: a session, edit files (added to the stack), or else a model to load."""
        from engine.safetensors_header import is_edit_file

        edits = [p for p in paths if p.lower().endswith(".safetensors") and is_edit_file(p)]
        if paths[0].endswith(".json"):
            self.controller.open_session(paths[0])
        elif edits:
            self.controller.import_edits(edits)
        else:
            self.model_panel.request_load(paths[0])

    def closeEvent(self, event) -> None:
        log.info("closing the window")
        self.controller.shutdown()
        self.settings.geometry = self.saveGeometry()
        self.settings.window_state = self.saveState()
        self.settings.sync()
        sessions.release_lock(self.controller.data)
        remove_callback(self._uncaught)
        super().closeEvent(event)

    def sizeHint(self) -> QSize:
        return QSize(1500, 940)


def load_style(app: QApplication) -> None:
    qss = ASSETS / "style.qss"
    if qss.is_file():
        app.setStyleSheet(qss.read_text(encoding="utf-8"))


def run_app(argv: list[str] | None = None) -> int:
    """Open the studio window; returns the exit code."""
    path = setup_logging()
    log.info("starting %s; log at %s", APP_NAME, path)
    app = QApplication.instance() or QApplication(argv if argv is not None else sys.argv)
    app.setApplicationName(APP_NAME)
    load_style(app)
    window = MainWindow()
    window.show()
    # the window paints first; then the worker thread imports torch and loads the model
    QTimer.singleShot(0, window.start)
    code = app.exec()
    log.info("exited with %s", code)
    return int(code)
