"""Exceptions raised by alps_client; each message names the thing, the expectation and the next step.

``transient`` tells the run's one retry layer (:mod:`alps_client.runs.retry`) whether trying the same image
again later can succeed: a server that is down may come back, a request the server rejected will not change.
"""

from __future__ import annotations

import errno


class AlpsError(Exception):
    """Base class of every error alps raises on purpose.

    ``transient``: trying the same image again later can succeed. ``ends_run``: every image left would meet it
    too (a full output disk, a server now serving another model), so a run starts no other image and fails
    resumable.
    """

    transient: bool = False
    ends_run: bool = False


class ModelRepositoryError(AlpsError):
    """The model repository is missing, incomplete or inconsistent with its manifest."""


class ModelSignatureError(AlpsError):
    """A served or loaded model does not have the tensors the manifest promises."""


class ModelChangedError(ModelSignatureError):
    """The model that would label an image is another export than the one the run started with.

    A repository re-exported during the run and read again by a backend built after it (a Dask worker that joined
    or was replaced, a server restarted on it): labelling on would mix two models under one manifest. Not retried;
    the run stops, resumable once the run's export is back (or started again for the new one).
    """

    ends_run = True


class ServedModelChangedError(ModelChangedError):
    """A Triton server came (back) into a run's rotation serving another export than the run started with.

    Restarted on a re-exported repository, or a server that was down at start and serves another model: labelling
    on would mix two models under one manifest. Not retried (it would pass only by switching models); the run
    stops, resumable once the server serves the run's export again.
    """


class BackendUnavailableError(AlpsError):
    """The inference backend (e.g. a Triton server) cannot be reached or is not ready."""

    transient = True


class BackendOutOfMemoryError(AlpsError):
    """The backend could not allocate memory for a request (onnxruntime here, or a server's): retried.

    Other work on the machine may free the memory, so the run tries the image again later.
    """

    transient = True


# How onnxruntime (CPU arena, CUDA) and PyTorch say an allocation failed: they give it no error code of its own
# (onnxruntime: FAIL; Triton: INTERNAL), so this is the one failure recognised by its text. The loader says
# "failed to map segment" when a library imported late (scikit-learn's OpenMP, at k-means) finds no memory left
# under the process's limit (ulimit -v, a container's).
OUT_OF_MEMORY_TEXTS = ("Failed to allocate memory", "bad_alloc", "out of memory", "cudaErrorMemoryAllocation",
                       "failed to map segment")


def ran_out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` says that an allocation failed (see ``OUT_OF_MEMORY_TEXTS``).

    Examples:
        >>> ran_out_of_memory(RuntimeError("... BFCArena::AllocateRawInternal Failed to allocate memory for ..."))
        True
        >>> ran_out_of_memory(RuntimeError("Invalid rank for input: images Got: 3 Expected: 4"))
        False
    """
    text = str(err)
    return isinstance(err, MemoryError) or any(t.lower() in text.lower() for t in OUT_OF_MEMORY_TEXTS)


class BackendClosedError(AlpsError):
    """A backend was used after :meth:`close` (its run ended or was stopped under the call): make a new one."""


class BackendRequestError(AlpsError):
    """The backend received a request and rejected it (bad tensor, model error): the same request fails again."""


class DependencyNotFoundError(AlpsError):
    """An optional dependency is not installed; the message gives the pip line."""


class InputImageError(AlpsError):
    """An input file cannot be used as an image; the message names the file and the reason."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class InputReadError(AlpsError):
    """The file system failed while an input was read: retried, then reported missing, never a rejected input.

    A failing disk or a network mount that went away is no fault of the file.
    """

    transient = True


class InputChangedError(AlpsError):
    """Input files hold other bytes than when their images were labelled, their size and time kept.

    Found as the dataset is written (its images copied or read for previews, checked against the sha256 each shard
    records): written, their new pixels would lie beside their old labels. ``stems`` names the images.
    """

    def __init__(self, message: str, stems: list[str]) -> None:
        super().__init__(message)
        self.stems = stems

    def __reduce__(self) -> tuple[type, tuple[str, list[str]]]:
        return type(self), (str(self), self.stems)


class ConfigMismatchError(AlpsError):
    """Existing outputs were produced with another model or configuration."""


class OutputBusyError(AlpsError):
    """Another process is writing the output folder (see :mod:`alps_client.io.out_lock`)."""


class OutputDiskFullError(AlpsError):
    """The disk (or the user's quota) holding the output is full.

    The run starts no other image and fails resumable, every finished image kept. Never an input's fault, never
    retried (the next write fails alike).
    """

    ends_run = True


def disk_full(err: BaseException) -> bool:
    """Whether ``err`` says that a write found no space (``ENOSPC``) or no quota (``EDQUOT``) left.

    Examples:
        >>> disk_full(OSError(28, "No space left on device"))
        True
        >>> disk_full(PermissionError(13, "Permission denied"))
        False
    """
    return isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT)


def shortened(text: str, limit: int = 120) -> str:
    """``text`` cut to at most ``limit`` characters at a word's end, ``…`` said where it was cut.

    A library's message quoted in one of ours (a decoder's, GDAL's) is kept to a line, never cut mid-word.

    Examples:
        >>> shortened("Compressed file ended before the end-of-stream marker was reached", 40)
        'Compressed file ended before the…'
        >>> shortened("short", 40)
        'short'
    """
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    return (cut.rsplit(" ", 1)[0] if " " in cut else cut).rstrip(" ,;:(") + "…"


class NoInputsError(AlpsError):
    """The dataset path does not exist or holds no image alps can read.

    Attributes:
        rejected: one ``{"path", "reason"}`` per file found and rejected (the message names a few).
    """

    def __init__(self, message: str, rejected: list[dict[str, str]] | None = None) -> None:
        super().__init__(message)
        self.rejected = rejected or []

    def __reduce__(self) -> tuple[type, tuple[str, list[dict[str, str]]]]:
        return type(self), (str(self), self.rejected)


class IncompleteRunError(AlpsError):
    """Some good images were not labelled (processing failures after retries); the finished ones are kept.

    Attributes:
        failed: one ``{"path", "stem", "reason"}`` per image that was not labelled.
    """

    def __init__(self, message: str, failed: list[dict[str, str]] | None = None) -> None:
        super().__init__(message)
        self.failed = failed or []

    def __reduce__(self) -> tuple[type, tuple[str, list[dict[str, str]]]]:
        return type(self), (str(self), self.failed)
