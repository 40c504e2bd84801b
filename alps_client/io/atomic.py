"""Atomic file writes: a temp file in the target's folder, then ``os.replace`` (no half-written outputs)."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import signal
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import numpy.typing as npt
from PIL import Image

from alps_client.errors import OutputDiskFullError, disk_full


def _umask() -> int:
    """The process's umask, read without changing it where Linux tells it (``/proc/self/status``)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere: set and put back (at import, before any thread writes)
    os.umask(mask)
    return mask


# mkstemp creates 0600 files: outputs take the mode any other file gets here (0644 under umask 022), so that a
# training job or web server of another user can read the dataset.
FILE_MODE = 0o666 & ~_umask()
# Marks atomic_path's temp files, so that a run removes no file of the user's (".notes.20241201.md")
_TEMP_MARK = ".alps-tmp"


@contextmanager
def atomic_path(path: str | Path, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temp path beside ``path``; on success it replaces ``path`` atomically, on error it is removed.

    The file gets :data:`FILE_MODE`, whatever mode the temp file was created with.

    Raises:
        OutputDiskFullError: If its disk or quota is full (naming ``path`` and the space left), whichever step
            of the write found it so.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=_TEMP_MARK + (suffix or path.suffix or ".tmp"),
                                   dir=path.parent)
        try:
            os.fchmod(fd, FILE_MODE)
        finally:
            os.close(fd)
        try:
            yield Path(tmp)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as err:
        if disk_full(err):
            raise disk_full_error(path, err) from err
        raise


# What atomic_path's temp files are named: "." + the target's name + "." + mkstemp's 8 characters + the mark and
# a suffix.
_TEMP_NAME = re.compile(r"\..+\.[a-z0-9_]{8}" + re.escape(_TEMP_MARK) + r"(\.[A-Za-z0-9]+)+")


def remove_leftover_temp_files(folder: str | Path) -> int:
    """Remove the temp files that writes killed mid-way (SIGKILL, power loss) left in ``folder``; returns how many.

    Only names :func:`atomic_path` gives are removed; call it while no other process writes ``folder``.
    """
    removed = 0
    try:
        entries = list(os.scandir(folder))
    except OSError:  # no such folder yet
        return 0
    for entry in entries:
        if _TEMP_NAME.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
            Path(entry.path).unlink(missing_ok=True)
            removed += 1
    return removed


def disk_full_error(path: str | Path, err: OSError) -> OutputDiskFullError:
    """The error for ``err`` (``ENOSPC`` or ``EDQUOT``) met while writing ``path``: what ran out, what is left.

    ``ENOSPC`` with bytes to spare is a file system out of inodes (one file per shard adds up on small disks and
    tmpfs): "free space" would be no advice.
    """
    path = Path(path)
    folder = next((p for p in path.parents if p.is_dir()), None)
    free = f", {size_text(shutil.disk_usage(folder).free)} free there" if folder else ""
    if err.errno == errno.ENOSPC and folder is not None:
        stat = os.statvfs(folder)
        if stat.f_files > 0 and stat.f_favail == 0:  # f_files 0: the file system counts no inodes (btrfs)
            return OutputDiskFullError(f"no free inodes left on the disk while writing {path}{free} but no room for "
                                       "another file: delete files on that disk, or use one with more inodes")
    what = "no space left on the disk" if err.errno == errno.ENOSPC else "disk quota exceeded"
    return OutputDiskFullError(f"{what} while writing {path}{free}: free space on that disk")


def size_text(n_bytes: int) -> str:
    """``n_bytes`` for a person: ``'0 B'``, ``'28 KiB'``, ``'1.5 GiB'``."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n_bytes >= scale:
            return f"{n_bytes / scale:.3g} {unit}"
    return f"{n_bytes} B"


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


def copy_file(src: str | Path, dst: str | Path) -> str:
    """Copy a file atomically (the source is only read); returns the sha256 (hex) of the bytes copied."""
    digest = hashlib.sha256()
    with atomic_path(dst) as tmp, open(src, "rb") as source, open(tmp, "wb") as target:
        while block := source.read(1 << 20):
            digest.update(block)
            target.write(block)
    return digest.hexdigest()


def write_with(path: str | Path, writer: Callable[[BinaryIO], None]) -> None:
    """Atomically write whatever ``writer(file)`` writes."""
    with atomic_path(path) as tmp, tmp.open("wb") as f:
        writer(f)


# What a user sends to stop a command: Ctrl-C, `kill`, a closed terminal.
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


@contextmanager
def stops_held(note: str) -> Iterator[None]:
    """Hold Ctrl-C, SIGTERM and SIGHUP while the block runs; then deliver the first that came, ``note`` added.

    For a few renames that must all be done or none (a dataset's swap into ``OUT``): stopped between two of them,
    a command left ``OUT`` half swapped, and whichever command came next finished the stopped write unsaid. The
    signal's own handler runs once the block ends (a Python handler's exception gets ``note``); a signal that
    was ignored stays ignored. In the main thread only, which Python's signal handlers run in; elsewhere the
    block runs as it is.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    handlers = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    for sig, handler in handlers.items():
        if handler not in (signal.SIG_IGN, None):  # (None: a handler not set from Python, left as it is)
            signal.signal(sig, lambda signum, _frame: held.append(signum))
    try:
        yield
    finally:
        for sig, handler in handlers.items():
            if handler is not None:
                signal.signal(sig, handler)
    if held:
        try:
            signal.raise_signal(held[0])
        except BaseException as stop:
            stop.add_note(note)
            raise

