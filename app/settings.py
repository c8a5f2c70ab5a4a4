"""Settings remembered between runs, stored in an INI file under the user data folder.

QSettings' native backends write to the registry or ~/.config; keeping the file under
the data folder means ``ERASURE_STUDIO_HOME`` isolates everything (tests, screenshots).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from PySide6.QtCore import QByteArray, QSettings

from engine.paths import data_dir

MAX_RECENT = 8


class Settings:
    """Typed accessors over one QSettings INI file."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or data_dir() / "settings.ini"
        self._qs = QSettings(str(self.path), QSettings.Format.IniFormat)

    def _get(self, key: str, default: Any) -> Any:
        value = self._qs.value(key, None)
        return default if value is None else value

    def _set(self, key: str, value: Any) -> None:
        self._qs.setValue(key, value)

    def sync(self) -> None:
        self._qs.sync()

    # -- model
    @property
    def last_model(self) -> str:
        return str(self._get("model/last", "builtin"))

    @last_model.setter
    def last_model(self, value: str) -> None:
        self._set("model/last", value)
        recent = [value, *[r for r in self.recent_models if r != value]][:MAX_RECENT]
        self._set("model/recent", json.dumps(recent))

    @property
    def recent_models(self) -> list[str]:
        try:
            items = json.loads(str(self._get("model/recent", "[]")))
        except ValueError:
            return []
        return [str(i) for i in items if isinstance(i, str)]

    @property
    def device(self) -> str:
        return str(self._get("model/device", "auto"))

    @device.setter
    def device(self, value: str) -> None:
        self._set("model/device", value)

    @property
    def precision(self) -> str:
        return str(self._get("model/precision", "auto"))

    @precision.setter
    def precision(self, value: str) -> None:
        self._set("model/precision", value)

    # -- preview
    @property
    def preview_size(self) -> int:
        """0 means the model's native size."""
        try:
            return int(self._get("preview/size", 0))
        except (TypeError, ValueError):
            return 0

    @preview_size.setter
    def preview_size(self, value: int) -> None:
        self._set("preview/size", int(value))

    @property
    def preview_steps(self) -> int:
        try:
            return max(1, int(self._get("preview/steps", 20)))
        except (TypeError, ValueError):
            return 20

    @preview_steps.setter
    def preview_steps(self, value: int) -> None:
        self._set("preview/steps", int(value))

    # -- files
    @property
    def edit_folder(self) -> str:
        """Where the last edit file was imported from ("" until one was)."""
        return str(self._get("files/edit_folder", ""))

    @edit_folder.setter
    def edit_folder(self, value: str) -> None:
        self._set("files/edit_folder", value)

    # -- window
    @property
    def geometry(self) -> QByteArray | None:
        value = self._qs.value("window/geometry", None)
        return value if isinstance(value, QByteArray) else None

    @geometry.setter
    def geometry(self, value: QByteArray) -> None:
        self._set("window/geometry", value)

    @property
    def window_state(self) -> QByteArray | None:
        value = self._qs.value("window/state", None)
        return value if isinstance(value, QByteArray) else None

    @window_state.setter
    def window_state(self, value: QByteArray) -> None:
        self._set("window/state", value)
