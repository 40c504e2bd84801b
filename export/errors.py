"""The exporter's one error type: a bad argument or input, printed as one line with exit code 2."""

from __future__ import annotations


class ExportError(Exception):
    """A bad argument or input: printed as one line, exit code 2."""
