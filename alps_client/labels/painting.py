"""Label maps from classified masks, and their palette previews."""

from __future__ import annotations

import colorsys
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from alps_client.masks import Rle, rle_runs

IGNORE = 255


def paint_label_map(
    image_size: tuple[int, int], rles: Sequence[Rle], areas: npt.ArrayLike, class_ids: npt.ArrayLike
) -> npt.NDArray[np.uint8]:
    """Paint masks with their class ids; ``(H, W) uint8``, 255 where no mask.

    Masks are painted in order of decreasing area (ties: input order), so small masks stay on top of the
    large ones they lie in. A class id of 255 paints "no label" (a dropped class hides what lies under it,
    exactly as if the finished map's value were remapped). Masks are painted from their runs, never decoded:
    memory is one label map whatever their number.
    """
    h, w = (int(v) for v in image_size)
    if len(rles) == 0:
        return np.full((h, w), IGNORE, dtype=np.uint8)
    class_ids = np.asarray(class_ids, dtype=np.int64)
    if len(class_ids) != len(rles) or class_ids.min() < 0 or class_ids.max() > IGNORE:
        raise ValueError(f"need one class id in 0..255 per mask, got {len(class_ids)} ids for {len(rles)} masks, "
                         f"range {class_ids.min()}..{class_ids.max()}")
    # Painted straight from the RLE runs into a column-major buffer (RLE order): no mask is ever decoded.
    column_major = np.full(h * w, IGNORE, dtype=np.uint8)
    for i in np.argsort(-np.asarray(areas, dtype=np.int64), kind="stable"):
        starts, lengths = rle_runs(rles[i])
        total = int(lengths.sum())
        if total:
            offsets = np.repeat(starts - (np.cumsum(lengths) - lengths), lengths)
            column_major[offsets + np.arange(total)] = class_ids[i]
    return np.ascontiguousarray(column_major.reshape(w, h).T)


def palette(n: int) -> npt.NDArray[np.uint8]:
    """``(n, 3) uint8`` distinct colours (golden-ratio hues), the same for the same n on every machine."""
    colours = []
    for i in range(n):
        h = (i * 0.618033988749895) % 1.0
        s = 0.65 + 0.35 * ((i // 7) % 2)
        v = 0.95 - 0.25 * ((i // 3) % 2)
        colours.append([round(255 * c) for c in colorsys.hsv_to_rgb(h, s, v)])
    return np.array(colours, dtype=np.uint8).reshape(n, 3)


def colorize(label: npt.NDArray[np.uint8], n_classes: int) -> npt.NDArray[np.uint8]:
    """``(H, W, 3) uint8`` palette image of a label map; 255 (no mask) is black."""
    lut = np.zeros((256, 3), np.uint8)
    lut[:n_classes] = palette(n_classes)
    return lut[label]


def overlay(image: npt.NDArray[np.uint8], label: npt.NDArray[np.uint8], n_classes: int, alpha: float = 0.55) -> npt.NDArray[np.uint8]:
    """The image with labelled pixels tinted by their class colour; unlabelled pixels are greyed."""
    colour = colorize(label, n_classes).astype(np.float32)
    base = image.astype(np.float32)
    grey = base.mean(axis=2, keepdims=True).repeat(3, axis=2) * 0.6
    labelled = (label != IGNORE)[..., None]
    out = np.where(labelled, (1 - alpha) * base + alpha * colour, grey)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)
