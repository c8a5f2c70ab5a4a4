"""File → Export: choose a format, precision, LoRA rank, target; see what will be written; see the result.

The dialog knows nothing about the engine. It emits ``export_requested`` with an
``ExportDialogRequest`` (the same fields as ``engine.export.ExportRequest``, which accepts it
as it is); the GUI runs the export on the engine thread and reports back with
``show_progress`` / ``show_result`` / ``show_failure``. While the job runs, Cancel emits
``cancel_requested``.

Three pages: the form (with a live summary of what will be written and any reason it
cannot be), progress, and the result (path, size, the check that passed, details).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt, QUrl, Signal
from PySide6.QtGui import QDesktopServices
from PySide6.QtWidgets import (
    QButtonGroup,
    QComboBox,
    QDialog,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QRadioButton,
    QSpinBox,
    QStackedWidget,
    QVBoxLayout,
    QWidget,
)

SUFFIX = ".safetensors"
# (key, title, one sentence on what it is for); keys match engine.export.FORMATS
FORMATS = (
    ("diffusers", "Diffusers folder",
     "The whole edited model as a folder diffusers loads with from_pretrained, with a model card."),
    ("single-file", "Single file (.safetensors)",
     ("The whole edited model as one checkpoint in the original Stable Diffusion layout, for AUTOMATIC1111 "
     "and ComfyUI.")),
    ("lora", "LoRA (kohya)",
     "Only the change, as a small low-rank file that loaders apply to the unedited base model."),
    ("edit", "Erasure Studio edit file",
     "Only the change, exactly, as one edit that Erasure Studio re-applies to this base model."),
)
FORMAT_KEYS = tuple(key for key, _, _ in FORMATS)
DEFAULT_NAMES = {"diffusers": "{stem}-erased", "single-file": "{stem}-erased.safetensors",
                 "lora": "{stem}-erase-lora.safetensors", "edit": "{stem}-erase-edit.safetensors"}


@dataclass
class ExportDialogRequest:
    """What the user asked for; field for field ``engine.export.ExportRequest``."""

    format: str
    out: Path
    dtype: str = "fp32"
    rank: int | None = None
    energy: float = 0.999
    sld_policy: str = "skip"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ExportContext:
    """What the dialog shows about the model being exported (filled in by the GUI; all optional)."""

    model_label: str = "model"
    edit_labels: list[str] | None = None  # enabled weight edits, e.g. "UCE: red (0.8)"; None: not known
    inference_labels: list[str] = field(default_factory=list)  # enabled SLD entries (cannot be exported)
    weights_bytes: int | None = None  # UNet + VAE + text encoder in fp32
    delta_bytes: int | None = None  # the combined edit in fp32
    folder: Path | None = None  # where the target is suggested


def human_size(n: int) -> str:
    value = float(n)
    for unit in ("bytes", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} GB"


def target_problem(fmt: str, path: Path | None) -> str:
    """One sentence saying why ``path`` cannot be written for ``fmt``, or "" if it can."""
    if path is None or not str(path).strip():
        return "Choose where to write the export."
    if fmt == "diffusers":
        if path.is_file():
            return f"{path.name} is a file; a diffusers export needs a folder name."
        if path.is_dir() and any(path.iterdir()) and not (path / "model_index.json").is_file():
            return f"The folder {path.name} already holds other files; choose an empty or new folder."
    elif path.is_dir():
        return f"{path.name} is a folder; choose a file name."
    return ""


class ExportDialog(QDialog):
    export_requested = Signal(object)  # ExportDialogRequest
    cancel_requested = Signal()

    def __init__(self, parent: QWidget | None = None, context: ExportContext | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Export edited model")
        self.setMinimumWidth(560)
        self.context = context or ExportContext()
        self._suggested: Path | None = None  # the last path the dialog filled in itself
        self._result_path: Path | None = None
        self.pages = QStackedWidget()
        self.pages.addWidget(self._build_form())
        self.pages.addWidget(self._build_progress())
        self.pages.addWidget(self._build_result())
        layout = QVBoxLayout(self)
        layout.addWidget(self.pages)
        self._format_changed()

    # ------------------------------------------------------------------ pages
    def _build_form(self) -> QWidget:
        page = QWidget()
        form = QFormLayout()
        self.format_combo = QComboBox()
        for key, title, description in FORMATS:
            self.format_combo.addItem(title, key)
            self.format_combo.setItemData(self.format_combo.count() - 1, description, Qt.ItemDataRole.ToolTipRole)
        self.format_combo.currentIndexChanged.connect(self._format_changed)
        self.format_help = QLabel()
        self.format_help.setWordWrap(True)
        self.format_help.setObjectName("formatHelp")
        form.addRow("Format", self.format_combo)
        form.addRow("", self.format_help)

        self.dtype_combo = QComboBox()
        self.dtype_combo.addItem("Full precision (fp32)", "fp32")
        self.dtype_combo.addItem("Half precision (fp16), half the size", "fp16")
        self.dtype_combo.currentIndexChanged.connect(self._update_summary)
        form.addRow("Precision", self.dtype_combo)

        self.lora_group = QGroupBox("LoRA rank")
        lora = QFormLayout(self.lora_group)
        self.energy_radio = QRadioButton("Per layer, keeping this share of the edit")
        self.rank_radio = QRadioButton("The same fixed rank for every layer")
        self.energy_radio.setChecked(True)
        self._rank_mode = QButtonGroup(self)
        self._rank_mode.addButton(self.energy_radio)
        self._rank_mode.addButton(self.rank_radio)
        self.energy_spin = QDoubleSpinBox()
        self.energy_spin.setRange(50.0, 100.0)
        self.energy_spin.setDecimals(2)
        self.energy_spin.setSingleStep(0.1)
        self.energy_spin.setSuffix(" %")
        self.energy_spin.setValue(99.9)
        self.energy_spin.setToolTip("Share of the edit's energy (squared singular values) each layer keeps; "
                                    "higher is more faithful and larger.")
        self.rank_spin = QSpinBox()
        self.rank_spin.setRange(1, 4096)
        self.rank_spin.setValue(8)
        self.rank_spin.setToolTip("Rank of every layer (capped at the layer's size); higher is more faithful.")
        for widget in (self.energy_radio, self.rank_radio, self.energy_spin, self.rank_spin):
            signal = widget.toggled if isinstance(widget, QRadioButton) else widget.valueChanged
            signal.connect(self._update_summary)
        lora.addRow(self.energy_radio, self.energy_spin)
        lora.addRow(self.rank_radio, self.rank_spin)
        form.addRow(self.lora_group)

        self.sld_combo = QComboBox()
        self.sld_combo.addItem("Leave them out and export the weight edits", "skip")
        self.sld_combo.addItem("Refuse to export", "refuse")
        self.sld_combo.currentIndexChanged.connect(self._update_summary)
        self.sld_label = QLabel("Inference-time edits")
        self.sld_combo.setToolTip("SLD steers sampling and cannot be written into weights.")
        form.addRow(self.sld_label, self.sld_combo)

        self.path_edit = QLineEdit()
        self.path_edit.setPlaceholderText("Folder or .safetensors file")
        self.path_edit.textChanged.connect(self._update_summary)
        self.browse_button = QPushButton("Browse…")
        self.browse_button.clicked.connect(self._browse)
        row = QHBoxLayout()
        row.addWidget(self.path_edit, 1)
        row.addWidget(self.browse_button)
        form.addRow("Save to", row)

        self.summary = QLabel()
        self.summary.setObjectName("exportSummary")
        self.summary.setWordWrap(True)
        self.summary.setTextFormat(Qt.TextFormat.RichText)
        self.problem = QLabel()
        self.problem.setObjectName("exportProblem")
        self.problem.setWordWrap(True)
        self.problem.setStyleSheet("color: #b42318;")

        self.export_button = QPushButton("Export")
        self.export_button.setDefault(True)
        self.export_button.clicked.connect(self._export_clicked)
        close = QPushButton("Close")
        close.clicked.connect(self.reject)
        buttons = QHBoxLayout()
        buttons.addStretch(1)
        buttons.addWidget(close)
        buttons.addWidget(self.export_button)

        layout = QVBoxLayout(page)
        layout.addLayout(form)
        layout.addWidget(self.summary)
        layout.addWidget(self.problem)
        layout.addStretch(1)
        layout.addLayout(buttons)
        return page

    def _build_progress(self) -> QWidget:
        page = QWidget()
        self.progress_label = QLabel("Exporting…")
        self.progress_label.setWordWrap(True)
        self.progress_bar = QProgressBar()
        self.progress_bar.setRange(0, 0)  # busy until the first report
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(self._cancel_clicked)
        hide = QPushButton("Hide")
        hide.setToolTip("Close this window; the export continues and its result appears in the banner.")
        hide.clicked.connect(self.hide)
        buttons = QHBoxLayout()
        buttons.addStretch(1)
        buttons.addWidget(hide)
        buttons.addWidget(self.cancel_button)
        layout = QVBoxLayout(page)
        layout.addWidget(self.progress_label)
        layout.addWidget(self.progress_bar)
        layout.addStretch(1)
        layout.addLayout(buttons)
        return page

    def _build_result(self) -> QWidget:
        page = QWidget()
        self.result_title = QLabel()
        self.result_title.setObjectName("resultTitle")
        self.result_title.setWordWrap(True)
        self.result_title.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.result_size = QLabel()
        self.result_check = QLabel()
        self.result_check.setObjectName("resultCheck")
        self.result_check.setWordWrap(True)
        self.result_details = QPlainTextEdit()
        self.result_details.setReadOnly(True)
        self.result_details.setMaximumHeight(160)
        self.show_button = QPushButton("Show in folder")
        self.show_button.clicked.connect(self._show_in_folder)
        self.again_button = QPushButton("Export another")
        self.again_button.clicked.connect(lambda: self.pages.setCurrentIndex(0))
        done = QPushButton("Close")
        done.clicked.connect(self.accept)
        buttons = QHBoxLayout()
        buttons.addWidget(self.show_button)
        buttons.addStretch(1)
        buttons.addWidget(self.again_button)
        buttons.addWidget(done)
        layout = QVBoxLayout(page)
        layout.addWidget(self.result_title)
        layout.addWidget(self.result_size)
        layout.addWidget(self.result_check)
        layout.addWidget(self.result_details)
        layout.addLayout(buttons)
        return page

    # ------------------------------------------------------------------ the request
    @property
    def format(self) -> str:
        return str(self.format_combo.currentData())

    def set_format(self, fmt: str) -> None:
        self.format_combo.setCurrentIndex(FORMAT_KEYS.index(fmt))

    def set_target(self, path: str | Path) -> None:
        self.path_edit.setText(str(path))

    def target(self) -> Path | None:
        text = self.path_edit.text().strip()
        if not text:
            return None
        path = Path(text).expanduser()
        if self.format != "diffusers" and path.suffix.lower() != SUFFIX and not path.is_dir():
            path = path.with_name(path.name + SUFFIX)  # the engine insists on the suffix; add it for the user
        return path

    def request(self) -> ExportDialogRequest | None:
        """The request as the form stands, or None while it has a problem."""
        path = self.target()
        if self._problem(path):
            return None
        lora = self.format == "lora"
        return ExportDialogRequest(
            format=self.format, out=path, dtype="fp32" if self.format == "edit" else str(self.dtype_combo.currentData()),
            rank=self.rank_spin.value() if lora and self.rank_radio.isChecked() else None,
            energy=round(self.energy_spin.value() / 100.0, 6), sld_policy=str(self.sld_combo.currentData()))

    def _problem(self, path: Path | None) -> str:
        problem = target_problem(self.format, path)
        if problem:
            return problem
        edits = self.context.edit_labels
        if edits is not None and not edits and self.format in ("lora", "edit"):
            return ("There is no weight edit to export in this format; a diffusers folder or single file "
                    "exports the model as it is.")
        if self.context.inference_labels and self.sld_combo.currentData() == "refuse":
            return "Inference-time edits are enabled and you chose to refuse; leave them out or disable them."
        return ""

    # ------------------------------------------------------------------ reactions
    def _format_changed(self) -> None:
        fmt = self.format
        self.format_help.setText(FORMATS[FORMAT_KEYS.index(fmt)][2])
        self.lora_group.setVisible(fmt == "lora")
        self.dtype_combo.setEnabled(fmt != "edit")
        self.dtype_combo.setToolTip("Edit files are always full precision, so re-applying them is exact."
                                    if fmt == "edit" else "")
        has_sld = bool(self.context.inference_labels)
        self.sld_label.setVisible(has_sld)
        self.sld_combo.setVisible(has_sld)
        current = self.path_edit.text().strip()
        if not current or (self._suggested is not None and Path(current) == self._suggested):
            self._suggested = self._suggestion(fmt)
            self.path_edit.setText(str(self._suggested))
        self._update_summary()

    def _suggestion(self, fmt: str) -> Path:
        folder = self.context.folder or Path.home()
        stem = "".join(c if c.isalnum() or c in "-_" else "-" for c in self.context.model_label).strip("-") or "model"
        return folder / DEFAULT_NAMES[fmt].format(stem=stem)

    def _update_summary(self) -> None:
        path = self.target()
        problem = self._problem(path)
        self.problem.setText(problem)
        self.problem.setVisible(bool(problem))
        self.export_button.setEnabled(not problem)
        self.energy_spin.setEnabled(self.energy_radio.isChecked())
        self.rank_spin.setEnabled(self.rank_radio.isChecked())
        self.summary.setText(self.summary_text(path))

    def summary_text(self, path: Path | None = None) -> str:
        """What will be written, in a few sentences (rich text)."""
        path = self.target() if path is None else path
        fmt, dtype = self.format, ("fp32" if self.format == "edit" else str(self.dtype_combo.currentData()))
        where = f"<b>{_escape(str(path))}</b>" if path else "the chosen place"
        weights = self.context.weights_bytes
        size = ""
        if fmt in ("diffusers", "single-file") and weights:
            size = f" (about {human_size(weights // 2 if dtype == 'fp16' else weights)})"
        elif fmt == "edit" and self.context.delta_bytes:
            size = f" (about {human_size(self.context.delta_bytes)})"
        elif fmt == "lora" and self.context.delta_bytes:
            size = f" (at most about {human_size(self.context.delta_bytes // (2 if dtype == 'fp16' else 1))})"
        edits = self.context.edit_labels or []
        what = (f"{len(edits)} edit{'s' if len(edits) != 1 else ''} ({_escape('; '.join(edits))})" if edits
                else "the current edits")
        if fmt == "diffusers":
            text = (f"Writes the folder {where}{size}: the whole edited model with {what} baked in, as {dtype} "
                    "safetensors, plus a model card (README.md) recording what was erased, how, and how well.")
        elif fmt == "single-file":
            text = (f"Writes {where}{size}: the whole edited model with {what} baked in, one {dtype} checkpoint "
                    "in the original Stable Diffusion layout.")
        elif fmt == "lora":
            how = (f"rank {self.rank_spin.value()} per layer" if self.rank_radio.isChecked()
                   else f"each layer's rank chosen to keep {self.energy_spin.value():g} % of the edit")
            text = (f"Writes {where}{size}: {what} as a kohya LoRA ({dtype}, {how}); the reconstruction error "
                    "is reported afterwards.")
        else:
            text = (f"Writes {where}{size}: {what} combined into one float32 edit file that re-applies to this "
                    "base model.")
        notes = ["Everything is written to a temporary, reloaded and compared, and only then put in place."]
        if path is not None and path.exists():
            notes.append("The existing export there will be replaced.")
        if self.context.inference_labels:
            names = _escape("; ".join(self.context.inference_labels))
            notes.append(f"Inference-time edits ({names}) cannot be written into weights"
                         + (" and will be left out." if self.sld_combo.currentData() == "skip" else
                            "; the export will be refused."))
        return text + "<br>" + " ".join(notes)

    def _browse(self) -> None:
        start = str(self.target() or self._suggestion(self.format))
        if self.format == "diffusers":
            chosen = QFileDialog.getExistingDirectory(self, "Export to folder", str(Path(start).parent))
            if chosen and target_problem("diffusers", Path(chosen)):
                chosen = str(Path(chosen) / Path(start).name)  # a folder with other files: export inside it
        else:
            chosen, _ = QFileDialog.getSaveFileName(self, "Export to file", start, "safetensors (*.safetensors)")
        if chosen:
            self.path_edit.setText(chosen)

    def _export_clicked(self) -> None:
        request = self.request()
        if request is None:
            return
        self.progress_label.setText(f"Exporting {self.format_combo.currentText().lower()} to {request.out}…")
        self.progress_bar.setRange(0, 0)
        self.cancel_button.setEnabled(True)
        self.pages.setCurrentIndex(1)
        self.export_requested.emit(request)

    def _cancel_clicked(self) -> None:
        self.cancel_button.setEnabled(False)
        self.progress_label.setText("Cancelling… nothing will be left at the target.")
        self.cancel_requested.emit()

    def _show_in_folder(self) -> None:
        if self._result_path is not None:
            folder = self._result_path if self._result_path.is_dir() else self._result_path.parent
            QDesktopServices.openUrl(QUrl.fromLocalFile(str(folder)))

    # ------------------------------------------------------------------ reports from the job
    def show_progress(self, fraction: float | None, message: str = "") -> None:
        """``fraction`` in [0, 1], or None for busy."""
        self.pages.setCurrentIndex(1)
        if fraction is None:
            self.progress_bar.setRange(0, 0)
        else:
            self.progress_bar.setRange(0, 1000)
            self.progress_bar.setValue(int(max(0.0, min(1.0, fraction)) * 1000))
        if message:
            self.progress_label.setText(message)

    def show_result(self, path: str | Path, size: int, check: str, details: dict[str, Any] | None = None) -> None:
        """The export succeeded: where, how big, what was verified, and the numbers."""
        details = dict(details or {})
        self._result_path = Path(path)
        self.result_title.setText(f"Exported to {path}")
        self.result_size.setText(f"Size: {human_size(int(size))}")
        self.result_check.setText(f"✔ {check}")
        self.result_check.setStyleSheet("color: #1a7f37;")
        self.result_details.setPlainText(details_text(details))
        self.result_details.setVisible(bool(self.result_details.toPlainText()))
        self.show_button.setEnabled(True)
        self.pages.setCurrentIndex(2)

    def show_failure(self, message: str) -> None:
        """The export failed or was cancelled: one sentence; nothing was written."""
        self._result_path = None
        self.result_title.setText("Nothing was exported.")
        self.result_size.setText("")
        self.result_check.setText(message)
        self.result_check.setStyleSheet("color: #b42318;")
        self.result_details.setPlainText("")
        self.result_details.hide()
        self.show_button.setEnabled(False)
        self.pages.setCurrentIndex(2)


def details_text(details: dict[str, Any]) -> str:
    """Warnings first, then the LoRA figures (if any), then timing."""
    lines = [f"Warning: {w}" for w in details.get("warnings", [])]
    if "error_overall" in details:
        lines.append(f"Reconstruction error: {details['error_overall']:.2e} overall, "
                     f"{details.get('error_worst', 0.0):.2e} in the worst layer ({details.get('worst_layer', '')})")
        ranks = details.get("ranks", {})
        if ranks:
            lines.append("Rank per layer:")
            lines += [f"  {name}: {rank}" for name, rank in ranks.items()]
    if "seconds" in details:
        lines.append(f"Took {details['seconds']:.1f} s")
    return "\n".join(lines)


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
