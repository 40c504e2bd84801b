"""NIfTI volumes cut into 2-D slices: which slices hold something, their window, and each slice as an image.

A volume is decoded once per process and file version (:func:`_volume`), whatever the number of its slices.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import os
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from alps_client._imports import lazy_import
from alps_client.config import InputConfig
from alps_client.errors import InputImageError, shortened
from alps_client.io.items import FileVersion
from alps_client.io.loaded import LoadedImage, bad_input, check_file, percentile_range, read_failure, to_rgb


def volume_slices(path: str | Path, config: InputConfig) -> list[int]:
    """Indices of the non-empty slices of a NIfTI volume along ``config.slice_axis``."""
    nonempty, _ = volume_summary(_volume_version(Path(path)), config.slice_axis, config.window_percentiles)
    return list(nonempty)


def slice_pixel_size(path: str | Path, slice_axis: int) -> tuple[float, float] | None:
    """``(row, column)`` size of a NIfTI volume's slice pixels along ``slice_axis``, in its units (mm).

    None when the header says none. Reads the header only.
    """
    try:
        zooms = lazy_import("nibabel").load(str(path)).header.get_zooms()[:3]
    except Exception:  # noqa: BLE001 (reading the volume says what is wrong with it)
        return None
    in_plane = [float(zooms[axis]) for axis in range(len(zooms)) if axis != slice_axis][:2]
    return (in_plane[0], in_plane[1]) if len(in_plane) == 2 and min(in_plane) > 0 else None


def volumes_in(path: str | Path) -> int:
    """How many 3-D volumes a NIfTI file holds (its 4th dimension: a series' time points, a scan's echoes).

    The first alone is labelled (:func:`_volume`). Reads the header only.
    """
    try:
        shape = lazy_import("nibabel").load(str(path)).shape
    except Exception:  # noqa: BLE001 (reading the volume says what is wrong with it)
        return 1
    return int(shape[3]) if len(shape) == 4 else 1


def _volume_version(path: Path) -> FileVersion:
    check_file(path)
    return FileVersion.of(path)


@functools.lru_cache(maxsize=2)
def _volume(version: FileVersion) -> npt.NDArray[np.float32]:
    """The 3D volume (or 2D plane) as float32, decoded once per process and file version.

    A slice never re-reads the file. Of a 4-D file (a series), the first volume alone is decoded: the others are
    never labelled. A 2-D file (an X-ray or ultrasound frame saved as NIfTI) is one plane: :func:`as_volume` makes it
    a volume of one slice.
    """
    path = version.path
    nibabel = lazy_import("nibabel")
    try:
        image = nibabel.load(path)
        check_nifti_voxels(path, image)
        data = np.asarray((image.slicer[..., 0] if image.ndim == 4 else image).get_fdata(dtype=np.float32))
    except (InputImageError, MemoryError):  # out of memory: the machine's failure, never the file's
        raise
    except Exception as err:  # nibabel raises many types for corrupt files
        reason = f"not a readable NIfTI volume ({type(err).__name__}: {shortened(str(err))})"
        raise read_failure(path, err) or bad_input(path, reason) from err
    if data.ndim not in (2, 3):
        raise bad_input(path, f"NIfTI image must be 2D or 3D (or 4D: its first volume), got shape {data.shape}")
    return data


def check_nifti_voxels(path: str, image: Any) -> None:
    """Refuse a NIfTI whose header declares more voxels than its file holds, before they are read.

    nibabel allocates what the header declares first: a 1 KB file declaring 1000^3 voxels took 1 GB before it
    failed, 4000^3 ended in a MemoryError, every run alike. An uncompressed file's size answers at once. A
    compressed file's size says nothing of its voxels: its stream is decompressed and counted, in 4 MiB reads, up to
    the voxels that are decoded (a series' first volume), so a lying header costs one pass and no memory.
    """
    header = image.header
    dtype = header.get_data_dtype()
    compressed = str(path).lower().endswith(".gz")
    decoded_shape = image.shape[:3] if compressed and image.ndim == 4 else image.shape
    declared = int(header.get_data_offset()) + int(np.prod(decoded_shape, dtype=np.int64)) * dtype.itemsize
    held = _decompressed_size(path, declared) if compressed else os.path.getsize(path)
    if declared > held:
        raise bad_input(path, f"its header declares {' x '.join(map(str, image.shape))} voxels of {dtype} "
                          f"({declared} bytes with its header) but the file {'decompressed ' if compressed else ''}"
                          f"holds {held} bytes: cut short, or a corrupt header")


def _decompressed_size(path: str, enough: int) -> int:
    """Bytes a gzip file decompresses to, counted up to ``enough`` (4 MiB held at a time)."""
    held = 0
    with gzip.open(path, "rb") as stream:
        while held < enough and (chunk := stream.read(min(1 << 22, enough - held))):
            held += len(chunk)
    return held


def as_volume(data: npt.NDArray[Any], slice_axis: int) -> npt.NDArray[Any]:
    """``data`` as a volume sliced along ``slice_axis``: a 2-D plane becomes its one slice (index 0), as a view."""
    return np.expand_dims(data, slice_axis) if data.ndim == 2 else data


@functools.lru_cache(maxsize=64)
def volume_summary(version: FileVersion, slice_axis: int, window: tuple[float, float]
                   ) -> tuple[tuple[int, ...], tuple[float, float] | None]:
    """Non-empty slice indices along ``slice_axis`` and the intensity window of the whole volume.

    A slice is empty when its finite voxels hold one value, or none: all 0, a CT's padding (all -1024 HU), all
    NaN. It shows no structure, so SAM's masks there would be noise given classes. The window is the ``window``
    percentiles of every voxel: every slice of a volume is stretched with the same range, as the tiles of a
    scene are.
    """
    data = as_volume(_volume(version), slice_axis)
    other = tuple(a for a in range(3) if a != slice_axis)
    finite = np.isfinite(data)
    # two finite values that differ make a slice worth labelling (nanmax warned of every slice wholly NaN)
    high = np.max(data, axis=other, initial=-np.inf, where=finite)
    low = np.min(data, axis=other, initial=np.inf, where=finite)
    nonempty = tuple(int(i) for i in np.flatnonzero(high > low))
    return nonempty, percentile_range(data, None, window)


def load_slice(path: Path, index: int, config: InputConfig) -> LoadedImage:
    """Slice ``index`` of a NIfTI volume along ``config.slice_axis``, stretched with the whole volume's window."""
    version = _volume_version(path)
    plane = np.take(as_volume(_volume(version), config.slice_axis), index, axis=config.slice_axis)
    _, value_range = volume_summary(version, config.slice_axis, config.window_percentiles)
    finite = np.isfinite(plane)  # NaN voxels (outside a registered brain, say) are no measurement: never labelled
    valid = None if finite.all() else finite
    rgb, extra = to_rgb(plane, valid, dataclasses.replace(config, stretch_percentiles=config.window_percentiles),
                         value_range)
    extra["slice_index"] = index
    extra["dtype"] = _stored_dtype(version)  # not the float32 the volume is decoded to
    return LoadedImage(rgb, valid, None, False, extra)


@functools.lru_cache(maxsize=64)
def _stored_dtype(version: FileVersion) -> str:
    """The type a NIfTI file stores its voxels in (``int16`` for most CT), from its header."""
    return str(lazy_import("nibabel").load(version.path).header.get_data_dtype())
