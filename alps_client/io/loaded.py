"""What every reader of inputs shares: the image it hands on, its errors, and the stretch of more than 8 bits.

:mod:`alps_client.io.readers` (PIL, GDAL) and :mod:`alps_client.io.volumes` (NIfTI) read inputs with these.
"""

from __future__ import annotations

import errno
import os
import resource
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from alps_client.config import InputConfig
from alps_client.errors import InputImageError, InputReadError


@dataclass
class LoadedImage:
    """An input ready for the mask generator.

    Attributes:
        rgb: ``(H, W, 3) uint8``.
        valid: ``(H, W) bool`` pixels that belong to the image (False: e.g. transparent), or None for all.
        geo: where a georeferenced input lies (its CRS and transform or GCPs, of the window read), or None.
        plain_copy: the source file can be copied into the dataset unchanged (8-bit RGB, upright, no alpha, one frame).
        extra: small facts recorded in the shard (bit depth, stretch range, bands).
    """

    rgb: npt.NDArray[np.uint8]
    valid: npt.NDArray[np.bool_] | None = None
    geo: dict[str, Any] | None = None
    plain_copy: bool = False
    extra: dict[str, Any] | None = None


def bad_input(path: str | Path, reason: str) -> InputImageError:
    """The error that rejects the input at ``path``: it names the file and ``reason``."""
    return InputImageError(str(path), reason)


# What the file system answers about the file itself (gone, not allowed, not a file): a bad input. Any other
# error with an errno (EIO, ESTALE, ETIMEDOUT...) is the disk or the mount failing, not the file.
_FILE_ERRNOS = frozenset({errno.ENOENT, errno.EACCES, errno.EPERM, errno.EISDIR, errno.ENOTDIR, errno.ELOOP,
                          errno.ENAMETOOLONG, errno.ENXIO})


def read_failure(path: str | Path, err: BaseException) -> InputReadError | None:
    """The machinery failure ``err`` is, when reading ``path`` failed in the file system rather than the file.

    PIL reports bad image data as ``OSError`` too, but without an ``errno``: that stays a bad input.
    """
    if not isinstance(err, OSError) or err.errno is None or err.errno in _FILE_ERRNOS:
        return None
    if err.errno in (errno.EMFILE, errno.ENFILE):  # a limit of this process or of the system, not of a disk
        limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        where = (f"this process's limit of {limit} (ulimit -n): raise it" if err.errno == errno.EMFILE else
                 "the system's limit (fs.file-max): close other programs' files or raise it")
        return InputReadError(f"reading {path} failed ({err.strerror}): too many files open, {where}; not the file")
    return InputReadError(f"reading {path} failed ({err.strerror or err}): the disk or the network mount "
                          "failed, not the file")


def check_file(path: Path) -> None:
    """Refuse what is no regular, readable, non-empty file; a failure of the disk or mount is no bad input.

    Raises:
        InputImageError: The file's fault (gone, a broken link, a FIFO, empty, unreadable).
        InputReadError: The disk's or the mount's.
    """
    try:
        info = path.stat()
    except OSError as err:
        failure = read_failure(path, err)  # a mount that failed under the link's target is no bad input either
        if failure is None and os.path.islink(path):  # the link is there, what it points to is not
            raise bad_input(path, f"a broken symbolic link (to {os.readlink(path)}, {err.strerror})") from err
        if failure is None and err.errno == errno.ENOENT:  # listed when the run started: not a bad file
            raise bad_input(path, "gone since the run started (moved or deleted meanwhile)") from err
        raise failure or bad_input(path, f"unreadable ({err.strerror})") from err
    if not stat.S_ISREG(info.st_mode):  # a FIFO or a device would block or never end
        raise bad_input(path, "not a regular file (a named pipe, a socket or a device)")
    if info.st_size == 0:
        raise bad_input(path, "zero-byte file")
    if not os.access(path, os.R_OK):
        raise bad_input(path, "unreadable (Permission denied)")



def percentile_range(data: npt.NDArray[Any], valid: npt.NDArray[np.bool_] | None, percentiles: tuple[float, float]) -> tuple[float, float] | None:
    """``(lo, hi)`` percentiles of the valid, finite values of ``(H, W[, C])`` data (all bands pooled), or None.

    Where the two percentiles meet (more than 96 % of the pixels share one value at the defaults: a dark field with
    a few bright cells, a volume mostly air), the range is the values' minimum and maximum instead: a range of zero
    width would make every pixel black or white, objects of different brightness one.
    """
    values = data[valid] if valid is not None and valid.any() else data
    finite = values[np.isfinite(values)] if values.dtype.kind == "f" else values
    if finite.size == 0:
        return None
    lo, hi = (float(v) for v in np.percentile(finite, percentiles))
    if hi <= lo:
        lo, hi = float(finite.min()), float(finite.max())
    return lo, hi


def stretch_to_uint8(
    data: npt.NDArray[Any], valid: npt.NDArray[np.bool_] | None, percentiles: tuple[float, float],
    value_range: tuple[float, float] | None = None,
) -> tuple[npt.NDArray[np.uint8], list[float]]:
    """Linear stretch of ``(H, W[, C])`` data to uint8 between two percentiles of the valid pixels.

    ``value_range`` (e.g. the whole scene's, for a tile) replaces the percentiles of ``data`` when given.
    """
    found = value_range or percentile_range(data, valid, percentiles)
    if found is None:
        return np.zeros(data.shape, np.uint8), [0.0, 0.0]
    lo, hi = float(found[0]), float(found[1])  # (an intensity window given in integers records as floats too)
    if hi <= lo:
        hi = lo + 1.0
    # Infinities (no measurement, never valid) go to the ends of the range: their product would overflow.
    scaled = (np.nan_to_num(data.astype(np.float64), nan=lo, posinf=hi, neginf=lo) - lo) * (255.0 / (hi - lo))
    return np.clip(scaled + 0.5, 0, 255).astype(np.uint8), [lo, hi]


def to_rgb(
    data: npt.NDArray[Any], valid: npt.NDArray[np.bool_] | None, config: InputConfig,
    value_range: tuple[float, float] | None = None,
) -> tuple[npt.NDArray[np.uint8], dict[str, Any]]:
    """``(H, W, 3) uint8`` of ``(H, W[, C])`` data and the facts recorded about it (``extra``: dtype, stretch).

    Data of more than 8 bits is stretched between ``config.intensity_window`` when given (fixed, in the data's
    units), else ``value_range`` (a scene's or volume's), else its own ``stretch_percentiles``.
    """
    extra: dict[str, Any] = {"dtype": str(data.dtype)}
    if data.dtype != np.uint8:
        data, extra["stretch"] = stretch_to_uint8(data, valid, config.stretch_percentiles,
                                                  config.intensity_window or value_range)
    if data.ndim == 2:
        data = np.repeat(data[:, :, None], 3, axis=2)
    return np.ascontiguousarray(data[:, :, :3]), extra
