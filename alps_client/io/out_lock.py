"""One writer per output folder: ``alps run``, ``alps relabel`` and ``alps report`` hold ``OUT/.alps/lock``.

Two processes writing one ``OUT`` at once (a second ``alps run`` into the same folder, a relabel while a run
writes its dataset, two flow runs started from the Prefect UI) would stage their datasets in the same folder and
swap in each other's half-written files. The lock is an exclusive ``flock`` on ``OUT/.alps/lock``: the kernel
releases it when the holder ends, however it ends (``kill -9`` too), so a lock is never left behind. The file
names its holder, for the message of the process that finds it taken. Linux emulates ``flock`` on NFS with
byte-range locks, so it holds across the machines of a shared ``OUT``; a file system that refuses locks
altogether gets a warning and no lock. A run that starts its own Prefect API server is also refused earlier by
that server's record (:mod:`flows.prefect_api`); this lock covers runs on a shared API (``PREFECT_API_URL``,
deployments) and the review commands. Commands that only read (``alps relabel --dry-run``) ask :func:`writer_of`
instead, which holds the lock shared for an instant; a writer that meets that instant waits it out.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alps_client.errors import AlpsError, OutputBusyError
from alps_client.io.layout import work_dir

LOCK_NAME = "lock"
# A reader's check (:func:`writer_of`) holds the lock shared for an instant: a writer that meets it waits this long.
READER_GRACE_S = 0.25

logger = logging.getLogger(__name__)


@contextmanager
def out_lock(out: str | Path, what: str, create: bool = True) -> Iterator[None]:
    """Hold the write lock of ``out`` for the block.

    Args:
        out: the output dataset folder.
        what: what the holder is doing, for others' messages (e.g. ``"alps run"``).
        create: create ``OUT/.alps`` if missing; if False and it is missing, there is nothing to lock (no alps
            output there: the block's own checks say so) and the block runs without the lock.

    Raises:
        OutputBusyError: If another process holds it (nothing is written).
        AlpsError: If ``OUT/.alps`` cannot be written (a read-only mount).
    """
    try:
        import fcntl  # noqa: F401  (only whether there is one: lock_exclusive locks)
    except ImportError:  # not POSIX: no lock (alps runs on Linux; see the README)
        yield
        return
    path = work_dir(out) / LOCK_NAME
    if not create and not path.parent.is_dir():
        yield
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:  # a read-only mount, another user's folder
        raise AlpsError(f"{out} cannot be written ({err.strerror or err}): {what} writes its outputs there; "
                        f"copy the folder to a disk you can write to and give the copy") from err
    try:
        try:
            lock_exclusive(fd)
        except BlockingIOError:
            # Another --out is a way out for a run only: a report or a relabel works on this very dataset.
            raise busy(out, _holder(fd), ", or use another --out" if what == "alps run" else "") from None
        except OSError as err:  # a file system without locks (some network mounts: ENOLCK): go on unguarded
            logger.warning("%s cannot be locked (%s): make sure no other alps process writes to %s meanwhile",
                           path, err.strerror or err, out)
            yield
            return
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{what} (pid {os.getpid()})".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def busy(out: str | Path, holder: str, way_out: str = "") -> OutputBusyError:
    """The error of a command that finds ``out`` written by ``holder`` (its lock file's words)."""
    return OutputBusyError(f"{out} is being written by {holder}; wait for it to finish{way_out}")


def written_while_read(out: str | Path, holder: str | None, reader: str) -> OutputBusyError:
    """The error of a ``reader`` (``dry run``, ``evaluation``) whose figures a write to ``out`` may have mixed."""
    by = f" by {holder}" if holder else ""
    return OutputBusyError(f"{out} was written{by} while this {reader} read it: its figures could mix two datasets; "
                           "run it again once that write is over")


def lock_exclusive(fd: int, wait_s: float = READER_GRACE_S) -> None:
    """``flock`` ``fd`` exclusively, waiting ``wait_s`` at most for another holder to let go.

    The default waits out a reader's instant check (:func:`writer_of`), not a writer.

    Raises:
        BlockingIOError: If it is still held after ``wait_s``.
        OSError: If the file system has no locks (some network mounts: ENOLCK).
    """
    import fcntl

    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def _holder(fd: int) -> str:
    return os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another alps process"


def writer_of(out: str | Path) -> str | None:
    """Who writes ``out`` now (its lock file's words, e.g. ``alps run (pid 123)``), or None when nobody does.

    For commands that only read a dataset (``alps relabel --dry-run``): they neither write the lock file nor hold
    the lock longer than this check, so a run may start while they read (they check again after).
    """
    try:
        import fcntl
    except ImportError:
        return None
    try:
        fd = os.open(work_dir(out) / LOCK_NAME, os.O_RDONLY)
    except OSError:  # no lock file: nothing ever wrote there
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    except BlockingIOError:
        return _holder(fd)
    except OSError:  # a file system without locks: as out_lock, go on unguarded
        return None
    finally:
        os.close(fd)
