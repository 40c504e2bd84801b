"""Exceptions raised by alps_client; each message names the thing, the expectation and the next step."""

from __future__ import annotations


class AlpsError(Exception):
    """Base class of every error alps raises on purpose."""


class ModelRepositoryError(AlpsError):
    """The model repository is missing, incomplete or inconsistent with its manifest."""


class ModelSignatureError(AlpsError):
    """A served or loaded model does not have the tensors the manifest promises."""


class BackendUnavailableError(AlpsError):
    """The inference backend (e.g. a Triton server) cannot be reached or is not ready."""


class DependencyNotFoundError(AlpsError):
    """An optional dependency is not installed; the message gives the pip line."""


class InputImageError(AlpsError):
    """An input file cannot be used as an image; the message names the file and the reason."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class ConfigMismatchError(AlpsError):
    """Existing outputs were produced with another model or configuration."""
