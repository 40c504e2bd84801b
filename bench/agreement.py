"""Two-way agreement of two runs' masks and label maps (ours vs the reference ALPS pipeline).

Masks are matched one-to-one (Hungarian assignment on their IoU); a pair counts when its IoU is at least
:data:`MATCH_IOU`. Both shares are reported: of the reference's masks that found a partner, and of ours. Label
maps are compared after matching the reference's classes to ours one-to-one by pixel overlap (class ids are
arbitrary on both sides); a pixel one side labels and the other leaves unlabelled (255) counts against the class.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy.optimize import linear_sum_assignment

MATCH_IOU = 0.99
IGNORE = 255


@dataclass
class MaskMatch:
    """One image's one-to-one mask matching: counts on both sides and the pairs at IoU >= MATCH_IOU."""

    ours: int
    reference: int
    matched: int


def match_masks(ours: list[dict], reference: list[dict]) -> MaskMatch:
    """Match COCO RLE masks of one image one-to-one.

    Args:
        ours, reference: COCO compressed RLEs (``{"size": [H, W], "counts": ...}``) of the same image.

    Returns:
        Counts and the number of one-to-one pairs with IoU >= :data:`MATCH_IOU`.
    """
    from pycocotools import mask as mask_utils

    if not ours or not reference:
        return MaskMatch(len(ours), len(reference), 0)
    iou = np.asarray(mask_utils.iou(ours, reference, [0] * len(reference)), np.float64).reshape(len(ours), -1)
    rows, cols = linear_sum_assignment(-iou)
    return MaskMatch(len(ours), len(reference), int((iou[rows, cols] >= MATCH_IOU).sum()))


def label_confusion(ours: npt.NDArray[np.uint8], reference: npt.NDArray[np.uint8]) -> npt.NDArray[np.int64]:
    """``(256, 256) int64`` pixel counts of (our label, reference label); 255 = unlabelled on either side."""
    if ours.shape != reference.shape:
        raise ValueError(f"label maps differ in shape: ours {ours.shape}, reference {reference.shape}")
    pairs = ours.astype(np.int64).ravel() * 256 + reference.astype(np.int64).ravel()
    return np.bincount(pairs, minlength=256 * 256).reshape(256, 256)


def label_miou(confusion: npt.NDArray[np.int64]) -> tuple[float | None, int]:
    """Mean IoU over the reference's classes after one-to-one matching to ours; and how many classes.

    A reference class left without a partner scores 0. None when the reference labelled no pixel.
    """
    classes_ref = np.flatnonzero(confusion[:, :IGNORE].sum(axis=0))
    classes_ours = np.flatnonzero(confusion[:IGNORE, :].sum(axis=1))
    if len(classes_ref) == 0:
        return None, 0
    if len(classes_ours) == 0:
        return 0.0, len(classes_ref)
    inter = confusion[np.ix_(classes_ours, classes_ref)].astype(np.float64)
    area_ours = confusion[classes_ours, :].sum(axis=1)[:, None]
    area_ref = confusion[:, classes_ref].sum(axis=0)[None, :]
    iou = inter / (area_ours + area_ref - inter)
    rows, cols = linear_sum_assignment(-iou)
    return float(iou[rows, cols].sum() / len(classes_ref)), len(classes_ref)


def summarise(matches: list[MaskMatch], confusion: npt.NDArray[np.int64], ours_kept: int,
              reference_kept: int) -> dict[str, float | int | None]:
    """The agreement figures of a run: totals over images, both shares, label mIoU, gate counts."""
    ours = sum(m.ours for m in matches)
    reference = sum(m.reference for m in matches)
    matched = sum(m.matched for m in matches)
    miou, classes = label_miou(confusion)
    return {
        "ours_masks": ours,
        "reference_masks": reference,
        "matched_pairs": matched,
        "reference_matched_share": matched / reference if reference else None,
        "ours_matched_share": matched / ours if ours else None,
        "ours_kept": ours_kept,
        "reference_kept": reference_kept,
        "label_miou": miou,
        "label_classes": classes,
    }
