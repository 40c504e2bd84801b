"""NIfTI label volumes: label slices stacked back with the source volume's affine."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import numpy.typing as npt

from alps_client._imports import lazy_import
from alps_client.io.atomic import atomic_path
from alps_client.io.readers import as_volume


def write_label_volume(path: str | Path, source: str | Path, slice_axis: int,
                       slices: Mapping[int, npt.NDArray[np.uint8]]) -> None:
    """Stack ``{index: (h, w) uint8}`` label slices along ``slice_axis`` into a NIfTI like ``source``.

    Slices that were not labelled (empty in the source) are 255. The source's affine and header are kept; a 2-D
    source (one plane, its slice 0) gets a 2-D label image.
    """
    nibabel = lazy_import("nibabel")
    src = nibabel.load(str(source))
    volume = np.full(src.shape[:3], 255, np.uint8)
    for index, label in slices.items():
        np.moveaxis(as_volume(volume, slice_axis), slice_axis, 0)[index] = label
    image = nibabel.Nifti1Image(volume, src.affine, src.header)
    image.set_data_dtype(np.uint8)
    suffix = ".nii.gz" if str(path).endswith(".gz") else ".nii"
    with atomic_path(path, suffix=suffix) as tmp:
        nibabel.save(image, str(tmp))
