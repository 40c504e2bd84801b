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


def owned_interval(starts: Sequence[int], index: int, tile: int, length: int) -> tuple[int, int]:
    """The part of tile ``index`` (along one axis) it owns: pixels nearer its centre than any other's."""
    centre = starts[index] + tile / 2.0
    lo = 0 if index == 0 else int(np.ceil((starts[index - 1] + tile / 2.0 + centre) / 2.0))
    hi = length if index == len(starts) - 1 else int(np.ceil((centre + starts[index + 1] + tile / 2.0) / 2.0))
    return lo, hi


def stitch_windows(height: int, width: int, tile: int, overlap: int) -> dict[tuple[int, int], tuple[int, int, int, int]]:
    """For each tile origin ``(x0, y0)``, the ``(x0, y0, x1, y1)`` scene region whose labels it provides.

    Overlaps are resolved by distance to tile centres (each pixel takes the label of the tile whose centre is
    nearest, i.e. the tile that saw the most context around it); the regions tile the scene exactly.
    """
    stride = tile - overlap
    ys, xs = _starts(height, tile, stride), _starts(width, tile, stride)
    out = {}
    for j, y in enumerate(ys):
        y_lo, y_hi = owned_interval(ys, j, min(tile, height), height)
        for i, x in enumerate(xs):
            x_lo, x_hi = owned_interval(xs, i, min(tile, width), width)
            out[(x, y)] = (x_lo, y_lo, x_hi, y_hi)
    return out


def stitch_scene(
    scene_size: tuple[int, int], tile: int, overlap: int,
    tiles: Sequence[tuple[tuple[int, int, int, int], npt.NDArray[np.uint8]]],
) -> npt.NDArray[np.uint8]:
    """Assemble an in-memory scene label map ``(H, W) uint8`` from tile label maps (see :func:`stitch_windows`)."""
    h, w = scene_size
    out = np.full((h, w), 255, np.uint8)
    owned = stitch_windows(h, w, tile, overlap)
    for (x0, y0, _x1, _y1), label in tiles:
        ox0, oy0, ox1, oy1 = owned[(x0, y0)]
        out[oy0:oy1, ox0:ox1] = label[oy0 - y0 : oy1 - y0, ox0 - x0 : ox1 - x0]
    return out
