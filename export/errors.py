"""The exporter's one error type: a bad argument or input, printed as one line with exit code 2."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class ExportError(Exception):
    """A bad argument or input: printed as one line, exit code 2."""


class ExportCheckError(ExportError):
    """The export ran but its check failed (ONNX disagrees with PyTorch): one line, exit code 1, nothing written."""


@contextmanager
def check_failures_as_one_line() -> Iterator[None]:
    """Turn a failed check of the exported files (SAM's or SAM 2.1's) into one :class:`ExportCheckError` line.

    The checks raise ``RuntimeError`` past tolerance; onnxruntime raises its own exception types (not
    ``RuntimeError`` subclasses) for a file it cannot load or run. Either way the export is not usable, and the
    user needs the reason, not a traceback. Anything else (a full disk, memory) propagates unchanged.

    Raises:
        ExportCheckError: With the first line of the check's message.
    """
    try:
        yield
    except ExportError:
        raise
    except Exception as err:
        from_ort = type(err).__module__.startswith("onnxruntime")
        if not (isinstance(err, RuntimeError) or from_ort):
            raise
        text = str(err).strip()
        first = text.splitlines()[0] if text else type(err).__name__
        if from_ort:
            first = (f"onnxruntime cannot run the exported model ({first}); the export is not usable and nothing was "
                     "written: report it with the versions of torch, onnx and onnxruntime")
        raise ExportCheckError(first) from err


def readable_checkpoint(checkpoint: str | os.PathLike[str]) -> Path:
    """The checkpoint's path, once it is known to be a readable file.

    Raises:
        ExportError: Saying whether the file is missing (or not a file) or not readable.
    """
    path = Path(checkpoint)
    if not path.is_file():
        raise ExportError(f"checkpoint {checkpoint} does not exist or is not a file")
    if not os.access(path, os.R_OK):
        raise ExportError(f"checkpoint {checkpoint} is not readable (permissions)")
    return path
