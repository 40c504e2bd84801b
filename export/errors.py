"""The exporter's one error type: a bad argument or input, printed as one line with exit code 2."""

from __future__ import annotations

import os
from pathlib import Path


class ExportError(Exception):
    """A bad argument or input: printed as one line, exit code 2."""


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
