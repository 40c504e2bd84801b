"""Atomic file writes: a temp file in the target's folder, then ``os.replace`` (no half-written outputs)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import numpy.typing as npt
from PIL import Image


@contextmanager
def atomic_path(path: str | Path, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temp path beside ``path``; on success it replaces ``path`` atomically, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or path.suffix or ".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bytes(path: str | Path, data: bytes) -> None:
    """Write bytes atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | Path, text: str) -> None:
    """Write UTF-8 text atomically."""
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj: Any) -> None:
    """Write JSON atomically with sorted keys (byte-identical for equal content)."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def json_line(obj: Any) -> str:
    """One JSON Lines record (sorted keys, newline-terminated)."""
    return json.dumps(obj, sort_keys=True) + "\n"


def write_png(path: str | Path, array: npt.NDArray[np.uint8]) -> None:
    """Write a uint8 ``(H, W)`` or ``(H, W, 3)`` array as PNG, atomically and deterministically."""
    with atomic_path(path, suffix=".png") as tmp:
        Image.fromarray(array).save(tmp, format="PNG", optimize=False)


def copy_file(src: str | Path, dst: str | Path) -> None:
    """Copy a file atomically (the source is only read)."""
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def write_with(path: str | Path, writer: Callable[[BinaryIO], None]) -> None:
    """Atomically write whatever ``writer(file)`` writes."""
    with atomic_path(path) as tmp, tmp.open("wb") as f:
        writer(f)
