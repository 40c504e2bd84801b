"""Mask quality scores and clean-up: stability score, small holes and islands (Meta's semantics)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from alps_client._imports import lazy_import


def calculate_stability_score(
    masks: npt.NDArray[np.float32], mask_threshold: float, threshold_offset: float
) -> npt.NDArray[np.float32]:
    """IoU of the masks thresholded at ``mask_threshold +/- threshold_offset``, for ``(N, H, W)`` logits.

    One mask always contains the other, so the IoU is a ratio of pixel counts. An empty union gives NaN,
    which fails any threshold, as in Meta's code.
    """
    high, low = np.float32(mask_threshold + threshold_offset), np.float32(mask_threshold - threshold_offset)
    # count_nonzero per mask: several times faster than summing booleans, and post-processing runs this per mask.
    inter = np.array([np.count_nonzero(m > high) for m in masks], np.int64)
    union = np.array([np.count_nonzero(m > low) for m in masks], np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (inter / union).astype(np.float32)


def remove_small_regions(mask: npt.NDArray[np.bool_], area_thresh: float, mode: str) -> tuple[npt.NDArray[np.bool_], bool]:
    """Fill holes (``mode="holes"``) or drop islands (``"islands"``) smaller than ``area_thresh`` pixels.

    8-connectivity (OpenCV), exactly Meta's rules: if every island is small, the largest is kept.

    Returns:
        ``(mask, changed)``.
    """
    if mode not in ("holes", "islands"):
        raise ValueError(f"mode must be 'holes' or 'islands', got {mode!r}")
    cv2 = lazy_import("cv2")
    correct_holes = mode == "holes"
    working = (correct_holes ^ mask).astype(np.uint8)
    n_labels, regions, stats, _ = cv2.connectedComponentsWithStats(working, 8)
    sizes = stats[:, -1][1:]
    small = [i + 1 for i, s in enumerate(sizes) if s < area_thresh]
    if not small:
        return mask, False
    fill_labels = [0, *small]
    if not correct_holes:
        fill_labels = [i for i in range(n_labels) if i not in fill_labels]
        if not fill_labels:
            fill_labels = [int(np.argmax(sizes)) + 1]
    return np.isin(regions, fill_labels), True
