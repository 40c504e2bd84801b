"""Thumbnails of the review page: a mask cropped from its image with its outline, a whole image with a cluster lit.

Pure numpy / PIL on one image at a time; thumbnails are small JPEG files (a fixed size each), so the page stays
light however large the images are.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image

from alps_client.io.atomic import atomic_path
from alps_client.io.readers import read_rgb

CROP_SIDE = 128  # long side of a mask crop, in pixels
IMAGE_SIDE = 320  # long side of a whole-image thumbnail
OUTLINE = np.array([255, 230, 0], np.uint8)  # yellow reads on every palette colour and on imagery
JPEG_QUALITY = 85


def load_rgb(path: str | Path | None, size: tuple[int, int]) -> npt.NDArray[np.uint8]:
    """``(H, W, 3) uint8`` of the image, or a mid-grey canvas when it is unavailable or of another size."""
    if path is not None and Path(path).is_file():
        rgb = read_rgb(path)
        if rgb.shape[:2] == tuple(size):
            return rgb
    return np.full((*size, 3), 128, np.uint8)


def outline(mask: npt.NDArray[np.bool_], width: int = 1) -> npt.NDArray[np.bool_]:
    """Pixels of ``mask`` with a 4-neighbour outside it (the inner border), thickened ``width - 1`` times."""
    inner = mask.copy()
    inner[1:] &= mask[:-1]
    inner[:-1] &= mask[1:]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    border = mask & ~inner
    for _ in range(width - 1):
        grown = border.copy()
        grown[1:] |= border[:-1]
        grown[:-1] |= border[1:]
        grown[:, 1:] |= border[:, :-1]
        grown[:, :-1] |= border[:, 1:]
        border = grown
    return border


def _resize(rgb: npt.NDArray[np.uint8], mask: npt.NDArray[np.bool_], side: int) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.bool_]]:
    h, w = mask.shape
    scale = side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    small = np.asarray(Image.fromarray(rgb).resize(size, Image.BILINEAR))
    small_mask = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize(size, Image.NEAREST)) > 127
    return small, small_mask


def mask_crop(rgb: npt.NDArray[np.uint8], mask: npt.NDArray[np.bool_], bbox: npt.ArrayLike) -> npt.NDArray[np.uint8]:
    """The mask's box (COCO ``[x, y, w, h]``) with a margin of context, scaled to ``CROP_SIDE``, mask outlined.

    Context outside the mask is dimmed so the mask stands out without hiding what surrounds it.
    """
    x, y, w, h = (round(v) for v in np.asarray(bbox, np.float64).tolist())
    pad = max(4, int(0.25 * max(w, h)))
    height, width = mask.shape
    x0, y0, x1, y1 = max(0, x - pad), max(0, y - pad), min(width, x + w + pad), min(height, y + h + pad)
    crop, m = _resize(rgb[y0:y1, x0:x1], mask[y0:y1, x0:x1], CROP_SIDE)
    out = np.where(m[..., None], crop, (crop * 0.55).astype(np.uint8))
    out[outline(m, 2)] = OUTLINE
    return out


def highlight(rgb: npt.NDArray[np.uint8], region: npt.NDArray[np.bool_], colour: npt.ArrayLike) -> npt.NDArray[np.uint8]:
    """The whole image scaled to ``IMAGE_SIDE``: ``region`` tinted with ``colour`` and outlined, the rest greyed."""
    small, m = _resize(rgb, region, IMAGE_SIDE)
    base = small.astype(np.float32)
    grey = base.mean(axis=2, keepdims=True).repeat(3, axis=2) * 0.5
    lit = 0.5 * base + 0.5 * np.asarray(colour, np.float32)
    out = np.clip(np.where(m[..., None], lit, grey) + 0.5, 0, 255).astype(np.uint8)
    out[outline(m)] = OUTLINE
    return out


def save_jpeg(path: str | Path, array: npt.NDArray[np.uint8]) -> None:
    """Write an ``(H, W, 3) uint8`` thumbnail as JPEG, atomically (same pixels, same bytes)."""
    with atomic_path(path, suffix=".jpg") as tmp:
        Image.fromarray(array).save(tmp, format="JPEG", quality=JPEG_QUALITY)
