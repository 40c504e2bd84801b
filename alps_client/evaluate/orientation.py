"""NIfTI ground truth brought into the voxel order of the volume it is scored against, by the two affines.

A label volume of the same scan may be stored in another orientation than the scan (LPS beside RAS: its array
flipped on two axes, its affine flipped to match): the same labels in the world, other voxels at each index.
Scored index by index, every class lands on the wrong voxels without a word. Where the two affines differ only
by axes flipped or permuted, the ground truth's array is flipped and permuted into the volume's order
(nibabel.orientations); where they differ otherwise (another voxel size, origin, or an oblique grid), no voxel
of one is a voxel of the other: the ground truth must be resampled first, and is refused.
"""

from __future__ import annotations

import zipfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from alps_client._imports import lazy_import
from alps_client.errors import AlpsError
from alps_client.evaluate.ground_truth import GroundTruth
from alps_client.io.items import counted

# Affines are stored in float32 (qform/sform): entries that agree to 1e-3 mm are the same grid.
AFFINE_TOLERANCE_MM = 1e-3


def labelled_volume_affine(out: Path, parts: list[Path]) -> tuple[npt.NDArray[np.float64], str] | None:
    """The ``(4, 4)`` voxel-to-world affine (mm) of the volume whose slice label maps are ``parts``, and its file.

    Read from the header of its label volume ``OUT/volumes/<volume>.nii.gz`` (``--write-nifti-labels``: the
    source's affine), else of the source volume its shards name. None where neither can be read (a dataset
    without label volumes whose inputs moved, or whose shards are gone).
    """
    from alps_client.io.discovery import whole_stem
    from alps_client.io.layout import shard_dir
    from alps_client.io.shards import read_shard_meta, shard_path

    nibabel = lazy_import("nibabel")

    def affine_of(path: Path) -> tuple[npt.NDArray[np.float64], str] | None:
        try:
            return np.asarray(nibabel.load(str(path)).affine, np.float64), str(path)
        except Exception:  # noqa: BLE001 (nibabel raises many types; a file not there is no answer either)
            return None

    found = affine_of(out / "volumes" / f"{whole_stem(parts[0].stem)}.nii.gz")
    if found is not None:
        return found
    try:  # a volume's slices share its source: the first one's shard names it
        source = Path(read_shard_meta(shard_path(shard_dir(out), parts[0].stem))["source"])
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        return None  # no shard, or a damaged one (a dataset copied without .alps/)
    return affine_of(source)


def axis_codes(affine: npt.NDArray[np.float64]) -> str:
    """Where the voxel axes point in the world, e.g. ``"RAS"`` or ``"LPS"`` (nibabel's ``aff2axcodes``)."""
    return "".join(lazy_import("nibabel").aff2axcodes(affine))


def to_voxel_order(arrays: list[npt.NDArray[Any] | None], affine: npt.NDArray[np.float64],
                   target: npt.NDArray[np.float64], path: Path, target_name: str) -> list[npt.NDArray[Any] | None]:
    """``arrays`` of a ground truth in the voxel order of the volume of affine ``target``.

    Args:
        arrays: the ground truth's ids and valid mask, each ``(X, Y, Z)`` or ``(X, Y)`` on its voxel grid (None
            entries are passed through).
        affine: the ground truth's ``(4, 4)`` voxel-to-world affine, in mm.
        target: the labelled volume's ``(4, 4)`` affine, in mm.
        path: the ground-truth file, named in the error.
        target_name: the labelled volume's file, named in the error.

    Returns:
        The arrays flipped and permuted so that index ``(i, j, k)`` is the voxel the labelled volume has there
        (views where numpy can). The arrays themselves when the affines agree.

    Raises:
        AlpsError: If the affines differ by more than flipped or permuted axes: another voxel grid.
    """
    orientations = lazy_import("nibabel.orientations")
    if np.allclose(affine, target, rtol=0, atol=AFFINE_TOLERANCE_MM):
        return arrays
    shape = next(a.shape for a in arrays if a is not None)
    volume_shape = shape if len(shape) == 3 else (*shape, 1)  # a 2-D NIfTI image is a volume of one slice
    transform = orientations.ornt_transform(orientations.io_orientation(affine), orientations.io_orientation(target))
    moved = affine @ orientations.inv_ornt_aff(transform, volume_shape)
    moved_shape = tuple(int(volume_shape[int(axis)]) for axis in transform[:, 0].argsort())
    if not np.allclose(moved, target, rtol=0, atol=AFFINE_TOLERANCE_MM) or (len(shape) == 2 and moved_shape[2] != 1):
        raise AlpsError(f"{path}: its affine puts its voxels on another grid than the volume labelled, "
                        f"{target_name} ({_grid(affine)} there, {_grid(target)} here), not the same grid in "
                        "another orientation: resample it onto that volume first (e.g. nibabel.processing."
                        "resample_from_to with order=0, or your viewer's resample with nearest neighbour)")

    def reoriented(array: npt.NDArray[Any]) -> npt.NDArray[Any]:
        result = orientations.apply_orientation(array if array.ndim == 3 else array[..., None], transform)
        return result if array.ndim == 3 else result[..., 0]

    return [None if array is None else reoriented(array) for array in arrays]


def in_volume_order(out: Path, read: GroundTruth, parts: list[Path], gt_path: Path,
                    reoriented: list[tuple[Path, str, str]], unplaced: list[Path]) -> GroundTruth:
    """A NIfTI ground truth ``read`` in the voxel order of the volume labelled as ``parts`` (its slice label maps).

    Appends ``(file, its axis codes, the volume's)`` to ``reoriented`` when it was stored in another orientation,
    and the file to ``unplaced`` when the volume's affine cannot be read (it is then compared index by index).

    Raises:
        AlpsError: If the two affines give other voxel grids (:func:`to_voxel_order`).
    """
    labelled = labelled_volume_affine(out, parts)
    if labelled is None or read.affine is None:
        unplaced.append(gt_path)
        return read
    target, name = labelled
    ids, valid = to_voxel_order([read.ids, read.valid], read.affine, target, gt_path, name)
    if ids is read.ids:
        return read
    reoriented.append((gt_path, axis_codes(read.affine), axis_codes(target)))
    return replace(read, ids=ids, valid=valid, affine=target)


def orientation_note(reoriented: list[tuple[Path, str, str]], unplaced: list[Path]) -> str:
    """What was done with NIfTI ground truth stored in another orientation, or left unchecked; "" for neither."""
    notes = []
    if reoriented:
        path, there, here = reoriented[0]
        notes.append(f"{counted(len(reoriented), 'ground-truth volume')} stored in another orientation than the "
                     f"volume labelled (e.g. {path}: {there}, the volume {here}) "
                     f"{'was' if len(reoriented) == 1 else 'were'} scored in the volume's voxel order (axes "
                     "flipped or permuted by their affines)")
    if unplaced:
        notes.append(f"{counted(len(unplaced), 'ground-truth volume')} compared index by index, unchecked for "
                     f"orientation (e.g. {unplaced[0]}): the labelled volume's affine is unknown (no label volume "
                     "in OUT/volumes, and its input moved); run with --write-nifti-labels to record it")
    return "; ".join(notes)


def _grid(affine: npt.NDArray[np.float64]) -> str:
    """A voxel grid as people compare two: ``"RAS, 0.8x0.8x2.5 mm voxels, origin (-25.6, -28.8, 0) mm"``."""
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(0))
    origin = ", ".join(f"{v:g}" for v in np.round(affine[:3, 3], 3))
    return f"{axis_codes(affine)}, {'x'.join(f'{v:g}' for v in np.round(zooms, 4))} mm voxels, origin ({origin}) mm"
