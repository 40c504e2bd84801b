"""Label maps from classified masks, and their palette previews."""

from __future__ import annotations

import functools
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

    Args:
        image_size: ``(H, W)`` of the label map, which every RLE's ``size`` must be (numpy's order, not PIL's).
        rles: the masks, COCO RLEs.
        areas: ``(M,)`` pixels of each mask: the painting order.
        class_ids: ``(M,)`` class of each mask, in 0..255.

    Raises:
        ValueError: If the sizes or the numbers of areas and class ids disagree with the masks (a label map painted
            from them would be scrambled, or miss masks).
    """
    h, w = (int(v) for v in image_size)
    if len(rles) == 0:
        return np.full((h, w), IGNORE, dtype=np.uint8)
    class_ids, areas = np.asarray(class_ids, dtype=np.int64), np.asarray(areas, dtype=np.int64)
    if len(class_ids) != len(rles) or len(areas) != len(rles):
        raise ValueError(f"need one area and one class id per mask, got {len(areas)} areas and {len(class_ids)} ids "
                         f"for {len(rles)} masks")
    if class_ids.min() < 0 or class_ids.max() > IGNORE:
        raise ValueError(f"need class ids in 0..255, got {class_ids.min()}..{class_ids.max()}")
    sizes = {(int(rle["size"][0]), int(rle["size"][1])) for rle in rles}
    if sizes != {(h, w)}:
        raise ValueError(f"image_size is {(h, w)} (H, W), but the masks' RLEs are {', '.join(map(str, sorted(sizes)))}"
                         f"{' (give (H, W), not PIL' + chr(39) + 's (W, H))' if sizes == {(w, h)} else ''}")
    # Painted straight from the RLE runs into a column-major buffer (RLE order): no mask is ever decoded.
    column_major = np.full(h * w, IGNORE, dtype=np.uint8)
    for i in np.argsort(-areas, kind="stable"):
        starts, lengths = rle_runs(rles[i])
        total = int(lengths.sum())
        if total:
            offsets = np.repeat(starts - (np.cumsum(lengths) - lengths), lengths)
            column_major[offsets + np.arange(total)] = class_ids[i]
    return np.ascontiguousarray(column_major.reshape(w, h).T)


def palette(n: int) -> npt.NDArray[np.uint8]:
    """``(n, 3) uint8`` class colours, as far apart as they can be told, the same on every machine.

    The first ``n`` of :func:`_colour_sequence`: class ``k`` has one colour whatever the number of classes.
    """
    if not 0 <= n <= IGNORE:
        raise ValueError(f"need 0..{IGNORE} colours, got {n}")
    return _colour_sequence()[:n].copy()


@functools.cache
def _colour_sequence() -> npt.NDArray[np.uint8]:
    """255 colours, each the one of a 16-level RGB grid farthest (CIELAB distance) from black and those before it.

    Golden-ratio hues came back within 1 % of an earlier hue after 55 steps, so at the paper's 64 classes seven
    pairs differed by a few RGB levels (one look in the previews). Farthest-point sampling keeps every pair apart
    by as much as the number of colours allows; black stays "no label", and near-white and near-black are left
    out (they vanish on the report's white page and in the greyed previews).
    """
    levels = np.arange(0, 256, 17, dtype=np.float64)
    grid = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), axis=-1).reshape(-1, 3)
    lab = _srgb_to_lab(grid)
    candidates = (lab[:, 0] > 25) & (lab[:, 0] < 92)
    grid, lab = grid[candidates], lab[candidates]
    nearest = np.linalg.norm(lab - _srgb_to_lab(np.zeros((1, 3))), axis=1)  # distance to what is taken so far
    chosen = []
    for _ in range(IGNORE):
        pick = int(np.argmax(nearest))  # ties: the first, so every machine picks the same
        chosen.append(pick)
        nearest = np.minimum(nearest, np.linalg.norm(lab - lab[pick], axis=1))
    return grid[chosen].astype(np.uint8)


def _srgb_to_lab(rgb: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """``(N, 3)`` sRGB in 0..255 to CIELAB (D65), where distance follows how different colours look."""
    c = rgb / 255.0
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    xyz = linear @ np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]]).T
    xyz = xyz / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[:, 1] - 16, 500 * (f[:, 0] - f[:, 1]), 200 * (f[:, 1] - f[:, 2])], axis=1)


def colorize(label: npt.NDArray[np.uint8], n_classes: int) -> npt.NDArray[np.uint8]:
    """``(H, W, 3) uint8`` palette image of a label map; 255 (no mask) is black."""
    lut = np.zeros((256, 3), np.uint8)
    lut[:n_classes] = palette(n_classes)
    return lut[label]


# Pixels per band of rows an overlay is computed in: its float temporaries, ~80 bytes a pixel, were made for the
# whole image (2.3 GB of a run's peak on one 24 Mpx photo, 5.5 GB on 64 Mpx).
OVERLAY_BAND_PIXELS = 1 << 20


def overlay(image: npt.NDArray[np.uint8], label: npt.NDArray[np.uint8], n_classes: int, alpha: float = 0.55) -> npt.NDArray[np.uint8]:
    """The image with labelled pixels tinted by their class colour; unlabelled pixels are greyed.

    ``(H, W, 3) uint8`` RGB and ``(H, W) uint8`` class ids in, ``(H, W, 3) uint8`` out; computed in bands of rows,
    so that memory beyond the output stays bounded whatever the image's size.
    """
    out = np.empty(image.shape, np.uint8)
    rows = max(1, OVERLAY_BAND_PIXELS // max(1, image.shape[1]))
    for top in range(0, image.shape[0], rows):
        out[top : top + rows] = _overlay_band(image[top : top + rows], label[top : top + rows], n_classes, alpha)
    return out


def _overlay_band(image: npt.NDArray[np.uint8], label: npt.NDArray[np.uint8], n_classes: int, alpha: float
                  ) -> npt.NDArray[np.uint8]:
    """:func:`overlay` of some rows."""
    colour = colorize(label, n_classes).astype(np.float32)
    base = image.astype(np.float32)
    grey = base.mean(axis=2, keepdims=True).repeat(3, axis=2) * 0.6
    labelled = (label != IGNORE)[..., None]
    out = np.where(labelled, (1 - alpha) * base + alpha * colour, grey)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)
