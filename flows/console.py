"""The console of the ``alps`` commands: stdout and stderr whose reader may leave, or whose writes may fail."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from typing import Any

from flows.exits import EXIT_BROKEN_PIPE, EXIT_OUTPUT_FAILED, EXIT_USAGE


def fail(message: str, code: int = EXIT_USAGE) -> int:
    """Say ``message`` on stderr as the commands' error, ``alps: error:`` before each of its lines; return ``code``."""
    for line in str(message).splitlines() or [""]:
        print(f"alps: error: {line}", file=sys.stderr)
    return code


def show_library_warnings() -> None:
    """Warnings of alps_client (a Triton server leaving the rotation, ...) on stderr, one line each."""
    log = logging.getLogger("alps_client")
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("alps: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.WARNING)
        log.propagate = False


def open_closed_standard_fds() -> set[int]:
    """Open ``/dev/null`` on each of file descriptors 0, 1 and 2 that is closed (``alps run ... >&-``).

    Left closed, the first file the command opens takes its number: a library or a child process writing to
    "stdout" would write into that file (a log, a lock, a label map).

    Returns:
        the descriptors that were closed.
    """
    closed = set()
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            closed.add(fd)
    for fd in sorted(closed):
        devnull = os.open(os.devnull, os.O_RDWR)
        if devnull != fd:
            os.dup2(devnull, fd)
            os.close(devnull)
    return closed


def _to_devnull(stream: Any) -> None:
    """Point ``stream``'s file descriptor at ``/dev/null``: its reader has left."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, stream.fileno())
    os.close(devnull)


class ConsoleStream:
    r"""stdout or stderr, whose reader may leave mid-command or whose writes may fail.

    The write that found the pipe closed (``alps run ... 2>&1 | head``, quitting ``less``) raised BrokenPipeError in
    whichever part of the run logged: the run ended with exit 1 and no word, nothing labelled; one that found no
    space (``>/dev/full``) ended a finished run in a traceback. Now the stream goes to ``/dev/null`` from then on and
    the command carries on: its files are written, and it exits 141 or 74 (flows/cli.py's docstring). A character the
    stream's encoding lacks (``PYTHONIOENCODING=ascii``, a legacy locale) is written escaped (``\xe9``), as the
    logs write it, never a UnicodeEncodeError after the work is done.
    """

    def __init__(self, stream: Any, closed_name: str | None = None) -> None:
        self._stream = stream
        self.left = False
        self.failure: str | None = None  # why a write failed (not a closed pipe), once one has
        self._closed_name = closed_name  # the stream was closed when the command started (``>&-``)
        if getattr(stream, "errors", None) == "strict" and hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")

    @classmethod
    def over_closed(cls, fd: int, name: str) -> ConsoleStream:
        """The stream of ``fd``, closed when the command started and now open on ``/dev/null``.

        The first write to it fails as one to ``/dev/full`` does: ``alps --version >&-`` said nothing and exited 0.
        """
        return cls(open(fd, "w", encoding="utf-8", errors="backslashreplace", closefd=False), closed_name=name)

    def write(self, text: str) -> int:
        """Write ``text``, or drop it once the reader has left or a write failed."""
        if self._closed_name and text:
            self.failure = self.failure or f"{self._closed_name} was closed"
        try:
            return self._stream.write(text)
        except OSError as err:
            self._gone(err)
            return len(text)

    def flush(self) -> None:
        """Flush, or drop what is held once the reader has left or a write failed."""
        try:
            self._stream.flush()
        except OSError as err:
            self._gone(err)

    def _gone(self, err: OSError) -> None:
        if isinstance(err, BrokenPipeError):
            self.left = True
        else:
            self.failure = self.failure or err.strerror or str(err)
        with contextlib.suppress(OSError):
            _to_devnull(self._stream)  # what the stream still holds is flushed there too

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def console_code(code: int, consoles: list[ConsoleStream]) -> int:
    """``code``, or 141 / 74 for a command that did its work but whose console output was lost."""
    if code != 0 or not consoles:
        return code
    failures = [console.failure for console in consoles if console.failure]
    if failures:
        if not consoles[-1].failure:  # stderr still works: say what was lost
            consoles[-1].write(f"alps: error: its console output could not be written ({failures[0]}); the "
                               "command itself went on to its end\n")
            consoles[-1].flush()
        return EXIT_OUTPUT_FAILED
    return EXIT_BROKEN_PIPE if any(console.left for console in consoles) else code
