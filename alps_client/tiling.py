"""Large scenes: the tile grid of mmsegmentation's iSAID converter, and stitching tile labels back."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt


def _starts(length: int, tile: int, stride: int) -> list[int]:
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile + 1, stride))
    if starts[-1] + tile < length:
        starts.append(length - tile)  # the last tile is shifted back to end at the border, as mmseg does
    return starts


def tile_windows(height: int, width: int, tile: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """``(x0, y0, x1, y1)`` windows of ``tile x tile`` with ``overlap`` pixels between neighbours, row-major.

    iSAID-PL convention: ``tile=896, overlap=384`` (stride 512); the last row/column is aligned with the border.
    """
    stride = tile - overlap
    if stride <= 0:
        raise ValueError(f"overlap must be smaller than tile, got tile={tile}, overlap={overlap}")
    return [
        (x, y, min(x + tile, width), min(y + tile, height))
        for y in _starts(height, tile, stride)
        for x in _starts(width, tile, stride)
    ]


def stitch_scene(
    scene_size: tuple[int, int], tiles: Sequence[tuple[tuple[int, int, int, int], npt.NDArray[np.uint8]]]
) -> npt.NDArray[np.uint8]:
    """Assemble a scene label map ``(H, W) uint8`` from tile label maps.

    In overlaps, each pixel takes the label of the tile whose centre is nearest (the tile that saw the most
    context around it); pixels covered by no tile stay 255.
    """
    h, w = scene_size
    out = np.full((h, w), 255, np.uint8)
    best = np.full((h, w), np.inf, np.float32)
    for (x0, y0, x1, y1), label in tiles:
        cy, cx = (y0 + y1 - 1) / 2.0, (x0 + x1 - 1) / 2.0
        yy = np.abs(np.arange(y0, y1, dtype=np.float32) - cy)[:, None]
        xx = np.abs(np.arange(x0, x1, dtype=np.float32) - cx)[None, :]
        dist = np.maximum(yy, xx)  # Chebyshev distance to the tile centre
        region = best[y0:y1, x0:x1]
        closer = dist < region
        region[closer] = dist[closer]
        out[y0:y1, x0:x1][closer] = label[: y1 - y0, : x1 - x0][closer]
    return out
