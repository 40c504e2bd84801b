"""Point grids and crop boxes of automatic mask generation (numpy port of Meta's ``utils/amg.py``)."""

from __future__ import annotations

import math
from itertools import product

import numpy as np
import numpy.typing as npt


def build_point_grid(n_per_side: int) -> npt.NDArray[np.float64]:
    """``(n*n, 2)`` points (x, y) evenly spaced in ``[0, 1] x [0, 1]``, cell-centred, row-major in y."""
    offset = 1 / (2 * n_per_side)
    points_one_side = np.linspace(offset, 1 - offset, n_per_side)
    points_x = np.tile(points_one_side[None, :], (n_per_side, 1))
    points_y = np.tile(points_one_side[:, None], (1, n_per_side))
    return np.stack([points_x, points_y], axis=-1).reshape(-1, 2)


def build_all_layer_point_grids(n_per_side: int, n_layers: int, scale_per_layer: int) -> list[npt.NDArray[np.float64]]:
    """One normalised grid per crop layer; layer i has ``int(n_per_side / scale_per_layer**i)`` points per side."""
    return [build_point_grid(int(n_per_side / (scale_per_layer**i))) for i in range(n_layers + 1)]


def generate_crop_boxes(
    im_size: tuple[int, int], n_layers: int, overlap_ratio: float
) -> tuple[list[list[int]], list[int]]:
    """Crop boxes (XYXY, pixels) of every layer and their layer index; layer i has ``(2**i)**2`` boxes.

    Layer 0 is the whole image. Exactly Meta's arithmetic (integer truncation included), less the crops that hold
    no pixel: on a side of 1 or 2 px Meta's crops start at or past the image's edge (a 1 x 4000 scanline's second
    row of crops is 0 px tall), and its generator then divides by zero.
    """
    crop_boxes, layer_idxs = [], []
    im_h, im_w = im_size
    short_side = min(im_h, im_w)
    crop_boxes.append([0, 0, im_w, im_h])
    layer_idxs.append(0)

    def crop_len(orig_len: int, n_crops: int, overlap: int) -> int:
        return int(math.ceil((overlap * (n_crops - 1) + orig_len) / n_crops))

    for i_layer in range(n_layers):
        n_crops_per_side = 2 ** (i_layer + 1)
        overlap = int(overlap_ratio * short_side * (2 / n_crops_per_side))
        crop_w = crop_len(im_w, n_crops_per_side, overlap)
        crop_h = crop_len(im_h, n_crops_per_side, overlap)
        crop_box_x0 = [int((crop_w - overlap) * i) for i in range(n_crops_per_side)]
        crop_box_y0 = [int((crop_h - overlap) * i) for i in range(n_crops_per_side)]
        for x0, y0 in product(crop_box_x0, crop_box_y0):
            if x0 < im_w and y0 < im_h:
                crop_boxes.append([x0, y0, min(x0 + crop_w, im_w), min(y0 + crop_h, im_h)])
                layer_idxs.append(i_layer + 1)
    return crop_boxes, layer_idxs
