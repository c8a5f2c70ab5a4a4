"""A streaming safetensors writer, free-space checks and disk-error translation.

``safetensors.torch.save_file`` needs the whole converted state dict in memory and
writes it in one uninterruptible call. Exports of a full SD model are gigabytes, so
here each tensor is converted (device, dtype) only when its bytes are written: memory
stays at one tensor, progress is reported per tensor and a cancel takes effect between
two tensors. The file format is the documented one (8-byte little-endian header length,
JSON header with dtype/shape/data_offsets and ``__metadata__``, then the raw bytes), and
every export reopens its files with the real readers before they are renamed into place.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

from engine.jobs import ExportError, ResourceError

_DTYPE_NAMES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL",
}
EXPORT_DTYPES = {"fp32": torch.float32, "fp16": torch.float16}


def output_dtype(tensor: torch.Tensor, dtype: torch.dtype | None) -> torch.dtype:
    """Floating tensors are written in the export precision; integer buffers keep theirs."""
    return dtype if dtype is not None and tensor.is_floating_point() else tensor.dtype


def tensor_bytes(tensors: Iterable[torch.Tensor], dtype: torch.dtype | None) -> int:
    """How many bytes the tensors take once written in ``dtype``."""
    total = 0
    for t in tensors:
        total += t.numel() * torch.empty((), dtype=output_dtype(t, dtype)).element_size()
    return total


def write_safetensors(path: Path, items: list[tuple[str, torch.Tensor]], dtype: torch.dtype | None,
                      metadata: dict[str, str] | None = None,
                      on_tensor: Callable[[str], None] | None = None) -> int:
    """Write ``items`` (name, tensor) to ``path`` in safetensors format; returns the file size.

    ``on_tensor(name)`` runs before each tensor is written (progress, and the place a
    cancel token raises). The data is fsynced, so a rename after this returns publishes a
    complete file even after a power cut.
    """
    names = [name for name, _ in items]
    if len(set(names)) != len(names):
        raise ExportError("The export produced two tensors with the same name.", repr(names))
    header: dict[str, object] = {}
    offset = 0
    for name, tensor in items:
        out = output_dtype(tensor, dtype)
        if out not in _DTYPE_NAMES:
            raise ExportError("The model has a tensor of a type that cannot be exported.", f"{name}: {out}")
        size = tensor.numel() * torch.empty((), dtype=out).element_size()
        header[name] = {"dtype": _DTYPE_NAMES[out], "shape": list(tensor.shape), "data_offsets": [offset, offset + size]}
        offset += size
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
    encoded += b" " * (-len(encoded) % 8)  # the data section starts 8-byte aligned, as safetensors writes it
    with open(path, "wb") as f:
        f.write(len(encoded).to_bytes(8, "little"))
        f.write(encoded)
        for name, tensor in items:
            if on_tensor is not None:
                on_tensor(name)
            data = tensor.detach().to("cpu", output_dtype(tensor, dtype)).contiguous().reshape(-1)
            f.write(memoryview(data.view(torch.uint8).numpy()))
        f.flush()
        os.fsync(f.fileno())
    return 8 + len(encoded) + offset


def path_size(path: Path) -> int:
    """Bytes on disk of a file, or of every file under a folder."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# Room left beside the estimate: configs, tokenizer, model card, and the file system's own needs.
SPACE_MARGIN = 16 * 1024 * 1024


def ensure_free_space(folder: Path, needed: int) -> None:
    """Refuse to start writing when the disk visibly cannot hold the export."""
    free = shutil.disk_usage(folder).free
    if free < needed + SPACE_MARGIN:
        raise ResourceError(
            f"There is not enough free disk space in {folder}: the export needs about {human_size(needed)} "
            f"but only {human_size(free)} is free; free some space or choose another folder.",
            detail=f"needed={needed} free={free}")


def disk_error(exc: OSError, target: Path) -> ResourceError | ExportError:
    """Translate an OS error during writing into one sentence for the user."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return ResourceError(f"The disk filled up while writing {target.name}; nothing was written. "
                             "Free some space or choose another folder.", detail=repr(exc))
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return ExportError(f"Erasure Studio may not write to {target.parent}; choose another folder.",
                           detail=repr(exc))
    return ExportError(f"Writing {target.name} failed ({exc.strerror or exc}); nothing was written.",
                       detail=repr(exc))


def human_size(n: int) -> str:
    value = float(n)
    for unit in ("bytes", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} GB"
