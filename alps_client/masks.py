"""Run-length encodings of masks: COCO compressed RLE (pycocotools, fast) and Meta's uncompressed RLE."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
from pycocotools import mask as mask_utils


def encode_coco_rle(masks: npt.NDArray[np.bool_]) -> list[dict[str, Any]]:
    """``(N, H, W) bool`` masks to COCO compressed RLEs (``{"size": [H, W], "counts": str}``, JSON-ready)."""
    if masks.shape[0] == 0:
        return []
    # (H, W, N) in Fortran order; no copy when the masks are stored transposed, (N, W, H) C-contiguous.
    rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).view(np.uint8)))
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")
    return rles


def decode_coco_rle(rles: list[dict[str, Any]]) -> npt.NDArray[np.bool_]:
    """COCO RLEs (compressed or not) of one image size to ``(N, H, W) bool``."""
    if not rles:
        raise ValueError("decode_coco_rle needs at least one RLE (the image size comes from them)")
    objs = [_to_coco(r) for r in rles]
    return mask_utils.decode(objs).transpose(2, 0, 1).astype(bool)


def area_from_coco_rle(rles: list[dict[str, Any]]) -> npt.NDArray[np.int64]:
    """Pixel areas of COCO RLEs."""
    if not rles:
        return np.zeros((0,), np.int64)
    return mask_utils.area([_to_coco(r) for r in rles]).astype(np.int64)


def _to_coco(rle: dict[str, Any]) -> dict[str, Any]:
    counts = rle["counts"]
    h, w = rle["size"]
    if isinstance(counts, list):
        return mask_utils.frPyObjects(rle, h, w)
    return {"size": [h, w], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}


def mask_to_rle(mask: npt.NDArray[np.bool_]) -> dict[str, Any]:
    """One ``(H, W) bool`` mask to Meta's uncompressed RLE (column-major counts, starting with a 0-run)."""
    h, w = mask.shape
    flat = mask.T.ravel()
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    idx = np.concatenate([[0], change, [h * w]])
    counts = np.diff(idx).tolist()
    if flat.size and flat[0]:
        counts = [0, *counts]
    return {"size": [h, w], "counts": counts}


def rle_to_mask(rle: dict[str, Any]) -> npt.NDArray[np.bool_]:
    """Meta's uncompressed RLE to an ``(H, W) bool`` mask."""
    h, w = rle["size"]
    counts = np.asarray(rle["counts"], dtype=np.int64)
    values = np.zeros(len(counts), bool)
    values[1::2] = True
    return np.repeat(values, counts).reshape(w, h).T


def area_from_rle(rle: dict[str, Any]) -> int:
    """Area of an uncompressed RLE."""
    return int(sum(rle["counts"][1::2]))
