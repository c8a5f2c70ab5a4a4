"""The model panel: built-in / folder / checkpoint file, recent models, device and precision, load status."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

BUILTIN = "builtin"
BUILTIN_TITLE = "Built-in ShapesWorld model"
CHECKPOINT_FILTER = "Checkpoints (*.safetensors *.ckpt);;All files (*)"


def source_title(source: str) -> str:
    if source == BUILTIN:
        return BUILTIN_TITLE
    path = Path(source)
    return f"{path.name}  —  {path.parent}"


class ModelPanel(QWidget):
    """Emits ``load_requested(source, device, precision)``."""

    load_requested = Signal(str, str, str)

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.source = QComboBox()
        self.source.setToolTip("The model to erase from: the built-in model or a recent one")
        self.source.setMinimumContentsLength(18)
        self.source.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.open_folder = QPushButton("Folder…")
        self.open_folder.setToolTip("Open a diffusers model folder (with model_index.json)")
        self.open_file = QPushButton("File…")
        self.open_file.setToolTip("Open a single-file checkpoint (.safetensors or .ckpt); you can also drop one "
                                  "on the window")
        self.device = QComboBox()
        self.device.addItem("Auto", "auto")
        self.device.addItem("CPU", "cpu")
        self.device.setToolTip("Where the model runs; Auto picks the GPU when there is one")
        self.precision = QComboBox()
        for title, value in (("Auto", "auto"), ("fp32", "fp32"), ("fp16", "fp16"), ("bf16", "bf16")):
            self.precision.addItem(title, value)
        self.precision.setToolTip("Weight precision; Auto is fp16 on a GPU and fp32 on the CPU")
        self.load_button = QPushButton("Load")
        self.progress = QProgressBar()
        self.progress.setTextVisible(False)
        self.progress.setMaximumHeight(8)
        self.progress.hide()
        self.info = QLabel("No model loaded")
        self.info.setObjectName("muted")
        self.info.setWordWrap(True)

        open_row = QHBoxLayout()
        open_row.addWidget(self.source, 1)
        open_row.addWidget(self.open_folder)
        open_row.addWidget(self.open_file)
        form = QFormLayout()
        form.addRow("Device", self.device)
        form.addRow("Precision", self.precision)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(open_row)
        device_row = QHBoxLayout()
        device_row.addLayout(form, 1)
        device_row.addWidget(self.load_button)
        layout.addLayout(device_row)
        layout.addWidget(self.progress)
        layout.addWidget(self.info)

        self.load_button.clicked.connect(self._load_current)
        self.open_folder.clicked.connect(self.choose_folder)
        self.open_file.clicked.connect(self.choose_file)

    def set_recent(self, sources: list[str], current: str | None = None) -> None:
        items = [BUILTIN, *[s for s in sources if s != BUILTIN]]
        self.source.blockSignals(True)
        self.source.clear()
        for s in items:
            self.source.addItem(source_title(s), s)
            self.source.setItemData(self.source.count() - 1, s, 3)  # tooltip: the full path
        if current is not None:
            self.source.setCurrentIndex(max(0, self.source.findData(current)))
        self.source.blockSignals(False)

    def set_devices(self, cuda: bool) -> None:
        if cuda and self.device.findData("cuda") < 0:
            self.device.addItem("GPU (CUDA)", "cuda")

    def set_choice(self, device: str, precision: str) -> None:
        self.device.setCurrentIndex(max(0, self.device.findData(device)))
        self.precision.setCurrentIndex(max(0, self.precision.findData(precision)))

    def request_load(self, source: str) -> None:
        self.load_requested.emit(source, self.device.currentData(), self.precision.currentData())

    def _load_current(self) -> None:
        self.request_load(self.source.currentData() or BUILTIN)

    def choose_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Open a diffusers model folder")
        if folder:
            self.request_load(folder)

    def choose_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open a checkpoint", "", CHECKPOINT_FILTER)
        if path:
            self.request_load(path)

    def show_loading(self, text: str, step: int = 0, total: int = 0) -> None:
        self.progress.show()
        self.progress.setRange(0, total)
        self.progress.setValue(step)
        self.info.setText(text)
        self.load_button.setEnabled(False)

    def show_loaded(self, text: str) -> None:
        self.progress.hide()
        self.info.setText(text)
        self.load_button.setEnabled(True)
