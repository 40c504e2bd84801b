"""NIfTI label volumes: label slices stacked back with the source volume's affine."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import numpy.typing as npt

from alps_client._imports import lazy_import
from alps_client.errors import AlpsError
from alps_client.io.atomic import atomic_path
from alps_client.io.volumes import as_volume


def write_label_volume(path: str | Path, source: str | Path, slice_axis: int,
                       slices: Mapping[int, npt.NDArray[np.uint8]], earlier: str | Path | None = None) -> None:
    """Stack ``{index: (h, w) uint8}`` label slices along ``slice_axis`` into a NIfTI like ``source``.

    Slices that were not labelled (empty in the source) are 255. The source's affine, orientation codes and voxel
    sizes are kept; a 2-D source (one plane, its slice 0) gets a 2-D label image. What the source's header says of
    its intensities is not: ``cal_min``/``cal_max`` (a -1000..1000 HU display window showed ids 0..4 as one grey),
    its intent (a CT's "estimate, HU") and description; the label image says it holds labels.

    ``earlier``: the label volume a previous run wrote for this source, whose header serves when ``source`` cannot
    be read (``alps relabel`` of a dataset moved to another machine, its volumes archived).

    Raises:
        AlpsError: If neither ``source`` nor ``earlier`` can be read.
    """
    nibabel = lazy_import("nibabel")
    try:
        src = nibabel.load(str(source))
    except (OSError, nibabel.filebasedimages.ImageFileError) as err:
        if earlier is None or not Path(earlier).is_file():
            raise AlpsError(f"cannot write {Path(path).name}: its source volume {source} cannot be read ({err}), and "
                            "no earlier label volume holds its header: put the source back at that path") from err
        src = nibabel.load(str(earlier))
    volume = np.full(src.shape[:3], 255, np.uint8)
    for index, label in slices.items():
        np.moveaxis(as_volume(volume, slice_axis), slice_axis, 0)[index] = label
    image = nibabel.Nifti1Image(volume, src.affine, src.header)
    image.set_data_dtype(np.uint8)
    header = image.header
    header["cal_min"], header["cal_max"] = 0, 0  # 0, 0: viewers take the data's range
    header.set_intent("label")
    header["descrip"] = b"alps pseudo-labels (255: no label)"
    header["aux_file"] = b""
    suffix = ".nii.gz" if str(path).endswith(".gz") else ".nii"
    with atomic_path(path, suffix=suffix) as tmp:
        nibabel.save(image, str(tmp))
